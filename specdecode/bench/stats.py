"""The statistics of a benchmark, as pure functions over the per-prompt records of results.json.

Aggregates pool tokens and seconds (sum over prompts, then divide), as Spec-Bench does: a
category's throughput is its total decoded tokens over its total decode time, so long
generations weigh what they cost, and a speed-up is a ratio of two such throughputs over the
same prompts.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any

OVERALL = "overall"


def median(values: Iterable[float]) -> float:
    vals = list(values)
    if not vals:
        raise ValueError("median of no values")
    return float(statistics.median(vals))


def first_mismatch(reference: Sequence[int], output: Sequence[int]) -> int | None:
    """Index of the first token where `output` differs from `reference`; None if identical.

    When one is a prefix of the other, the first differing position is the shorter length.
    """
    for i, (a, b) in enumerate(zip(reference, output)):
        if a != b:
            return i
    return None if len(reference) == len(output) else min(len(reference), len(output))


def throughput(tokens: float, seconds: float) -> float | None:
    return tokens / seconds if seconds > 0 else None


def pooled_rates(drafted: Iterable[Sequence[int] | None], accepted: Iterable[Sequence[int] | None]) -> list[float]:
    """Acceptance by draft position, pooled: sum(accepted at i) / sum(drafted at i)."""
    d_tot: list[int] = []
    a_tot: list[int] = []
    for d, a in zip(drafted, accepted):
        if d is None or a is None:
            continue
        for i, (di, ai) in enumerate(zip(d, a)):
            if i == len(d_tot):
                d_tot.append(0)
                a_tot.append(0)
            d_tot[i] += di
            a_tot[i] += ai
    return [a / d if d else 0.0 for a, d in zip(a_tot, d_tot)]


def speedup(records: dict[str, dict], baseline: dict[str, dict]) -> float | None:
    """Decode throughput of `records` over that of `baseline`, on the prompts both ran.

    records / baseline: prompt id -> per-prompt record with decode_tokens and decode_s (medians).
    """
    common = [pid for pid in records if pid in baseline]
    mine = throughput(sum(records[p]["decode_tokens"] for p in common), sum(records[p]["decode_s"] for p in common))
    base = throughput(sum(baseline[p]["decode_tokens"] for p in common), sum(baseline[p]["decode_s"] for p in common))
    if not common or mine is None or not base:
        return None
    return mine / base


def fastest(records: dict[str, dict]) -> dict[str, dict]:
    """The same records with decode_s = the fastest of their repeats (noise on a shared machine only
    adds time, so the fastest run is the less noisy estimate of what a method costs)."""
    out = {}
    for pid, r in records.items():
        runs = [x["decode_s"] for x in r.get("runs") or [] if x.get("decode_s")]
        out[pid] = {**r, "decode_s": min(runs)} if runs else r
    return out


def method_summary(records: dict[str, dict]) -> dict[str, Any]:
    """Pooled statistics of one method over some prompts (prompt id -> record)."""
    recs = list(records.values())
    dec_tokens = sum(r["decode_tokens"] for r in recs)
    dec_s = sum(r["decode_s"] for r in recs)
    passes = [r.get("target_passes") for r in recs]
    known_passes = all(p is not None for p in passes)
    drafted = [sum(r["drafted_by_position"]) for r in recs if r.get("drafted_by_position") is not None]
    accepted = [sum(r["accepted_by_position"]) for r in recs if r.get("accepted_by_position") is not None]
    compared = [r for r in recs if r.get("equal_to_target") is not None]
    return {
        "prompts": len(recs),
        "generated_tokens": sum(r["generated_tokens"] for r in recs),
        "decode_tokens": dec_tokens,
        "decode_s": dec_s,
        "decode_tokens_per_s": throughput(dec_tokens, dec_s),
        "prefill_s_median": median(r["prefill_s"] for r in recs) if recs else None,
        "total_s": sum(r["total_s"] for r in recs),
        "tokens_per_pass": (dec_tokens / sum(passes) if known_passes and sum(passes) else None),
        "acceptance_rate": (sum(accepted) / sum(drafted) if drafted and sum(drafted) else None),
        "acceptance_by_position": pooled_rates(
            (r.get("drafted_by_position") for r in recs), (r.get("accepted_by_position") for r in recs)),
        "compared_to_target": len(compared),
        "mismatches_vs_target": sum(1 for r in compared if not r["equal_to_target"]),
        "mismatches_vs_reference": sum(1 for r in recs if r.get("equal_to_reference") is False),
    }


def summarize(prompts: list[dict], methods: list[str]) -> dict[str, Any]:
    """Per category and overall, per method: throughput, speed-ups, acceptance, equality.

    prompts: the "prompts" list of results.json (each with id, category, results{method: record}).
    """
    categories = list(dict.fromkeys(p["category"] for p in prompts))
    out: dict[str, Any] = {"categories": categories + [OVERALL], "by_category": {}}
    for cat in categories + [OVERALL]:
        chosen = [p for p in prompts if cat == OVERALL or p["category"] == cat]
        per_method = {m: {p["id"]: p["results"][m] for p in chosen if m in p["results"]} for m in methods}
        row = {}
        for m in methods:
            if not per_method[m]:
                continue
            s = method_summary(per_method[m])
            s["speedup_vs_target"] = speedup(per_method[m], per_method["target"]) if "target" in per_method else None
            s["speedup_vs_target_fastest"] = (speedup(fastest(per_method[m]), fastest(per_method["target"]))
                                              if "target" in per_method else None)
            s["speedup_vs_hf"] = speedup(per_method[m], per_method["hf"]) if "hf" in per_method else None
            row[m] = s
        out["by_category"][cat] = row
    return out
