"""Measured round costs: T(m), one target pass over m new tokens, and the same for a draft model.

Whether speculation pays is a property of the machine, not of the algorithm: on a GPU or an
AVX-512-BF16 CPU a pass over 8 tokens costs about one pass over 1, on an AVX2 CPU in bf16 it
costs nearly 8. So the planner (specdecode/policy/) does not assume a shape: it times a few
passes of the loaded model (its dtype, quantization and thread count) on a throw-away cache,
interpolates T(1..16), and caches the result as JSON under $SPECDECODE_CACHE/costs, keyed by
everything that changes the timings (model shape, dtype, quantization, threads, device, torch
version, the CPU's model and vector-instruction flags, the kernel sources). Any of those
changing means a new key, hence a fresh measurement.

What is timed is a pass as the engine runs it: forward over m tokens after a short context,
plus the argmax and host copy that verification does (that copy is also the device sync).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import torch

M_MAX = 16  # the longest pass measured: a round verifies last token + up to 15 drafts
# Coarse points first, so a tight time budget still spans 1..16 (the rest is interpolated);
# T(1), T(2) and T(4) are always measured: they decide whether speculation can pay at all.
MEASURE_ORDER = (1, 2, 4, 8, 16, 3, 6, 12)
ALWAYS_TIMED = (2, 4)
# A measurement agrees with itself when, for each m, at least two of its T(m)/T(1) pairs lie within
# SPREAD of their median, and T(m) falls by no more than DIP as m grows; else it is retaken up to
# RETAKES times.
# Passes under MIN_JUDGED_SECONDS (tiny models) are not judged: their noise is the engine's bookkeeping.
SPREAD = 1.15
DIP = 1.1
RETAKES = 2
MIN_JUDGED_SECONDS = 0.002
# One prefill-sized pass, timed when the model is quick enough (2 T(16) within the budget): a
# draft model feeding a 700-token prompt before its first draft, or a batch of many requests,
# runs passes far past 16, where cost per row is set by compute, not by reading the weights.
# Extrapolating from 8..16 missed that both ways on the AVX-512-BF16 EPYC (bf16, 2 threads):
# 1.6x too dear for the 0.5B Qwen at 700 rows, 0.7x too cheap for the 1.5B.
# The same pass is timed prefill-shaped too (logits of the last row only, as a prompt chunk or a
# draft's catch-up pass runs): a verify pass projects every row to the vocabulary, and for the
# 0.5B Qwen (151,936 x 896 head, tied) that is a quarter of its weights: its 672-row catch-up
# took 1.2 s, where T(m) with every row's logits said 2.0 s.
BIG_M = 32
FORMAT_VERSION = 5  # bump when what is measured changes: old cache entries are then ignored
# T(m) is timed after this many context tokens; a longer context adds per_key per query row and key.
MEASURE_CONTEXT = 4
LONG_CONTEXT = 1024  # where the per-key attention cost is timed (a cache filled directly, no prefill)
_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
          "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "bf16", "i8mm")
# Sources whose changes change pass times (relative to the specdecode package).
_COST_SOURCES = ("model.py", "quant.py", "cache.py", "kernels")
# A process-wide memo: two engines on the same model (the server and a reference in a test,
# a bench's methods) make the same decisions, even when the disk cache cannot be written.
_MEMO: dict[str, PassCosts] = {}
# draft T(1) / target T(1) per pair of tables (measure_cost_model), the tables kept beside it so
# that an id reused after one is freed never matches
_RATIO_MEMO: dict[tuple[int, int], tuple[PassCosts, PassCosts, float]] = {}
log = logging.getLogger(__name__)


@dataclass
class PassCosts:
    """Seconds of one forward pass over m new tokens, for m = 1..len(seconds)."""

    seconds: list[float]  # seconds[m - 1]
    measured: list[int] = field(default_factory=list)  # the m actually timed; the rest interpolated
    key: dict[str, Any] = field(default_factory=dict)  # what it was measured for
    measure_seconds: float = 0.0  # wall time the measurement took
    from_cache: bool = False
    per_key: float = 0.0  # seconds more per query row and per context position (attention)
    prefill_big: float = 0.0  # seconds of a BIG_M-row pass with the last row's logits only; 0 = not timed
    # False: the timings disagreed with themselves even after retakes (never cached; the engine
    # times them again at its first idle moment: policy/costs.py)
    consistent: bool = True

    def prefill(self, m: int, context: int = 0) -> float:
        """A pass over m rows that projects only the last one to the vocabulary (a prompt chunk, a
        draft's catch-up) after `context` tokens. Without a timed prefill-shaped pass: T(m)."""
        if self.prefill_big <= 0.0 or BIG_M not in self.measured:
            return self.at(m, context)
        if m > BIG_M:
            body = self.prefill_big * m / BIG_M
        else:  # T(m) less the vocabulary projection of its m - 1 other rows
            head_row = max(self(BIG_M) - self.prefill_big, 0.0) / (BIG_M - 1)
            body = max(self(m) - (m - 1) * head_row, self(1))
        return body + self._attention(m, context)

    def at(self, m: int, context: int) -> float:
        """T(m) after `context` tokens: each of the m rows also attends to the longer context."""
        return self(m) + self._attention(m, context)

    def _attention(self, m: int, context: int) -> float:
        """Seconds m rows spend attending to the `context` - MEASURE_CONTEXT positions the timed passes lacked."""
        return m * max(context - MEASURE_CONTEXT, 0) * self.per_key

    def __call__(self, m: int) -> float:
        """T(m); beyond the table (prefill, batches of many requests): when a pass of BIG_M rows was
        timed, proportional to m at its cost per row (compute-bound: the weights are read once for
        all rows); else linear in m with the mean slope of the upper half of the range. (The last
        segment alone misleads: the kernels take rows in blocks of 4 or 8, so T(15) -> T(16) is
        nearly flat while T(17) opens a new block; with that slope a batched pass of 40 rows
        looked as cheap as one of 16.)"""
        if m <= 0:
            return 0.0
        n = len(self.seconds)
        if m <= n:
            return self.seconds[m - 1]
        if self.measured and max(self.measured) >= BIG_M and n >= BIG_M:
            return self.seconds[-1] * m / n
        half = n // 2
        slope = (self.seconds[-1] - self.seconds[half - 1]) / (n - half) if half >= 1 else self.seconds[-1]
        return self.seconds[-1] + (m - n) * max(slope, 0.0)

    @classmethod
    def from_points(cls, points: dict[int, float], m_max: int = M_MAX, **kw: Any) -> PassCosts:
        """Interpolate timed points {m: seconds} to 1..m_max (or the largest point past it),
        linearly, and make T non-decreasing.

        Past the last point the last segment's slope continues (a pass over more tokens costs
        at least as much per extra token as the largest ones measured did). A longer pass cannot
        really be cheaper: a dip is noise, and the running maximum removes it so that it cannot
        lure the policy into a longer draft.
        """
        if 1 not in points or len(points) < 2:
            raise ValueError("need T(1) and at least one more point")
        ms = sorted(points)
        m_max = max(m_max, ms[-1])
        out: list[float] = []
        for m in range(1, m_max + 1):
            hi = next((i for i, x in enumerate(ms) if x >= m), len(ms) - 1)
            lo = max(hi - 1, 0)
            m0, m1 = ms[lo], ms[hi]
            t0, t1 = points[m0], points[m1]
            t = t1 if m == m1 else t0 + (t1 - t0) * (m - m0) / (m1 - m0)
            out.append(max(t, out[-1] if out else 0.0))
        return cls(out, sorted(points), **kw)

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "measured": self.measured, "key": self.key,
                "measure_seconds": self.measure_seconds, "per_key": self.per_key, "prefill_big": self.prefill_big}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PassCosts:
        return cls([float(x) for x in d["seconds"]], [int(x) for x in d.get("measured", [])], dict(d.get("key", {})),
                   float(d.get("measure_seconds", 0.0)), per_key=float(d.get("per_key", 0.0)),
                   prefill_big=float(d.get("prefill_big", 0.0)))


