"""Self-written user requests (Magpie-style): the target continues its own chat template's user
turn from a short opener; the queries are then answered (collect) for head training."""
import json, random, sys, torch
import specdecode
from specdecode import SamplingParams
from specdecode.engine import Engine
from specdecode.heads.data import benchmark_overlap
torch.set_num_threads(2)
OPENERS = ["Can you explain", "Translate the following text into English:", "Translate this German sentence into English:",
 "Summarize the following news story:", "What is the difference between", "Write a short story about",
 "I'm planning a trip to", "How do I", "Why do", "What are some tips for", "Write an email to",
 "Give me a recipe for", "Who was", "What happened during", "Compare", "Write a poem about",
 "Help me understand", "What would happen if", "Describe", "I need advice on", "Write a persuasive paragraph about",
 "Solve this math problem:", "A train leaves", "If a store sells", "Imagine you are", "Pretend to be",
 "Read the following passage and answer the question.", "Based on the text below,", "List five", "What is the capital of",
 "How does", "Is it true that", "Rewrite this paragraph in a formal tone:", "Draft a cover letter for",
 "What are the pros and cons of", "Plan a weekly schedule for", "Explain to a child", "Give me a fun fact about",
 "What should I consider when", "Create a dialogue between"]
n = int(sys.argv[1]); out = sys.argv[2]
model = specdecode.load("qwen2.5-coder-1.5b", quantize="int4", threads=2)
eng = Engine(model, None)
tok = model.tokenizer
text = tok.hf.apply_chat_template([{"role": "user", "content": "XQXQ"}], add_generation_prompt=False, tokenize=False)
prefix = text.split("XQXQ")[0]
print(repr(prefix[-80:]), flush=True)
rng = random.Random(0)
reqs = []
for i in range(n):
    op = OPENERS[i % len(OPENERS)]
    reqs.append((op, eng.encode(prefix + op, chat=False)))
live, done, waiting = [], [], list(range(n))
states = {}
while waiting or live:
    while waiting and len(live) < 8:
        i = waiting.pop(0)
        s = eng.start(reqs[i][1], SamplingParams(max_new_tokens=72, temperature=1.0, top_p=0.95, seed=1000 + i))
        states[id(s)] = i
        live.append(s)
    eng.step(live)
    for s in [s for s in live if s.finished]:
        i = states[id(s)]
        gen = s.tokens[len(reqs[i][1]):]
        q = reqs[i][0] + tok.decode(gen)
        q = q.split("<|im_end|>")[0].strip()
        for cut in ("\nAssistant", "\n**", "\nAnswer", "\nIn English"):
            q = q.split(cut)[0]
        paras = [p for p in q.split("\n\n") if p.strip()]
        q = paras[0] if paras and (len(paras[0]) > 60 or len(paras) == 1) else "\n\n".join(paras[:2])
        q = q.strip()
        done.append(q)
        eng.release(s)
    live = [s for s in live if not s.finished]
keep = [q for q in done if len(q) > 25 and benchmark_overlap([q]) == 0]
with open(out, "w") as f:
    for q in keep:
        f.write(json.dumps({"prompt": q}) + "\n")
print(len(done), "generated,", len(keep), "kept", flush=True)
for q in keep[:8]: print("---", q[:300])
