"""Bench methods for the cost policy (issue 9), and the table that sets theory beside measurement.

Methods (not in `--methods all`; name them):
    spec-model-k1, -k2, -k4, -k8   the draft model with a fixed draft length
    spec-model-auto                 the draft model, k chosen per round by the cost policy
    spec-auto                       `--drafter auto`: n-gram + the draft model (if given), policy-chosen

Theory vs measurement (`python -m specdecode.bench.methods_policy OUT_DIR` after a run): for
each method and category, the measured acceptance and round mix, the target's measured T(m)
(specdecode.cost_model), the speed-up they predict, and the speed-up measured. Writes
OUT_DIR/theory.json and OUT_DIR/theory.md.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..cost_model import CostModel
from ..drafters import ModelDrafter, NgramDrafter
from ..engine import Engine
from .methods import BenchContext, register_method

FIXED_KS = (1, 2, 4, 8)


def _fixed(k: int):
    def build(ctx: BenchContext) -> Engine:
        return Engine(ctx.target, ModelDrafter(ctx.draft.lm), num_draft_tokens=k, eos_token_ids=ctx.eos_token_ids)

    return build


for _k in FIXED_KS:
    register_method(f"spec-model-k{_k}", needs_draft=True, default=False,
                    description=f"specdecode with the draft model, fixed k = {_k}")(_fixed(_k))


@register_method("spec-model-auto", needs_draft=True, default=False,
                 description="specdecode with the draft model, k chosen per round by the cost policy")
def _spec_model_auto(ctx: BenchContext) -> Engine:
    return Engine(ctx.target, ModelDrafter(ctx.draft.lm), num_draft_tokens="auto", eos_token_ids=ctx.eos_token_ids)


@register_method("spec-auto", default=False, uses_draft=True,
                 description="specdecode --drafter auto: n-gram + the draft model (if given), drafter and k per round")
def _spec_auto(ctx: BenchContext) -> Engine:
    drafters = [ModelDrafter(ctx.draft.lm)] if ctx.draft is not None else []
    return Engine(ctx.target, [*drafters, NgramDrafter()], num_draft_tokens="auto", eos_token_ids=ctx.eos_token_ids)


# -- theory beside measurement ---------------------------------------------------------------------

# Methods whose rounds all use the draft model (their draft steps cost D(1) each); the n-gram
# drafter costs nothing measurable. For a mix (spec-auto) the draft cost is bounded by both.
_MODEL_METHODS = ("spec-model",)


def round_mix(drafted_by_position: list[int], target_passes: int) -> dict[int, int]:
    """{k: rounds that drafted exactly k tokens}, from the per-position counters (k = 0 included)."""
    d = list(drafted_by_position or [])
    mix = {0: target_passes - (d[0] if d else 0)}
    for j in range(1, len(d) + 1):
        mix[j] = d[j - 1] - (d[j] if j < len(d) else 0)
    return {k: n for k, n in mix.items() if n}


def predict(records: list[dict[str, Any]], cost: CostModel, draft_step: float, draft: str | None = None) -> dict[str, Any]:
    """Predicted and measured decode speed of one method over some prompts, relative to T(1).

    Predicted: the measured rounds (their draft lengths) and acceptance by position give the
    expected tokens, E[k] = 1 + sum_{i<k} P(drafts 0..i accepted); the cost model gives their
    time, T(k+1) + k * draft_step per round, both at the mean context of the decode (prompt +
    half the output: attention grows with it). Also the closed form with one acceptance rate a,
    (1 - a^(k+1)) / (1 - a) tokens per T(k+1) + k * draft_step, at the most frequent k.
    draft: the draft model's name in the cost model (its step at that context replaces draft_step).
    A request whose rounds used the draft model also pays, once, the draft's pass over its prompt
    before the first draft (its catch-up: a prefill-shaped pass, see cost_model.BIG_M).
    """
    contexts = [r.get("prompt_tokens", 0) + r["decode_tokens"] / 2 for r in records]
    L = int(sum(contexts) / len(contexts)) if contexts else None
    if draft is not None and draft_step:
        draft_step = cost.draft(draft, 1, L)

    def T(m: int) -> float:  # noqa: N802
        return cost.T(m, L)

    drafted: list[int] = []
    accepted: list[int] = []
    mix: dict[int, int] = defaultdict(int)
    tokens = seconds = catch_up = 0.0
    for r in records:
        if draft is not None and draft_step and (r["drafted_by_position"] or [0])[0] > 0:
            p = int(r.get("prompt_tokens", 0))
            catch_up += cost.draft_prefill(draft, p)  # priced as the planner prices it
        for i, (dn, an) in enumerate(zip(r["drafted_by_position"] or [], r["accepted_by_position"] or [])):
            if i >= len(drafted):
                drafted.append(0)
                accepted.append(0)
            drafted[i] += dn
            accepted[i] += an
        for k, n in round_mix(r["drafted_by_position"], r["target_passes"] or 0).items():
            mix[k] += n
        tokens += r["decode_tokens"]
        seconds += r["decode_s"]
    survive = [a / d if d else 0.0 for a, d in zip(accepted, drafted)]  # P(drafts 0..i accepted | drafted i)
    rounds = sum(mix.values())
    exp_tokens = sum(n * (1 + sum(survive[:k])) for k, n in mix.items())
    exp_time = sum(n * (T(k + 1) + k * draft_step) for k, n in mix.items()) + catch_up
    a = sum(accepted) / sum(drafted) if sum(drafted) else 0.0
    k_main = max(mix, key=mix.get) if mix else 0
    closed = (1 - a ** (k_main + 1)) / (1 - a) if a < 1 else k_main + 1.0
    return {
        "rounds": rounds, "round_mix": dict(sorted(mix.items())), "acceptance": a,
        "acceptance_by_position": survive,
        "context": L, "catch_up_ms_per_request": catch_up / len(records) * 1e3 if records else 0.0,
        "predicted_speedup": exp_tokens / exp_time * T(1) if exp_time else None,
        "predicted_speedup_closed_form": closed / (T(k_main + 1) + k_main * draft_step) * T(1),
        "measured_tokens_per_s": tokens / seconds if seconds else None,
    }


def theory(results: dict[str, Any], cost: CostModel) -> dict[str, Any]:
    """{method: {category: predict(...) + measured_speedup}} for every specdecode method vs `target`."""
    by = defaultdict(lambda: defaultdict(list))
    prompt_tokens: dict[int, int] = {}  # id(record) -> its prompt's length (records do not carry it)
    for p in results["prompts"]:
        for name, r in p["results"].items():
            if r.get("drafted_by_position") is not None and r.get("target_passes") is not None:
                prompt_tokens[id(r)] = p.get("prompt_tokens", 0)
                by[name][p["category"]].append(r)
                by[name]["all"].append(r)
    ref = by.pop("target", {})
    step = cost.draft("model", 1)
    out: dict[str, Any] = {"T_ms": {m: cost.T(m) * 1e3 for m in range(1, 17)},
                           "per_key_us": cost.target.per_key * 1e6, "draft_step_ms": step * 1e3, "methods": {}}
    for name, cats in by.items():
        if results.get("methods", {}).get(name, {}).get("reference", "target") != "target":
            continue  # another target (int8): the bf16 T(m) does not describe it
        model_rounds = name.startswith(_MODEL_METHODS)
        for cat, recs in cats.items():
            base = ref.get(cat, [])
            recs = [{**r, "prompt_tokens": r.get("prompt_tokens", prompt_tokens.get(id(r), 0))} for r in recs]
            row = predict(recs, cost, step if model_rounds else 0.0, "model")
            if name == "spec-auto" and step:  # which rounds used the model is not recorded: both bounds
                row["predicted_speedup_all_model"] = predict(recs, cost, step, "model")["predicted_speedup"]
            base_speed = (sum(r["decode_tokens"] for r in base) / sum(r["decode_s"] for r in base)) if base else None
            row["measured_speedup"] = (row["measured_tokens_per_s"] / base_speed
                                       if base_speed and row["measured_tokens_per_s"] else None)
            out["methods"].setdefault(name, {})[cat] = row
    return out


def format_theory(t: dict[str, Any]) -> str:
    ms = (1, 2, 3, 4, 6, 8, 12, 16)
    lines = ["# Theory beside measurement", "",
             "Target T(m), ms: " + ", ".join(f"T({m}) = {t['T_ms'][m]:.1f}" for m in ms)
             + f"; draft step {t['draft_step_ms']:.1f} ms; attention +{t.get('per_key_us', 0.0):.2f} us per row "
             "per context token (predictions use each category's mean context)", "",
             "| method | category | context | acceptance | rounds by k | predicted | closed form | measured |",
             "|---|---|---|---|---|---|---|---|"]
    f = lambda x: f"{x:.2f}x" if x is not None else "-"  # noqa: E731
    for name, cats in sorted(t["methods"].items()):
        for cat, r in sorted(cats.items()):
            mix = " ".join(f"{k}:{n}" for k, n in r["round_mix"].items())
            pred = f(r["predicted_speedup"])
            if "predicted_speedup_all_model" in r:
                pred += f" .. {f(r['predicted_speedup_all_model'])}"
            lines.append(f"| {name} | {cat} | {r.get('context') or '-'} | {r['acceptance']:.0%} | {mix} | {pred} | "
                         f"{f(r['predicted_speedup_closed_form'])} | "
                         f"{f(r['measured_speedup'])} |")
    return "\n".join(lines) + "\n"


def recorded_cost_model(results: dict[str, Any], method: str | None = None) -> CostModel | None:
    """The cost model a run's results.json recorded: `method`'s own where the run recorded one per
    method ("cost_models": an int4 pair's differ from the bf16 pair's), else the run's last figures
    ("cost_model_end" where an engine saw its passes drift and measured again, else "cost_model");
    None for older runs."""
    recorded = (results.get("cost_models") or {}).get(method) if method else None
    recorded = recorded or results.get("cost_model_end") or results.get("cost_model")
    return CostModel.from_dict(recorded) if recorded else None


def write_theory(out_dir: str | Path, cost: CostModel | None = None) -> dict[str, Any]:
    """Read OUT_DIR/results.json; write theory.json and theory.md beside it.

    cost: a cost model; None = the one the run recorded (results.json "cost_model", or
    "cost_model_end" where an engine measured again during the run), or for an
    older run, load its models again and take it from the cost cache (the same machine, dtype
    and threads give the same entry unless the cache format changed since).
    """
    import specdecode

    from ..cost_model import measure_cost_model

    out = Path(out_dir)
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    if cost is None:
        cost = recorded_cost_model(results)
    if cost is None:
        cfg = results["config"]
        kw = dict(dtype=cfg["dtype"], device=cfg["device"], threads=cfg["threads"])
        target = specdecode.load(cfg["target"], **kw)
        drafters = [ModelDrafter(specdecode.load(cfg["draft"], **kw).lm)] if cfg.get("draft") else []
        cost = measure_cost_model(target.lm, drafters)
    t = theory(results, cost)
    (out / "theory.json").write_text(json.dumps(t, indent=1), encoding="utf-8")
    (out / "theory.md").write_text(format_theory(t), encoding="utf-8")
    return t


if __name__ == "__main__":
    print(format_theory(write_theory(sys.argv[1] if len(sys.argv) > 1 else "bench_out")))
