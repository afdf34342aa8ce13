"""The `llamacpp` bench method and llama.cpp's T(m): the missing-extra path, then (when
llama-cpp-python is installed) real runs on SmolLM2-135M's GGUF file."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from specdecode.bench.llamacpp import (LlamaCppUnavailableError, LlamaStepper, llamacpp_step_samples,
                                       llamacpp_step_times, resolve_gguf)
from specdecode.bench.methods import METHODS, BenchContext, build_runner
from specdecode.config import SamplingParams
from specdecode.errors import SpecdecodeError

HINT = "pip install 'specdecode[llamacpp]'"


@pytest.fixture
def no_llama_cpp(monkeypatch):
    """Make `import llama_cpp` fail as it does where the extra is not installed."""
    monkeypatch.setitem(sys.modules, "llama_cpp", None)


@pytest.fixture(scope="module")
def tiny():
    import specdecode

    return specdecode.load("tiny-random", dtype="float32")


def test_method_is_registered_opt_in():
    m = METHODS["llamacpp"]
    assert not m.default and not m.needs_draft  # not in "all": it needs the extra and a GGUF target
    assert "llama.cpp" in m.description


def test_missing_extra_names_the_extra(no_llama_cpp, tiny):
    ctx = BenchContext(tiny, None, list(tiny.tokenizer.eos_token_ids))
    with pytest.raises(LlamaCppUnavailableError, match=r"llamacpp bench method needs llama-cpp-python") as e:
        build_runner(METHODS["llamacpp"], ctx)
    assert HINT in str(e.value) and isinstance(e.value, SpecdecodeError)


def test_missing_extra_step_times(no_llama_cpp, tmp_path):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"GGUF")
    with pytest.raises(LlamaCppUnavailableError, match=r"specdecode\[llamacpp\]"):
        llamacpp_step_times(f, [1, 2], threads=1, repeats=1)


def test_bench_cli_reports_missing_extra_in_one_line(no_llama_cpp, tmp_path, capsys):
    from specdecode.cli import main

    rc = main(["bench", "--target", "tiny-random", "--methods", "llamacpp", "--limit", "1", "-n", "4",
               "--warmup", "0", "--dtype", "float32", "--threads", "1", "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and HINT in err and "Traceback" not in err


def test_needs_a_gguf_target(tmp_path):
    with pytest.raises(SpecdecodeError, match="needs a GGUF model"):
        resolve_gguf("tiny-random")
    with pytest.raises(SpecdecodeError, match="no such file"):
        resolve_gguf(str(tmp_path / "missing.gguf"))


def test_step_times_checks_arguments(tmp_path):
    with pytest.raises(SpecdecodeError, match="m values"):
        llamacpp_step_times(tmp_path / "x.gguf", [0, 1])
    with pytest.raises(SpecdecodeError, match="repeats"):
        llamacpp_step_times(tmp_path / "x.gguf", [1], repeats=0)


# -- real runs: llama-cpp-python and SmolLM2-135M installed ------------------------------------


def _prompt(model) -> list[int]:
    return model.tokenizer.encode_prompt("List the planets of the solar system, one per line.", chat=True)


@pytest.mark.slow
def test_llamacpp_greedy_matches_native_start(smollm2):
    from specdecode import Engine
    from specdecode.bench.methods import EngineRunner

    eos = list(smollm2.tokenizer.eos_token_ids)
    runner = build_runner(METHODS["llamacpp"], BenchContext(smollm2, None, eos))
    params = SamplingParams(max_new_tokens=12)
    ids = _prompt(smollm2)
    a = runner.run(ids, params)
    assert a.finish_reason == "length" and a.generated_tokens == 12 and len(a.output_ids) == 12
    assert a.prefill_s > 0 and a.decode_s > 0 and a.total_s >= a.prefill_s + a.decode_s
    assert a.target_passes == 11 and a.decode_tokens == 11
    b = runner.run(ids, params)  # the KV cache is reset: same greedy output, the prompt evaluated again
    assert b.output_ids == a.output_ids
    native = EngineRunner(Engine(smollm2, eos_token_ids=eos)).run(ids, params)
    # A different implementation (Q4_1 blocks, 8-bit activations) may part ways at a near tie,
    # but not on the first tokens of a plain answer.
    assert a.output_ids[:3] == native.output_ids[:3], (a.output_ids, native.output_ids)
    runner.close()


@pytest.mark.slow
def test_llamacpp_stops_at_eos(smollm2):
    eos = list(smollm2.tokenizer.eos_token_ids)
    runner = build_runner(METHODS["llamacpp"], BenchContext(smollm2, None, eos))
    ids = smollm2.tokenizer.encode_prompt("Say just the word yes.", chat=True)
    r = runner.run(ids, SamplingParams(max_new_tokens=64))
    assert r.finish_reason == "stop" and r.generated_tokens == len(r.output_ids) + 1
    assert not set(r.output_ids) & set(eos)
    runner.close()


@pytest.mark.slow
def test_bench_run_with_llamacpp(smollm2, tmp_path):
    from specdecode.bench import BenchConfig, run_bench

    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "Write a Python function that adds two numbers.", "category": "code"}) + "\n")
    results = run_bench(BenchConfig(target="smollm2-135m", methods=["llamacpp"], dataset=str(path), max_new_tokens=8,
                                    warmup=0, threads=2, progress=False, out=str(tmp_path / "out")), target=smollm2)
    assert list(results["methods"]) == ["target", "llamacpp"]
    r = results["prompts"][0]["results"]["llamacpp"]
    assert r["generated_tokens"] == 8 and r["equal_to_target"] in (True, False)


@pytest.mark.slow
def test_step_times_on_smollm2(smollm2):
    t = llamacpp_step_times("smollm2-135m", [4, 1, 2], threads=2, repeats=2, context=16, warmup=1)
    assert sorted(t) == [1, 2, 4] and all(0 < s < 10 for s in t.values())
    samples = llamacpp_step_samples("smollm2-135m", [1, 3], threads=2, repeats=3, context=8, all_logits=False, warmup=0)
    assert sorted(samples) == [1, 3] and all(len(ts) == 3 for ts in samples.values())


@pytest.mark.slow
def test_stepper_times_passes_one_at_a_time(smollm2):
    with LlamaStepper("smollm2-135m", 3, 2, context=8) as stepper:
        assert all(0 < stepper.step(m) < 10 for m in (3, 1, 3))  # rolled back each time: no overflow
        with pytest.raises(SpecdecodeError, match="1..3"):
            stepper.step(4)


@pytest.mark.slow
def test_tm_script_prints_table_and_json(smollm2, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("llamacpp_tm", Path(__file__).parents[1] / "scripts" / "llamacpp_tm.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "tm.json"
    assert script.main(["smollm2-135m", "--threads", "2", "--max-m", "2", "--repeats", "1", "--json", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("llama.cpp T(m)") and lines[3].split()[0] == "1" and lines[4].split()[0] == "2"
    data = json.loads(out.read_text())
    assert set(data["T_s"]) == {"all_logits", "last_logit"} and set(data["T_s"]["all_logits"]) == {"1", "2"}
