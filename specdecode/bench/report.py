"""Reports from results.json: the summary, results.md (tables) and PNG charts (matplotlib, Agg).

matplotlib is optional (the `bench` extra): without it the charts are skipped, not the run.

Charts are drawn on matplotlib's object API with the Agg canvas, never pyplot, so no global
backend is switched and no display is needed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .results_io import RESULTS_JSON, save_json
from .stats import OVERALL, summarize

CHARTS = ("speedup_by_category.png", "throughput_by_category.png", "acceptance_by_position.png")


def write_reports(results: dict[str, Any], out: Path | str) -> list[Path]:
    """Summarize, then write results.json (with the summary), results.md and the charts."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results["summary"] = summarize(results["prompts"], list(results["methods"]))
    save_json(results, out / RESULTS_JSON)
    md = out / "results.md"
    md.write_text(markdown(results, charts_missing()), encoding="utf-8")
    return [out / RESULTS_JSON, md] + write_charts(results, out)


# -- Markdown ----------------------------------------------------------------------------------


def _f(x: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "–" if x is None else f"{x:{spec}}{suffix}"


def _table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> str:
    """A Markdown table; the first `text_columns` columns left-aligned, numbers right-aligned."""
    align = ["---" if i < text_columns else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


md_table = _table  # for the other reports (bench/multiturn.py)


def _by_category_table(summary: dict, methods: list[str], key: str, spec: str = ".2f", suffix: str = "") -> str:
    cats = summary["categories"]
    rows = []
    for m in methods:
        cells = [_f(summary["by_category"][c].get(m, {}).get(key), spec, suffix) for c in cats]
        rows.append([f"`{m}`"] + cells)
    return _table(["method"] + [c if c != OVERALL else "**overall**" for c in cats], rows)


def _gb(n: int | None) -> str:
    return "?" if not n else f"{n / 2**30:.0f} GiB"


_DRAFTER_LABELS = {"model": "draft model", "ngram": "n-gram", "self": "self"}


def draft_length_text(cfg: dict[str, Any]) -> str:
    """The draft length of the run as the methods used it (bench/methods.py, methods_policy.py):
    -k N, or else the engine's defaults, recorded in the run's config when it started."""
    if cfg.get("num_draft_tokens"):
        return f"{cfg['num_draft_tokens']} (-k; spec-model-kN, spec-model-auto and spec-auto keep their own)"
    defaults = cfg.get("default_num_draft_tokens")
    if not defaults:  # a run from before the defaults were recorded
        return "the defaults of specdecode at the time (not recorded)"
    fixed = ", ".join(f"{_DRAFTER_LABELS.get(kind, kind)} {k}" for kind, k in defaults.items())
    return f"default ({fixed}; spec-model-kN use N; the cost policy chooses per round in spec-int4-*, " \
           "spec-model-auto and spec-auto)"


def markdown(results: dict[str, Any], no_charts: str | None = None) -> str:
    """results.md; `no_charts` says why the charts were not drawn (they are linked otherwise)."""
    summary = results.get("summary") or summarize(results["prompts"], list(results["methods"]))
    cfg, mach, models = results["config"], results["machine"], results["models"]
    methods = [m for m in results["methods"] if any(m in row for row in summary["by_category"].values())]
    n_prompts = len(results["prompts"])
    greedy = cfg["temperature"] == 0
    gpu = mach.get("gpu")
    draft = models.get("draft")
    parts = [
        f"# specdecode bench: {cfg['dataset']}",
        "",
        f"- **Models**: target `{models['target']['source']}`"
        + (f", draft `{draft['source']}`" if draft else ", no draft model")
        + f"; {models['target']['dtype']} on {models['target']['device']}"
        + (f"; {models['target']['kernels']}" if models["target"].get("kernels") else ""),
        f"- **Machine**: {mach['cpu']}" + (f" [{', '.join(mach['cpu_isa_flags'])}]" if mach.get("cpu_isa_flags") else "")
        + f" ({mach['cpus_usable']} usable cores of {mach['cpu_count']}, "
        f"{mach['torch_threads']} torch threads, {_gb(mach.get('ram_bytes'))} RAM)"
        + (f"; GPU {gpu['name']} ({_gb(gpu['memory_bytes'])})" if gpu else "; no GPU"),
        f"- **Software**: torch {mach['torch']}, transformers {mach['transformers']}, specdecode {mach['specdecode']}"
        + (f" (commit {mach['git_commit']})" if mach.get("git_commit") else "") + f", Python {mach['python']}",
        f"- **Run**: {n_prompts} prompts, max {cfg['max_new_tokens']} new tokens, "
        + ("greedy" if greedy else f"temperature {cfg['temperature']} (seed {cfg['seed']})")
        + f", median of {cfg['repeats']} repeat(s), {cfg['warmup']} warm-up prompt(s), prompt format {cfg['prompt_format']}, "
        f"draft tokens per round {draft_length_text(cfg)}" + (", adaptive" if cfg["adaptive"] else ""),
        f"- **Date**: started {results['started']}" + (f", finished {results['finished']}" if results.get("finished") else ""),
    ]
    if results.get("interrupted"):
        parts.append(f"- **Interrupted** at {results['interrupted']}: partial results (`--resume` continues)")
    parts += [
        "",
        "Decode speed counts the tokens after the first output (the prefill's) over the time from the "
        "first output to the last; categories pool tokens and seconds over their prompts. "
        "See docs/benchmarks.md.",
        "",
        "## Decode speed (tokens/s)",
        "",
        _by_category_table(summary, methods, "decode_tokens_per_s", ".2f"),
        "",
        "## Speed-up over the specdecode target-only loop (`target`)",
        "",
        _by_category_table(summary, methods, "speedup_vs_target", ".2f", "x"),
    ]
    if cfg["repeats"] > 1:
        parts += ["", "## Speed-up over `target`, fastest of the repeats", "",
                  "The same, from the fastest run of each (prompt, method) instead of the median: noise on "
                  "a shared machine only adds time, so where the two tables disagree, the noise was large.", "",
                  _by_category_table(summary, methods, "speedup_vs_target_fastest", ".2f", "x")]
    if "hf" in methods:
        parts += ["", "## Speed-up over transformers `generate` (`hf`)", "",
                  _by_category_table(summary, methods, "speedup_vs_hf", ".2f", "x")]
    parts += ["", "## Mean tokens per target pass", "",
              "Tokens produced per decode pass of the target (1.00 without speculation): "
              "accepted drafts plus the target's own token.", "",
              _by_category_table(summary, methods, "tokens_per_pass", ".2f")]
    overall = summary["by_category"].get(OVERALL, {})
    drafting = [m for m in methods if overall.get(m, {}).get("acceptance_by_position")]
    if drafting:
        depth = max(len(overall[m]["acceptance_by_position"]) for m in drafting)
        rows = [[f"`{m}`", _f(overall[m]["acceptance_rate"], ".1%")]
                + [_f(r, ".2f") for r in overall[m]["acceptance_by_position"]]
                + [""] * (depth - len(overall[m]["acceptance_by_position"])) for m in drafting]
        parts += ["", "## Acceptance by draft position (all prompts)", "",
                  "P(draft token i accepted | it was drafted); the first column pools all positions.", "",
                  _table(["method", "all"] + [str(i + 1) for i in range(depth)], rows)]
    parts += ["", "## Prefill and end to end", ""]
    parts.append(_table(
        ["method", "median prefill (ms)", "end-to-end tokens/s", "generated tokens"],
        [[f"`{m}`", _f(overall[m]["prefill_s_median"] * 1000 if overall[m]["prefill_s_median"] is not None else None, ".1f"),
          _f(overall[m]["generated_tokens"] / overall[m]["total_s"] if overall[m]["total_s"] else None, ".2f"),
          str(overall[m]["generated_tokens"])] for m in methods if m in overall]))
    remeasured = _remeasures(results)
    if remeasured:
        parts += ["", "The cost model was timed again during these runs (the engine's passes contradicted it; about "
                  "a second each, after the request's last token: in its end-to-end time, not its decode "
                  "time): " + remeasured + "."]
    parts += ["", "## Output equality with the target-only greedy output", ""]
    if not greedy:
        parts.append("Not checked: sampling (temperature > 0) gives equal distributions, not equal tokens.")
    else:
        parts.append(_table(
            ["method", "prompts compared", "identical", "mismatches"],
            [[f"`{m}`", str(overall[m]["compared_to_target"]),
              str(overall[m]["compared_to_target"] - overall[m]["mismatches_vs_target"]),
              ("**%d**" % overall[m]["mismatches_vs_target"]) if overall[m]["mismatches_vs_target"] else "0"]
             for m in methods if m in overall]))
        parts += ["", _mismatch_list(results)]
    parts += ["", "## Methods", ""]
    parts += [f"- `{m}`: {info['description']}" for m, info in results["methods"].items()]
    parts += [f"- `{m}`: skipped, {why}" for m, why in results.get("skipped_methods", {}).items()
              if m not in results["methods"]]
    if results.get("skipped_prompts"):
        parts += ["", f"{len(results['skipped_prompts'])} prompts skipped (too long for the context)."]
    parts += ["", "## Charts", ""]
    parts += [f"Not drawn: {no_charts}."] if no_charts else [f"![{c[:-4]}]({c})" for c in CHARTS]
    return "\n".join(parts) + "\n"


def _remeasures(results: dict[str, Any]) -> str:
    """'`method` on prompt id (n times), ...' for every run that re-timed its cost model; '' if none."""
    found = [f"`{name}` on {p['id']}" + (f" ({r['cost_remeasures']} times)" if r["cost_remeasures"] > 1 else "")
             for p in results["prompts"] for name, r in p["results"].items() if r.get("cost_remeasures")]
    return ", ".join(found)


def _mismatch_list(results: dict[str, Any]) -> str:
    rows = []
    for p in results["prompts"]:
        ref = p["results"].get("target")
        for m, r in p["results"].items():
            if r.get("equal_to_target") is False:
                pos = r["first_mismatch"]
                texts = r.get("mismatch_tokens") or {}
                want, got = (_token(ids, pos, texts.get(who)) for ids, who in
                             ((ref["output_ids"], "target"), (r["output_ids"], "method")))
                note = ""
                if r.get("reference") and r.get("equal_to_reference") is not None:
                    note = f"equal to `{r['reference']}`" if r["equal_to_reference"] else f"differs from `{r['reference']}` too"
                rows.append([p["id"], p["category"], f"`{m}`", str(pos), str(want), str(got), note])
    if not rows:
        return "Every output is identical to the target-only greedy output."
    return ("Every mismatch, with the first differing token position (0 = the first generated token). "
            "The `hf*` methods run transformers' modeling code, whose float rounding may differ from the "
            "native model's; their own check is against `hf`.\n\n"
            + _table(["prompt", "category", "method", "first differing position", "target token", "method token", "note"],
                     rows, text_columns=7))


def _token(ids: list[int], pos: int, text: str | None) -> str:
    if pos >= len(ids):
        return "(end)"
    shown = f" `{text!r}`" if text is not None else ""
    return f"{ids[pos]}{shown}".replace("|", "\\|")


# -- charts ------------------------------------------------------------------------------------

CHARTS_EXTRA = "pip install 'specdecode[bench]'"
MAX_FIGURE_INCHES = 16.0  # at 110 dpi: no chart wider or taller than about 1,760 pixels


def charts_missing() -> str | None:
    """None when charts can be drawn; otherwise why not, with what to install."""
    try:
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401
    except ImportError as e:
        return f"matplotlib is not installed ({e}); for the charts: {CHARTS_EXTRA}"
    return None


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(min(width, MAX_FIGURE_INCHES), min(height, MAX_FIGURE_INCHES)), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _heatmap(fig, ax, summary: dict, methods: list[str], key: str, title: str, fmt: str, centre: float | None) -> None:
    """Methods x categories, each cell coloured by its value and labelled with it.

    A table of coloured cells stays readable as methods and categories grow (grouped bars put
    9 x 9 bars side by side). With `centre` (a speed-up's 1.0) the colour map diverges: red is
    slower than the baseline, blue faster, white equal.
    """
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import Normalize, TwoSlopeNorm

    cats = summary["categories"]
    values = np.array([[summary["by_category"][c].get(m, {}).get(key) if m else None for c in cats] for m in methods],
                      dtype=float)  # (methods, categories); None -> nan
    shown = values[np.isfinite(values)]
    if centre is not None:
        # Symmetric in ratio: x times faster and x times slower are equally dark (at least 5%).
        ratio = float(np.abs(np.log(shown / centre)).max()) if shown.size else 0.0
        spread = max(math.exp(ratio), 1.05)
        norm = TwoSlopeNorm(centre, centre / spread, centre * spread)
        cmap = colormaps["RdBu"]
    else:
        norm = Normalize(float(shown.min()) if shown.size else 0.0, float(shown.max()) if shown.size else 1.0)
        cmap = colormaps["Blues"]
    cmap = cmap.with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto")
    for i in range(len(methods)):
        for j in range(len(cats)):
            v = values[i, j]
            if not np.isfinite(v):
                ax.text(j, i, "–", ha="center", va="center", fontsize=9, color="#555555")
                continue
            r, g, b, _ = cmap(norm(v))
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=9, color="white" if dark else "black")
    ax.set_xticks(range(len(cats)), [c if c != OVERALL else "overall" for c in cats], rotation=30, ha="right",
                  fontsize=9)
    ax.set_yticks(range(len(methods)), methods, fontsize=9)
    if OVERALL in cats:  # set the pooled column apart from the categories
        ax.axvline(cats.index(OVERALL) - 0.5, color="black", linewidth=1.5)
    ax.set_title(title, fontsize=11)
    ax.tick_params(length=0)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)


