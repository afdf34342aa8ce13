"""Replay the cost policy offline on recorded greedy traces: how fast would each choice of k be?

With greedy decoding, whether a draft token is accepted depends on the text alone: the draft
model's guess for output position j is its argmax after prompt + output[:j] (every earlier draft
token that counts was accepted, so it equals the output), and the n-gram drafter's guess is a
function of the context. So one target generation and one teacher-forced pass of the draft model
per prompt fix every round's outcome for every policy, and the time of a round is the cost
model's: T(k + 1) at the context, k draft steps and the draft's catch-up pass. The replay runs the
real CostPlanner (specdecode/policy/) on those outcomes, so a policy change can be judged on many
prompts in seconds, free of the machine's timing noise; `specdecode bench` then measures it.

    # 1. record traces (target output + the draft's guesses), once per model pair and prompt set
    .venv/bin/python scripts/policy_replay.py record --target qwen2.5-coder-1.5b \\
        --draft qwen2.5-coder-0.5b --dataset spec-bench,humaneval --skip 2 --limit 4 -n 96 \\
        --quantize int4 --out /tmp/traces.json
    # 2. replay: fixed k, auto, per category, with a cost model (from a bench results.json or measured)
    .venv/bin/python scripts/policy_replay.py replay /tmp/traces.json \\
        --cost-model docs/benchmarks/cpu-avx512bf16-qwen-policy-mtbench-rerun/results.json

--skip 2 leaves out the prompts `specdecode bench --limit 2` runs, so the policy is tuned on
other prompts than the ones it is measured on.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch


@torch.inference_mode()
def record(args: argparse.Namespace) -> None:
    import specdecode
    from specdecode.bench.datasets import load_prompts
    from specdecode.engine import Engine

    prompts = load_prompts(args.dataset, None, args.skip + args.limit)
    by_cat: dict[str, list] = defaultdict(list)
    for p in prompts:
        by_cat[p.category].append(p)
    chosen = [p for ps in by_cat.values() for p in ps[args.skip:]]
    quantize = None if args.quantize == "none" else args.quantize
    target = specdecode.load(args.target, threads=args.threads, quantize=quantize)
    draft = specdecode.load(args.draft, threads=args.threads, quantize=quantize).lm
    engine = Engine(target, None)
    traces = []
    for n, p in enumerate(chosen):
        ids = engine.tokenizer.encode_prompt(p.message(True), chat=True)
        out = engine.generate(ids, max_new_tokens=args.max_new_tokens).token_ids
        trace = {"id": p.id, "category": p.category, "prompt_ids": ids, "output_ids": out,
                 "max_new_tokens": args.max_new_tokens, **draft_view(draft, ids, out)}
        traces.append(trace)
        agree = sum(g == o for g, o in zip(trace["draft_guesses"], out)) / max(len(out), 1)
        print(f"[{n + 1}/{len(chosen)}] {p.id} {p.category}: {len(ids)} prompt tokens, {len(out)} out, "
              f"draft agrees {agree:.0%}", file=sys.stderr)
    Path(args.out).write_text(json.dumps({"target": args.target, "draft": args.draft, "traces": traces}))


def draft_view(draft, ids: list[int], out: list[int]) -> dict[str, list]:
    """The draft model's guess for each out[j] (its argmax after ids + out[:j]) and its top
    probability there (its confidence), from one teacher-forced pass."""
    cache = draft.new_cache(len(ids) + len(out) + 1)
    first = draft(torch.tensor([ids]), torch.arange(len(ids)).view(1, -1), cache, num_logits=1)  # (1, 1, V)
    rows = [first[0, -1].float()]
    if len(out) > 1:
        pos = torch.arange(len(ids), len(ids) + len(out) - 1).view(1, -1)
        rows += list(draft(torch.tensor([out[:-1]]), pos, cache, num_logits=None)[0].float())  # (len-1, V)
    logits = torch.stack(rows)  # (len(out), V)
    return {"draft_guesses": logits.argmax(-1).tolist(),
            "draft_confidence": [round(x, 4) for x in logits.softmax(-1).amax(-1).tolist()]}


@torch.inference_mode()
def annotate(args: argparse.Namespace) -> None:
    """Recompute the draft's view of recorded traces (another draft model, or confidence added)."""
    import specdecode

    data = _read_traces(args.traces)
    draft = specdecode.load(args.draft, threads=args.threads).lm
    for trace in data["traces"]:
        trace.update(draft_view(draft, trace["prompt_ids"], trace["output_ids"]))
    data["draft"] = args.draft
    Path(args.out or args.traces).write_text(json.dumps(data))


