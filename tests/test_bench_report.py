"""Bench reports: charts that stay readable as methods and categories grow, and a bench that
runs to the end without matplotlib (JSON and Markdown, one warning line, no charts)."""

from __future__ import annotations

import json
import random
import sys

import pytest
import torch

from specdecode.bench.report import CHARTS, MAX_FIGURE_INCHES, charts_missing, write_charts
from specdecode.bench.stats import OVERALL

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DPI = 110


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _results(n_methods: int, n_categories: int) -> dict:
    """A summary as bench.stats.summarize makes it, with made-up numbers."""
    rng = random.Random(0)
    methods = ["target", "hf"] + [f"spec-method-{i}" for i in range(n_methods - 2)]
    cats = [f"category-{j}" for j in range(n_categories)] + [OVERALL]
    by = {c: {m: {"decode_tokens_per_s": rng.uniform(2, 9),
                  "speedup_vs_target": 1.0 if m == "target" else rng.uniform(0.6, 1.8),
                  "speedup_vs_hf": 1.0 if m == "hf" else rng.uniform(0.6, 2.2),
                  **({"acceptance_by_position": [rng.uniform(0.3, 0.9) for _ in range(4)]} if m.startswith("spec")
                     else {})}
              for m in methods} for c in cats}
    by[cats[0]][methods[-1]]["speedup_vs_target"] = None  # a method without a value there
    return {"methods": {m: {} for m in methods}, "summary": {"categories": cats, "by_category": by}}


@pytest.mark.skipif(charts_missing() is not None, reason="matplotlib is not installed")
@pytest.mark.parametrize("n_methods,n_categories", [(2, 1), (4, 3), (9, 9), (12, 14)])
def test_charts_stay_within_a_readable_size(tmp_path, n_methods, n_categories):
    paths = write_charts(_results(n_methods, n_categories), tmp_path)
    assert [p.name for p in paths] == list(CHARTS)
    sizes = {p.name: _png_size(p) for p in paths}
    cap = MAX_FIGURE_INCHES * DPI
    for name, (w, h) in sizes.items():
        assert w <= cap and h <= cap, (name, w, h)
    w, h = sizes["speedup_by_category.png"]
    # One cell per (method, category), not one bar each: 9 x 9 used to be 4,686 x 792 pixels.
    assert w <= (2.8 + 0.9 * (n_categories + 1)) * DPI + 1
    assert h >= 2 * 0.4 * (n_methods - 1) * DPI  # two baselines, one row per other method: rows stay tall
    if n_methods == 9:
        assert w < 1500 and h < 1200


def test_bench_without_matplotlib_writes_json_and_markdown(tmp_path, capsys, monkeypatch):
    from specdecode.bench import harness
    from specdecode.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib...` now raises ImportError
    assert "specdecode[bench]" in charts_missing()
    loads = []
    real_run = harness.run_bench

    def run_bench(config):
        loads.append(capsys.readouterr().err)  # what was printed before any model was loaded
        return real_run(config)

    monkeypatch.setattr(harness, "run_bench", run_bench)
    out = tmp_path / "out"
    before = torch.get_num_threads()
    try:
        rc = main(["bench", "--target", "tiny-random", "--methods", "target,spec-ngram", "--dataset", "spec-bench",
                   "--categories", "qa", "--limit", "1", "--max-new-tokens", "6", "--warmup", "0", "--dtype",
                   "float32", "--threads", "1", "--out", str(out), "--quiet"])
    finally:
        torch.set_num_threads(before)
    assert rc == 0
    warned = [line for line in loads[0].splitlines() if "warning" in line]
    assert len(warned) == 1 and "pip install 'specdecode[bench]'" in warned[0]
    err = capsys.readouterr().err
    assert "warning" not in err and "Traceback" not in err and "and charts" not in err
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"target", "spec-ngram"} and results["summary"]
    md = (out / "results.md").read_text()
    assert "## Charts" in md and "Not drawn" in md and ".png" not in md
    assert not list(out.glob("*.png"))