def _heatmap_size(ncat: int, nmethods: int, panels: int = 1) -> tuple[float, float]:
    """Figure inches for `panels` stacked heat maps: about 0.9 in per column, 0.4 in per row."""
    return 2.8 + 0.9 * ncat, panels * (1.4 + 0.4 * max(nmethods, 1))


def write_charts(results: dict[str, Any], out: Path) -> list[Path]:
    """The PNG charts, or none (and no error) when matplotlib is missing: see charts_missing."""
    if charts_missing() is not None:
        return []
    summary = results["summary"]
    methods = [m for m in results["methods"] if m in summary["by_category"].get(OVERALL, {})]
    paths = [out / c for c in CHARTS]
    ncat = len(summary["categories"])
    from matplotlib.ticker import MaxNLocator

    # Speed-up over each baseline that ran: one heat map per baseline, stacked.
    baselines = [b for b in ("target", "hf") if b in methods] or ["target"]
    rows = {b: [m for m in methods if m != b] or [""] for b in baselines}
    fig = _figure(*_heatmap_size(ncat, max(len(r) for r in rows.values()), len(baselines)))
    for i, b in enumerate(baselines):
        ax = fig.add_subplot(len(baselines), 1, i + 1)
        _heatmap(fig, ax, summary, rows[b], f"speedup_vs_{b}",
                 f"Decode speed-up over `{b}` (blue: faster, red: slower)", ".2f", centre=1.0)
    fig.tight_layout()
    fig.savefig(paths[0])

    fig = _figure(*_heatmap_size(ncat, len(methods)))
    _heatmap(fig, fig.add_subplot(1, 1, 1), summary, methods or [""], "decode_tokens_per_s",
             "Decode speed by category (tokens / s)", ".2f", centre=None)
    fig.tight_layout()
    fig.savefig(paths[1])

    # Acceptance by position: one small panel per drafting method, at most 3 to a row.
    overall = summary["by_category"].get(OVERALL, {})
    drafting = [m for m in methods if overall.get(m, {}).get("acceptance_by_position")]
    ncols = min(max(len(drafting), 1), 3)
    nrows = -(-max(len(drafting), 1) // ncols)
    legend_rows = -(-(len(summary["categories"])) // 6) if drafting else 0
    fig = _figure(4.6 * ncols, 3.4 * nrows + 0.3 * legend_rows)
    if not drafting:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no method drafted any tokens", ha="center", va="center")
        ax.set_axis_off()
    for i, m in enumerate(drafting):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for c in summary["categories"]:
            rates = summary["by_category"][c].get(m, {}).get("acceptance_by_position") or []
            if rates:
                style = dict(color="black", linewidth=2.2) if c == OVERALL else dict(linewidth=1.0, alpha=0.85)
                ax.plot(range(1, len(rates) + 1), rates, marker="o", markersize=3, label=c, **style)
        ax.set_ylim(0, 1.02)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("draft position")
        ax.set_ylabel("P(accepted | drafted)")
        ax.set_title(f"Acceptance by position: {m}", fontsize=10)
        ax.grid(alpha=0.3)
    bottom = 0.0
    if drafting:  # the categories are the same in every panel: one legend below them all
        handles, labels = fig.axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8, frameon=False)
        bottom = (0.3 * legend_rows + 0.1) / fig.get_figheight()
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(paths[2])
    return paths