class ReplayedModelDrafter:
    """The draft model's side of a replay: its guesses are the recorded ones; it keeps the length
    of its cache as ModelDrafter does, so the policy prices the same catch-up."""

    name = "model"
    reports_confidence = True

    def __init__(self, guesses: list[int], confidence: list[float], prompt_len: int) -> None:
        self.guesses, self.confidence, self.prompt_len, self.cached = guesses, confidence, prompt_len, 0

    def drafted_until_stop(self, context: list[int], k: int, keep_drafting) -> int:
        """How many of k tokens the draft drafts when `keep_drafting` hears each one's confidence."""
        j = len(context) - self.prompt_len
        for i in range(k):
            if not keep_drafting(self.confidence[j + i]):
                return i + 1
        return k

    def catch_up_tokens(self, context: list[int]) -> int:
        return len(context) - self.cached

    def propose(self, context: list[int], k: int) -> list[int]:
        j = len(context) - self.prompt_len
        self.cached = len(context) + k - 1
        return self.guesses[j: j + k]

    def on_verified(self, context_len: int, accepted: int) -> None:
        self.cached = min(self.cached, context_len + accepted)


class ReplayedNgramDrafter:
    def __init__(self) -> None:
        from specdecode.drafters import NgramDrafter

        self.real = NgramDrafter()
        self.real.begin([], 0, "cpu")
        self.name = self.real.name

    def evidence(self, context: list[int], k: int):
        return self.real.evidence(context, k)

    def propose(self, context: list[int], k: int) -> list[int]:
        return self.real.match(context, k)[1]

    def on_verified(self, context_len: int, accepted: int) -> None:
        pass


def simulate(trace: dict, cost_model, method: str, truth=None, k_max: int = 15,
             max_new_tokens: int = 96, planner=None) -> tuple[float, int, list[int]]:
    """(seconds, tokens, k of every round) of one trace's decode (after the first token).

    method: "target", "kN" (draft model, fixed k = N, as FixedK), "auto" (the real CostPlanner
    over the draft model), "auto+ngram" (CostPlanner over n-gram + draft model, as --drafter auto).
    truth: the cost model that times the rounds (default: the one the planner believes).
    planner: the CostPlanner to use (one per method over a whole replay, as an engine keeps one:
    its history of finished requests carries over); None = a fresh one.
    k_max: auto's longest draft; max_new_tokens: the budget (traces recorded since carry theirs)."""
    from types import SimpleNamespace

    from specdecode.metrics import SpecStats
    from specdecode.policy import CostPlanner, PassCostRatios

    truth = truth or cost_model
    prompt, out = trace["prompt_ids"], trace["output_ids"]
    n = len(out)
    budget = trace.get("max_new_tokens", max_new_tokens)
    model = ReplayedModelDrafter(trace["draft_guesses"], trace["draft_confidence"], len(prompt))
    drafters = [ReplayedNgramDrafter(), model] if method == "auto+ngram" else [model]
    if method.startswith("auto") and planner is None:
        planner = CostPlanner(PassCostRatios(None, [], given=cost_model), k_max=k_max)
    if not method.startswith("auto"):
        planner = None
    # What the planner reads of a RequestState (the engine sizes max_len as prompt + budget + k_max + 1).
    state = SimpleNamespace(drafter=SimpleNamespace(drafters=drafters), tokens=list(prompt), budget=budget,
                            max_len=len(prompt) + budget + k_max + 1, stats=SpecStats(), plan_state=None)
    if planner is not None:
        planner.begin(state)
    p, seconds, ks = 1, 0.0, []  # out[0] came from the prefill
    while p < n:
        context = prompt + out[:p]
        room = n - p - 1
        stop = None
        if method == "target":
            which, k = 0, 0
        elif planner is not None:
            state.tokens, state.stats.generated_tokens = context, p
            plan = planner.plan([state])[0]
            which, k, stop = plan.which, min(plan.k, room), plan.stop
        else:
            which, k = 0, min(int(method[1:]), room)
        ctx = len(context)
        behind = max(model.catch_up_tokens(context), 1)  # what the draft model lacks before this round
        if k > 0 and drafters[which] is model and stop is not None:
            k = model.drafted_until_stop(context, k, stop)
        guess = drafters[which].propose(context, k) if k > 0 else []
        accepted = 0
        while accepted < len(guess) and guess[accepted] == out[p + accepted]:
            accepted += 1
        if k > 0 and drafters[which] is model:
            step = truth.draft("model", 1, ctx)
            seconds += len(guess) * step + max(truth.draft_prefill("model", behind, ctx - behind) - step, 0.0)
        seconds += truth.T(len(guess) + 1, ctx)
        if k > 0:
            drafters[which].on_verified(ctx, accepted)
        if planner is not None:
            planner.observe(state, len(guess), accepted)
        ks.append(len(guess))
        p += accepted + 1
    if planner is not None:
        planner.end(state)
    return seconds, n - 1, ks