@dataclass
class CostModel:
    """T(m) of the target and of each draft model, by drafter name ("model", "self").

    Drafters without a model (n-gram) cost nothing measurable next to a pass and have no entry.
    Build one by `measure_cost_model`, or by hand for tests: `CostModel.from_function(lambda m: ...)`.
    """

    target: PassCosts
    drafts: dict[str, PassCosts] = field(default_factory=dict)

    def T(self, m: int, context: int | None = None) -> float:  # noqa: N802 - the papers' name
        """Seconds of one target pass over m tokens (after `context` tokens; None = a short one)."""
        return self.target(m) if context is None else self.target.at(m, context)

    def draft(self, name: str, m: int, context: int | None = None) -> float:
        """Seconds of one pass of drafter `name`'s model over m tokens (0 for model-less drafters)."""
        costs = self.drafts.get(name)
        if costs is None:
            return 0.0
        return costs(m) if context is None else costs.at(m, context)

    def draft_prefill(self, name: str, m: int, context: int = 0) -> float:
        """Seconds of drafter `name`'s model feeding m tokens it has not seen (one pass, the last
        row's logits only: its catch-up before drafting) after `context` cached tokens."""
        costs = self.drafts.get(name)
        return 0.0 if costs is None else costs.prefill(m, context)

    @classmethod
    def from_function(cls, target, drafts: dict[str, Any] | None = None, m_max: int = M_MAX,
                      per_key: float = 0.0) -> CostModel:
        """A synthetic cost model: `target` and each draft are functions m -> seconds; `per_key`
        seconds more per row and context position for all of them."""
        def table(f) -> PassCosts:  # noqa: ANN001
            return PassCosts([float(f(m)) for m in range(1, m_max + 1)], list(range(1, m_max + 1)), per_key=per_key)

        return cls(table(target), {k: table(f) for k, f in (drafts or {}).items()})

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target.to_dict(), "drafts": {k: v.to_dict() for k, v in self.drafts.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CostModel:
        return cls(PassCosts.from_dict(d["target"]), {k: PassCosts.from_dict(v) for k, v in d.get("drafts", {}).items()})

    def format(self) -> str:
        """Human-readable (the CLI's --stats): T(m) in ms and relative to T(1)."""
        def row(label: str, c: PassCosts) -> str:
            ms = (1, 2, 3, 4, 6, 8, 12, 16) + ((BIG_M,) if BIG_M in c.measured else ())
            cells = "  ".join(f"{m}:{c(m) * 1e3:.1f}" for m in ms)
            rel = " ".join(f"{c(m) / c(1):.2f}" for m in ms) if c(1) > 0 else ""
            src = "cached" if c.from_cache else f"measured in {c.measure_seconds * 1e3:.0f} ms"
            attn = f"; +{c.per_key * 1024 * 1e3:.1f} ms per row per 1k context" if c.per_key else ""
            if c.prefill_big:
                attn += f"; prefill {c.prefill_big / BIG_M * 1e3:.2f} ms per row"
            return f"{label:<18} {cells} ms  (x T(1): {rel}; {src}, timed m = {c.measured}{attn})"

        lines = [row("cost T(m) target", self.target)]
        lines += [row(f"cost T(m) {name}", c) for name, c in self.drafts.items()]
        return "\n".join(lines)


# -- measuring ---------------------------------------------------------------------------------------


@torch.inference_mode()
def time_passes(model, *, budget_s: float = 2.0, repeats: int = 3, m_max: int = M_MAX,
                context: int = MEASURE_CONTEXT) -> tuple[dict[int, float], bool]:
    """Time passes of `model` (a LanguageModel) over m new tokens: ({m: seconds}, consistent).

    Costs are measured as ratios: every pass over m >= 2 tokens is timed right after a pass over
    one, and T(m) is the median of those T(m)/T(1) pairs times the fastest T(1). A machine that
    slows down for a moment slows both passes of a pair, so the ratio, which is all the planner
    uses, holds (the first AVX2 run of the project cached T(2)/T(1) = 1.84 from single timings
    where a quiet run gives 1.07). m = 2 and 4 get `repeats` pairs whatever the budget; the others
    as `budget_s` allows. Then a pass of BIG_M rows when the model is quick enough.

    consistent: the measurement agrees with itself (two pairs of each m within SPREAD of their median,
    T non-decreasing within DIP); measure_pass_costs retakes one that does not, and never caches it.
    """
    timed_pass = _pass_timer(model, context, max(m_max, BIG_M))
    ones: list[float] = []
    ratios: dict[int, list[float]] = {}
    start = time.perf_counter()
    order = [m for m in MEASURE_ORDER if 1 < m <= m_max]
    for rep in range(repeats):
        for m in order:
            if time.perf_counter() - start > budget_s and m not in ALWAYS_TIMED:
                continue
            t1 = timed_pass(1)
            ones.append(t1)
            ratios.setdefault(m, []).append(timed_pass(m) / t1)
    t1 = min(ones) if ones else timed_pass(1)
    points = {1: t1, **{m: t1 * statistics.median(r) for m, r in ratios.items()}}
    if m_max >= M_MAX and M_MAX in points and 2 * points[M_MAX] <= budget_s:
        # as a ratio too, the fastest of two (the first pass of a new shape can carry setup)
        points[BIG_M] = t1 * min(timed_pass(BIG_M) / timed_pass(1) for _ in range(2))
    return points, _consistent(t1, ratios)


def _consistent(t1: float, ratios: dict[int, list[float]]) -> bool:
    """Whether timed ratios agree with themselves; always True for passes too quick to judge."""
    if t1 < MIN_JUDGED_SECONDS:
        return True
    for r in ratios.values():
        # the median stands when another pair corroborates it (one outlier among three is noise)
        mid = statistics.median(r)
        if len(r) >= 2 and sum(mid / SPREAD <= x <= mid * SPREAD for x in r) < 2:
            return False
    med = sorted((m, statistics.median(r)) for m, r in ratios.items())
    if med and med[0][1] < 1.0 / DIP:  # T(2) well under T(1)
        return False
    return all(later * DIP >= earlier for (_, earlier), (_, later) in zip(med, med[1:]))


@torch.inference_mode()
def time_prefill(model, t_big: float, *, budget_s: float = 0.4, context: int = MEASURE_CONTEXT) -> float:
    """Seconds of a BIG_M-row pass that keeps only the last row's logits (prefill-shaped), the
    fastest of up to two (the second only when t_big, the verify-shaped one, is under budget_s / 2)."""
    timed_pass = _pass_timer(model, context, BIG_M)
    return min(timed_pass(BIG_M, num_logits=1) for _ in range(2 if t_big <= budget_s / 2 else 1))


def _pass_timer(model, context: int, longest: int):  # noqa: ANN202 - (m, num_logits=None) -> seconds
    """Build a throw-away cache holding `context` tokens (one untimed warm-up pass) and return a
    function that times one pass over m <= `longest` new tokens after them, then rolls it back."""
    device = model.device
    cache = model.new_cache(context + longest + 1)
    ids = torch.arange(context + longest, device=device).remainder(int(model.vocab_size)).view(1, -1)  # (1, context + longest)
    pos = torch.arange(context + longest, device=device).view(1, -1)
    model(ids[:, :context], pos[:, :context], cache).argmax(-1).tolist()  # warm-up and context

    def timed_pass(m: int, num_logits: int | None = None) -> float:
        t0 = time.perf_counter()
        # .tolist() is verification's host copy, and the sync that makes the timing honest on CUDA.
        model(ids[:, context:context + m], pos[:, context:context + m], cache, num_logits=num_logits).argmax(-1).tolist()
        dt = time.perf_counter() - t0
        cache.trim(context)
        return dt

    return timed_pass


@torch.inference_mode()
def time_per_key(model, *, context: int = LONG_CONTEXT, repeats: int = 3) -> float:
    """Seconds a query row spends per context position (attention over a longer cache): one-token
    passes after `context` positions, each right after one after MEASURE_CONTEXT (the median of
    the differences: a slow moment slows both). The long cache is filled by writing its buffers
    directly (zeros: attention costs the same for any values), so no prefill is paid. 0 for models
    whose cache cannot be filled that way (transformers caches)."""
    context = min(context, int(model.max_context) - 2)  # a model with a short context: as far as it goes
    if not hasattr(model, "args") or context < 64:
        return 0.0
    cache = model.new_cache(context + 2)
    if not hasattr(cache, "keys") or not isinstance(cache.keys, list):
        return 0.0
    cache.length = context
    device = model.device
    ids = torch.zeros(1, 1, dtype=torch.long, device=device)
    pos = torch.full((1, 1), context, dtype=torch.long, device=device)
    short = _pass_timer(model, MEASURE_CONTEXT, 1)
    diffs = []
    for _ in range(repeats):
        t_short = short(1)
        t0 = time.perf_counter()
        model(ids, pos, cache).argmax(-1).tolist()
        diffs.append(time.perf_counter() - t0 - t_short)
        cache.trim(context)
    return max(statistics.median(diffs), 0.0) / (context - MEASURE_CONTEXT)


@torch.inference_mode()
def draft_to_target_ratio(target, draft, repeats: int = 3) -> float:
    """T(1) of `draft` / T(1) of `target`, from one-token passes of the two taken in turn (median
    of the pairs): the two models' tables are timed at different moments (and cached apart), and a
    machine slower at one of them would skew the draft's cost in units of the target's T(1)."""
    t_target, t_draft = _pass_timer(target, MEASURE_CONTEXT, 1), _pass_timer(draft, MEASURE_CONTEXT, 1)
    return statistics.median(t_draft(1) / t_target(1) for _ in range(repeats))


def measure_pass_costs(model, *, budget_s: float = 2.0, use_cache: bool = True, m_max: int = M_MAX,
                       refresh: bool = False) -> PassCosts:
    """T(1..m_max) of `model`: from the memo or the disk cache when the key matches, else timed.
    A measurement that disagrees with itself is retaken (up to RETAKES times) and, if it still
    does, used for this process only, never cached. refresh: time it even so, and replace the
    memo and the cache entry (the engine's own passes contradicted it: policy/costs.py)."""
    key = cost_key(model)
    digest = _digest(key) if key is not None else None
    if digest is not None and digest in _MEMO and not refresh:
        return _MEMO[digest]
    path = costs_dir() / f"{digest}.json" if digest is not None else None
    if use_cache and path is not None and not refresh:
        cached = _read(path, key)
        if cached is not None:
            _MEMO[digest] = cached
            return cached
    t0 = time.perf_counter()
    for attempt in range(1 + RETAKES):
        points, consistent = time_passes(model, budget_s=budget_s, m_max=m_max)
        # a machine this busy will not get quiet within a retake: stop paying for them
        if consistent or time.perf_counter() - t0 > 2 * budget_s:
            break
    if not consistent:
        log.warning("pass timings of %s disagreed with themselves %d times (a busy machine?): using the "
                    "last for this process, not caching it", type(model).__name__, attempt + 1)
    per_key = time_per_key(model)
    prefill_big = time_prefill(model, points[BIG_M], budget_s=budget_s) if BIG_M in points else 0.0
    costs = PassCosts.from_points(points, m_max, key=key or {}, measure_seconds=time.perf_counter() - t0,
                                  per_key=per_key, prefill_big=prefill_big, consistent=consistent)
    if digest is not None:
        _MEMO[digest] = costs
        if use_cache and consistent:
            _write(path, costs)
    return costs


def measure_cost_model(target, drafters: list | tuple = (), *, budget_s: float = 2.0,
                       use_cache: bool = True, refresh: bool = False) -> CostModel:
    """The cost model of a target and its drafters (those with a `.model` are timed, cheaper budget).
    refresh: time them all again, replacing what the memo and the cache hold."""
    target_costs = measure_pass_costs(target, budget_s=budget_s, use_cache=use_cache, refresh=refresh)
    drafts = {}
    for d in drafters:
        model = getattr(d, "model", None)
        if model is not None and hasattr(model, "new_cache") and d.name not in drafts:
            costs = measure_pass_costs(model, budget_s=budget_s / 2, use_cache=use_cache, refresh=refresh)
            drafts[d.name] = _in_target_units(costs, target_costs, _ratio(target, model, target_costs, costs))
    return CostModel(target_costs, drafts)


# A remeasure on the engine's word (policy/costs.py) runs in the middle of a request: kept short.
REMEASURE_BUDGET_S = 0.5


def remeasure_target(target, old: CostModel, *, budget_s: float = REMEASURE_BUDGET_S) -> CostModel:
    """`old` with the target's T(m)/T(1) timed again, once and quickly: what the engine's passes
    contradicted (policy/costs.py). The attention and prefill figures and each draft model's cost
    keep their ratios to the target's T(1); nothing else is timed. A full measurement (the target
    with its retakes, its per-key and prefill passes, every draft model again) stopped a request's
    stream for about 8 s on a 2-core Zen 3 (Qwen2.5-Coder 1.5B + 0.5B); this takes about 1 s.
    Replaces the memo, and the disk entry when the timings agree with themselves."""
    t0 = time.perf_counter()
    points, consistent = time_passes(target, budget_s=budget_s)
    was = old.target
    scale = points[1] / was(1) if was(1) > 0.0 else 1.0  # the machine's pace now vs then: T(1) is the unit
    if BIG_M in was.measured and BIG_M not in points:
        points[BIG_M] = was(BIG_M) * scale  # keep the compute-bound slope past M_MAX
    new = PassCosts.from_points(points, M_MAX, key=was.key, measure_seconds=time.perf_counter() - t0,
                                per_key=was.per_key * scale, prefill_big=was.prefill_big * scale,
                                consistent=consistent)
    drafts = {name: _scaled(d, scale) for name, d in old.drafts.items()}
    key = cost_key(target)
    if key is not None:
        digest = _digest(key)
        _MEMO[digest] = new
        if consistent:
            _write(costs_dir() / f"{digest}.json", new)
    return CostModel(new, drafts)


def _ratio(target, draft, target_costs: PassCosts, draft_costs: PassCosts) -> float:
    """draft_to_target_ratio, timed once per pair of tables this process holds: two engines on
    the same models then price the draft alike (as they share one measurement of each model)."""
    pair = (id(target_costs), id(draft_costs))
    held = _RATIO_MEMO.get(pair)
    if held is None or held[0] is not target_costs or held[1] is not draft_costs:
        held = _RATIO_MEMO[pair] = (target_costs, draft_costs, draft_to_target_ratio(target, draft))
    return held[2]


def _in_target_units(draft: PassCosts, target: PassCosts, ratio: float) -> PassCosts:
    """The draft's table rescaled so that its T(1) is `ratio` times the target's (its shape kept)."""
    if draft(1) <= 0.0 or target(1) <= 0.0 or target(1) < MIN_JUDGED_SECONDS:
        return draft
    return _scaled(draft, ratio * target(1) / draft(1))


def _scaled(costs: PassCosts, f: float) -> PassCosts:
    """Every figure of `costs` times f (its shape kept)."""
    return PassCosts([x * f for x in costs.seconds], list(costs.measured), dict(costs.key), costs.measure_seconds,
                     costs.from_cache, per_key=costs.per_key * f, prefill_big=costs.prefill_big * f)


# -- the cache key ---------------------------------------------------------------------------------


def costs_dir() -> Path:
    from .loading.store import cache_dir

    return cache_dir() / "costs"


def model_fingerprint(model) -> dict[str, Any] | None:
    """What fixes a model's pass time: its shape, dtype and quantization (not its weights' values).

    None for a model we cannot describe: it is then timed afresh in every process.
    """
    from .hf_adapter import HFCausalLM

    if isinstance(model, HFCausalLM):
        cfg = model.model.config.to_dict()
        shape = {k: cfg.get(k) for k in ("model_type", "vocab_size", "hidden_size", "intermediate_size",
                                          "num_hidden_layers", "num_attention_heads", "num_key_value_heads")}
        return {"kind": "transformers", "class": type(model.model).__name__, "shape": shape,
                "dtype": str(model.model.dtype)}
    args = getattr(model, "args", None)
    if not is_dataclass(args) or not isinstance(model, torch.nn.Module):
        return None
    linears: dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) or hasattr(m, "mode") or hasattr(m, "kept_rows"):
            name = f"{type(m).__name__}:{getattr(m, 'mode', '')}:{getattr(m, 'group_size', '')}"
            if hasattr(m, "kept_rows"):  # a draft's output layer cut to its first rows (draft_vocab.py)
                name += f":{m.kept_rows}"
            linears[name] = linears.get(name, 0) + 1
    param = next(model.parameters(), None)
    return {"kind": type(model).__name__, "args": asdict(args), "linear": dict(sorted(linears.items())),
            "dtype": str(param.dtype) if param is not None else None}


