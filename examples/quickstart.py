"""The README's Python example, runnable anywhere: tiny random models instead of the Qwen pair.

Swap "tiny-random" for "qwen2.5-coder-1.5b" and "tiny-random-draft" for "qwen2.5-coder-0.5b"
(after `specdecode models pull ...`) to get real text. The output of the tiny models is gibberish,
but it is exactly the target's own greedy output, which this script checks.
"""

import specdecode

target = specdecode.load("tiny-random")
draft = specdecode.load("tiny-random-draft")
engine = specdecode.Engine(target, drafter=draft, num_draft_tokens=4)

result = engine.generate("Write a quicksort in Python.", max_new_tokens=48)
print(repr(result.text))
print(result.stats.format())

plain = specdecode.Engine(target).generate("Write a quicksort in Python.", max_new_tokens=48)
assert plain.token_ids == result.token_ids, "speculative output must equal the target's own"
print("identical to target-only output:", plain.token_ids == result.token_ids)

for chunk in engine.stream("Explain speculative decoding.", temperature=0.7, seed=1, max_new_tokens=16):
    print(repr(chunk.text), end=" ", flush=True)
print()