def replay(args: argparse.Namespace) -> None:
    data = _read_traces(args.traces)
    cm = _cost_model(args.cost_model, args.cost_method)
    truth = _cost_model(args.truth, args.cost_method) if args.truth else None
    methods = args.methods.split(",")
    bad = [m for m in methods if m not in ("target", "auto", "auto+ngram") and not (m[:1] == "k" and m[1:].isdigit()
                                                                                 and int(m[1:]) >= 1)]
    if bad:
        from specdecode.errors import SpecdecodeError

        raise SpecdecodeError(f"unknown methods {bad}: use target, kN (N >= 1), auto, auto+ngram")
    cats: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0]))
    hist: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    from specdecode.policy import CostPlanner, PassCostRatios

    planners = {m: CostPlanner(PassCostRatios(None, [], given=cm), k_max=args.k_max) for m in methods if m.startswith("auto")}
    for trace in data["traces"]:
        for m in methods:
            s, t, ks = simulate(trace, cm, m, truth, args.k_max, args.max_new_tokens, planners.get(m))
            for key in (trace["category"], "overall"):
                cats[key][m][0] += s
                cats[key][m][1] += t
            for k in ks:
                hist[m][k] += 1
    names = [c for c in cats if c != "overall"] + ["overall"]
    print(f"T(1) {cm.T(1) * 1e3:.1f} ms, T(2) {cm.T(2) * 1e3:.1f} ms, draft step {cm.draft('model', 1) * 1e3:.1f} ms; "
          f"{len(data['traces'])} traces")
    print("speed-up over target (replayed)")
    print(f"{'method':>12} " + " ".join(f"{c[:11]:>11}" for c in names))
    for m in methods:
        row = []
        for c in names:
            base = cats[c]["target"][1] / cats[c]["target"][0] if "target" in cats[c] else 1.0
            row.append(f"{cats[c][m][1] / cats[c][m][0] / base:>10.2f}x")
        print(f"{m:>12} " + " ".join(row))
    for m in methods:
        if m.startswith("auto"):
            print(f"{m} rounds by k: " + ", ".join(f"{k}: {v}" for k, v in sorted(hist[m].items())))
    # best fixed k per category vs auto
    fixed = [m for m in methods if m.startswith("k")]
    if fixed:
        for m in methods:
            if not m.startswith("auto"):
                continue
            row = []
            for c in names:
                best = max(cats[c][f][1] / cats[c][f][0] for f in fixed + ["target"])
                row.append(f"{cats[c][m][1] / cats[c][m][0] / best:>10.2f}x")
            print(f"{m + ' / best':>12} " + " ".join(row))


def _read_json(path: str):
    from specdecode.errors import SpecdecodeError

    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise SpecdecodeError(f"{path} is not JSON ({e})") from None


def _read_traces(path: str) -> dict:
    from specdecode.errors import SpecdecodeError

    d = _read_json(path)
    if not (isinstance(d, dict) and isinstance(d.get("traces"), list)):
        raise SpecdecodeError(f"{path} holds no traces (write them with: policy_replay.py record)")
    return d


def _cost_model(path: str, method: str | None = None):
    """The cost model of a bench results.json (bench.methods_policy.recorded_cost_model: `method`'s
    own where the run recorded one per method), or of a file holding one (CostModel.to_dict)."""
    from specdecode.bench.methods_policy import recorded_cost_model
    from specdecode.cost_model import CostModel

    from specdecode.errors import SpecdecodeError

    d = _read_json(path)
    recorded = recorded_cost_model(d, method) if isinstance(d, dict) else None
    if recorded is not None:
        return recorded
    if not (isinstance(d, dict) and isinstance(d.get("target"), dict) and "seconds" in d["target"]):
        raise SpecdecodeError(f"{path} holds no cost model (a bench results.json, or CostModel.to_dict())")
    return CostModel.from_dict(d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="record traces")
    r.add_argument("--target", required=True)
    r.add_argument("--draft", required=True)
    r.add_argument("--dataset", default="spec-bench,humaneval")
    r.add_argument("--skip", type=int, default=2, help="leave out the first N prompts of each category")
    r.add_argument("--limit", type=int, default=4, help="then take N prompts per category")
    r.add_argument("-n", "--max-new-tokens", type=int, default=96)
    r.add_argument("--threads", type=int, default=None)
    r.add_argument("--quantize", default="none", choices=("none", "int8", "int4"),
                   help="both models' weights, as the bench's int4 methods load them (default: none)")
    r.add_argument("--out", required=True)
    a = sub.add_parser("annotate", help="recompute the draft's guesses and confidence of recorded traces")
    a.add_argument("traces")
    a.add_argument("--draft", required=True)
    a.add_argument("--threads", type=int, default=None)
    a.add_argument("--out", help="default: rewrite the traces file")
    p = sub.add_parser("replay", help="replay policies on traces")
    p.add_argument("traces")
    p.add_argument("--cost-model", required=True, help="a bench results.json (its cost model) or a cost model JSON")
    p.add_argument("--cost-method", default="spec-int4-auto",
                   help="in a results.json that recorded one cost model per method, whose (default: spec-int4-auto)")
    p.add_argument("--truth", help="time rounds with this cost model instead (a belief that is off)")
    p.add_argument("--methods", default="target,k1,k2,k3,k4,k8,auto,auto+ngram")
    p.add_argument("--k-max", type=int, default=15)
    p.add_argument("-n", "--max-new-tokens", type=int, default=96,
                   help="the token budget the traces were recorded with (traces record it since)")
    args = ap.parse_args()
    from specdecode.errors import SpecdecodeError

    try:
        {"record": record, "annotate": annotate, "replay": replay}[args.cmd](args)
    except (OSError, SpecdecodeError) as e:  # a missing or wrong file, an unknown model
        print(f"policy_replay: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
