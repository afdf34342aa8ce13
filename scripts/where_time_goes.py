"""Where does a speculative generation spend its time? Drafting, verifying, the rest, and the top ops.

    .venv/bin/python scripts/where_time_goes.py --model qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
        --quantize int8 --draft-quantize int8 -k 2 -n 48 [--prompt "..."]

Takes the same model options as `specdecode generate`. Runs the request once to warm up, once
timed (SpecStats: drafting = the drafter's propose calls; verifying = the target's k+1-token pass,
acceptance, sampling and cache roll-back; the rest of the decode wall time is the Python loop,
EOS/stop handling and detokenization), and once under torch.profiler for the top operators.
"""

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from specdecode.cli import add_model_options, build_engine
from specdecode.config import SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(ap)
    ap.add_argument("--max-new-tokens", "-n", type=int, default=48)
    ap.add_argument("--prompt", default="Write a Python function that checks whether a string is a palindrome.")
    ap.add_argument("--top", type=int, default=12, help="operators to list")
    a = ap.parse_args()
    engine = build_engine(a, progress=False)
    params = SamplingParams(max_new_tokens=a.max_new_tokens, ignore_eos=True)
    engine.generate(a.prompt, params)  # warm-up
    s = engine.generate(a.prompt, params).stats
    rest = s.decode_seconds - s.draft_seconds - s.verify_seconds
    drafter = engine.drafter.name if engine.drafter else "none"
    print(f"target {a.model} quantize={a.quantize} | drafter {drafter} draft={a.draft} "
          f"draft-quantize={a.draft_quantize} k={engine.num_draft_tokens} | threads {torch.get_num_threads()}")
    print(f"decode {s.generated_tokens} tokens in {s.decode_seconds:.2f} s = {s.decode_tokens_per_second:.2f} tok/s, "
          f"{s.tokens_per_pass:.2f} tokens per target pass, acceptance {s.acceptance_rate:.1%}")
    for name, sec in (("drafting", s.draft_seconds), ("verifying", s.verify_seconds), ("the rest", rest)):
        print(f"  {name:<10} {sec:6.2f} s  {sec / s.decode_seconds:6.1%}  ({sec / max(s.target_passes, 1) * 1000:.0f} ms per round)")

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.generate(a.prompt, params)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.top, max_name_column_width=40))


if __name__ == "__main__":
    main()