def cpu_signature() -> str:
    """CPU model name, core count and the vector-instruction flags that decide kernel speed."""
    name, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                k, _, v = line.partition(":")
                k = k.strip()
                if k == "model name" and not name:
                    name = v.strip()
                elif k in ("flags", "Features") and not flags:
                    flags = set(v.split())
                if name and flags:
                    break
    except OSError:  # not Linux: the processor string is all we have
        pass
    name = name or platform.processor() or platform.machine()
    return f"{name}; {os.cpu_count()} cpus; " + " ".join(f for f in _FLAGS if f in flags)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


def _code_fingerprint() -> str:
    """A hash of the sources that set pass times, so a kernel change triggers a new measurement."""
    root = Path(__file__).parent
    h = hashlib.sha256()
    for rel in _COST_SOURCES:
        p = root / rel
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        for f in files:
            if f.is_file() and f.suffix in (".py", ".c", ".cpp", ".h"):
                h.update(str(f.relative_to(root)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


def cost_key(model) -> dict[str, Any] | None:
    fp = model_fingerprint(model)
    if fp is None:
        return None
    return {"model": fp, "threads": torch.get_num_threads(), "device": _device_name(model.device),
            "torch": torch.__version__, "python": sys.version.split()[0], "cpu": cpu_signature(),
            "code": _code_fingerprint(), "format": FORMAT_VERSION}


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _read(path: Path, key: dict[str, Any]) -> PassCosts | None:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        costs = PassCosts.from_dict(d)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):  # damaged entry: measure again and overwrite it
        return None
    if json.loads(json.dumps(costs.key, default=str)) != json.loads(json.dumps(key, default=str)):
        return None  # a digest collision or a hand-edited file: not ours
    costs.from_cache = True
    return costs


def _write(path: Path, costs: PassCosts) -> None:
    from .loading.store import atomic_write_text

    try:
        atomic_write_text(path, json.dumps(costs.to_dict(), indent=1, default=str))
    except OSError as e:  # a read-only cache only costs a re-measurement next time
        warnings.warn(f"could not cache the measured pass costs in {path}: {e}", stacklevel=3)
