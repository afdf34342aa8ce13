"""Tensor parallelism over torch.distributed (gloo, CPU, 2 processes), against one process.

Each scenario starts 2 ranks as subprocesses of this file (`python tests/test_tp.py SCENARIO
DIR` with torchrun's environment variables set by hand) on tiny random float32 models; the
ranks write what they saw as JSON and the tests compare. Every rank also builds the unsharded
model, so "single process" results come from the same weights in the same process.

Tolerance of the logits: max |tp - single| <= 1e-5 * max |single| (the sharded sums add the
same products in another order: measured 1.6e-6 and 1.8e-6 relative on these models).
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
LOGIT_RTOL = 1e-5
SAMPLES, V_SMALL, LENGTH = 1000, 5, 3


def _distributed_ok() -> str | None:
    try:
        import torch.distributed as dist
    except ImportError:
        return "torch.distributed is not importable"
    if not dist.is_available():
        return "this PyTorch has no torch.distributed"
    if not dist.is_gloo_available():
        return "this PyTorch has no gloo backend"
    return None


pytestmark = pytest.mark.skipif(_distributed_ok() is not None, reason=str(_distributed_ok()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return env


def spawn(commands: list[list[str]], timeout: float) -> list[subprocess.CompletedProcess]:
    """Run one command per rank (rank i gets commands[i]) with torchrun's variables; wait for all."""
    port = free_port()
    procs = [subprocess.Popen(cmd, env=rank_env(r, port), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r, cmd in enumerate(commands)]
    out = []
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=max(deadline - time.monotonic(), 1))
            out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def worker(scenario: str, tmp_path: Path, timeout: float = 60) -> list[dict]:
    cmd = [sys.executable, str(Path(__file__).resolve()), scenario, str(tmp_path)]
    done = spawn([cmd] * WORLD, timeout)
    for r, p in enumerate(done):
        assert p.returncode == 0, f"rank {r} failed ({p.returncode}):\n{p.stderr[-3000:]}"
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]


# -- the ranks' side ----------------------------------------------------------------------------


def _models(arch: str, vocab: int, tie: bool = False, draft_noise: float = 0.05, layers: int = 2):
    import torch

    from specdecode.config import ModelArgs
    from specdecode.loading.tiny import tiny_state_dict
    from specdecode.model import build_transformer
    from specdecode.parallel import build_sharded, init_tensor_parallel
    from specdecode.parallel.shard import dict_getter

    group = init_tensor_parallel(WORLD, "cpu", timeout_s=30)
    args = ModelArgs(arch=arch, vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                     tie_word_embeddings=tie, attention_bias=arch == "qwen2")
    state = tiny_state_dict(args)
    if tie:
        state.pop("lm_head.weight", None)
    single = build_transformer(args, state, dtype=torch.float32)
    copy = {k: v.clone() for k, v in state.items()}
    tp = build_sharded(args, list(copy), dict_getter(copy), group, torch.float32, "cpu")
    draft = build_transformer(args, tiny_state_dict(args, noise=draft_noise), dtype=torch.float32)
    return group, single, tp, draft


def _logits_error(single, tp) -> dict:
    """Relative error of the logits: a prefill, decode steps, a ragged batch of two requests."""
    import torch

    from specdecode.ragged import Segment

    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, single.vocab_size, (1, 40), generator=g)
    pos = torch.arange(40)[None]
    errs = []
    cs, ct = single.new_cache(64), tp.new_cache(64)
    for a, b in ((0, 33), (33, 34), (34, 38), (38, 40)):  # masked prefill, one token, chains
        ls, lt = single(ids[:, a:b], pos[:, a:b], cs), tp(ids[:, a:b], pos[:, a:b], ct)
        assert lt.shape == ls.shape
        errs.append(float((lt - ls).abs().max() / ls.abs().max()))
    segs = lambda m: [Segment(m.new_cache(32), ids[0, :5]), Segment(m.new_cache(32), ids[0, 5:12], 2)]  # noqa: E731
    for ls, lt in zip(single.forward_ragged(segs(single)), tp.forward_ragged(segs(tp))):
        assert lt.shape == ls.shape
        errs.append(float((lt - ls).abs().max() / ls.abs().max()))
    return {"max_rel_err": max(errs), "vocab": tp.vocab_size, "local_kv_heads": tp.args.num_key_value_heads}


def scenario_equivalence(out: Path) -> None:
    """Logits, greedy generations with each drafter, the agreed cost model, collective counters."""
    from specdecode import SamplingParams
    from specdecode.drafters import ModelDrafter, NgramDrafter
    from specdecode.engine import Engine
    from specdecode.parallel import agree_cost_model

    res: dict = {}
    group, single, tp, draft = _models("qwen2", vocab=97)
    res["logits_qwen2"] = _logits_error(single, tp)
    _, single_tied, tp_tied, _ = _models("llama", vocab=101, tie=True)
    res["logits_llama_tied"] = _logits_error(single_tied, tp_tied)

    prompt = [5, 17, 3, 5, 17, 3, 5, 17, 42, 8, 5, 17]
    greedy = SamplingParams(max_new_tokens=24)
    res["greedy_single_target_only"] = Engine(single).generate_ids(prompt, greedy)[0]
    res["greedy_tp_target_only"] = Engine(tp).generate_ids(prompt, greedy)[0]
    for name, make in (("model", lambda: ModelDrafter(draft)), ("ngram", NgramDrafter)):
        for k in (1, 3):
            res[f"greedy_tp_{name}_k{k}"] = Engine(tp, make(), num_draft_tokens=k).generate_ids(prompt, greedy)[0]
    drafters = [ModelDrafter(draft), NgramDrafter()]
    cost = agree_cost_model(tp, drafters, group)
    res["cost_T"] = [cost.T(m) for m in range(1, 17)]
    res["cost_draft"] = [cost.draft("model", m) for m in range(1, 17)]
    auto = Engine(tp, drafters, cost_model=cost)
    group.reset_counters()
    ids, _ = auto.generate_ids(prompt, greedy)
    res["greedy_tp_auto"] = ids
    res["comm_calls"], res["comm_seconds"], res["comm_bytes"] = group.comm_calls, group.comm_seconds, group.comm_bytes
    (out / f"rank{group.rank}.json").write_text(json.dumps(res))


def scenario_sampling(out: Path) -> None:
    """SAMPLES sampled continuations of LENGTH tokens (seeds 0..SAMPLES-1), speculative with a
    noisy draft model, on the TP target and on the single-process target."""
    import torch

    from specdecode import SamplingParams
    from specdecode.drafters import ModelDrafter
    from specdecode.engine import Engine
    from specdecode.sampling import logits_to_probs

    group, single, tp, draft = _models("llama", vocab=V_SMALL, draft_noise=0.5)
    prompt = [1, 3, 1, 3, 1]
    res: dict = {}
    for label, model in (("tp", tp), ("single", single)):
        engine = Engine(model, ModelDrafter(draft), num_draft_tokens=2)
        seqs = []
        for start in range(0, SAMPLES, 125):  # batches: one target pass per round for 125 requests
            states = [engine.start(prompt, SamplingParams(temperature=1.0, max_new_tokens=LENGTH, ignore_eos=True,
                                                          seed=s)) for s in range(start, start + 125)]
            got = [[] for _ in states]
            while any(not s.finished for s in states):
                engine.step(states)
                for g, s in zip(got, states):
                    g.extend(s.new_tokens)
            seqs += got
        res[label] = seqs
    exact = {}
    params = SamplingParams(temperature=1.0)
    for seq in itertools.product(range(V_SMALL), repeat=LENGTH):
        ids = torch.tensor([prompt + list(seq)])
        logits = single(ids, torch.arange(ids.shape[1])[None], single.new_cache(16))[0]
        dist = logits_to_probs(logits[len(prompt) - 1 : -1], params)  # (LENGTH, V)
        exact["".join(map(str, seq))] = float(torch.prod(dist[torch.arange(LENGTH), torch.tensor(seq)]))
    res["exact"] = exact
    (out / f"rank{group.rank}.json").write_text(json.dumps(res))


def scenario_join_and_die(out: Path) -> None:
    """Join, take part in rank 0's first exchange (the prompt and seed), then vanish (a crash)."""
    from specdecode.parallel import init_tensor_parallel

    init_tensor_parallel(WORLD, "cpu", timeout_s=60).broadcast_json()  # rank 0 loads meanwhile
    os._exit(1)


def scenario_join_and_hang(out: Path) -> None:
    """Join, take part in rank 0's first exchange, then never answer again (a hung rank)."""
    from specdecode.parallel import init_tensor_parallel

    init_tensor_parallel(WORLD, "cpu", timeout_s=60).broadcast_json()  # rank 0 loads meanwhile
    time.sleep(120)


# -- the tests ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def equivalence(tmp_path_factory):
    return worker("equivalence", tmp_path_factory.mktemp("tp_eq"))


def test_tp_logits_equal_single_process(equivalence):
    for r in equivalence:
        for case in ("logits_qwen2", "logits_llama_tied"):
            assert r[case]["max_rel_err"] <= LOGIT_RTOL, (case, r[case])
        assert r["logits_qwen2"]["vocab"] == 97 and r["logits_qwen2"]["local_kv_heads"] == 1
    assert equivalence[0]["logits_qwen2"] == equivalence[1]["logits_qwen2"]  # every rank sees the same logits


def test_tp_greedy_equals_single_process_with_each_drafter(equivalence):
    ref = equivalence[0]["greedy_single_target_only"]
    assert len(ref) == 24
    for r in equivalence:
        for key in [k for k in r if k.startswith("greedy_tp_")]:
            assert r[key] == ref, key


def test_tp_ranks_agree_on_cost_model_and_count_collectives(equivalence):
    r0, r1 = equivalence
    assert r0["cost_T"] == r1["cost_T"] and r0["cost_draft"] == r1["cost_draft"]
    assert all(t > 0 for t in r0["cost_T"])
    # per target pass: 2 all-reduces per layer (2 layers) + the embedding's, and the logits' all-gather
    assert r0["comm_calls"] == r1["comm_calls"] > 0 and r0["comm_calls"] % 6 == 0
    assert r0["comm_seconds"] > 0 and r0["comm_bytes"] > 0


def test_tp_sampling_follows_target_distribution(tmp_path):
    import numpy as np
    from scipy import stats as st

    r0, r1 = worker("sampling", tmp_path, timeout=90)
    assert r0["tp"] == r1["tp"], "the ranks sampled different tokens"
    seqs = ["".join(map(str, s)) for s in r0["tp"]]
    assert all(len(s) == LENGTH for s in seqs)
    same = sum(a == b for a, b in zip(r0["tp"], r0["single"])) / SAMPLES
    assert same >= 0.98, f"only {same:.3f} of the seeded samples equal the single process's"
    exact = r0["exact"]
    counts = {k: 0 for k in exact}
    for s in seqs:
        counts[s] += 1
    cells = sorted(exact, key=exact.get, reverse=True)
    obs, exp, pooled_o, pooled_e = [], [], 0, 0.0
    for c in cells:
        e = exact[c] * SAMPLES
        if e >= 5:
            obs.append(counts[c])
            exp.append(e)
        else:
            pooled_o += counts[c]
            pooled_e += e
    if pooled_e > 0:
        obs.append(pooled_o)
        exp.append(pooled_e)
    exp = np.array(exp) * (sum(obs) / sum(exp))
    assert len(obs) >= 5
    p = st.chisquare(obs, exp).pvalue
    assert p > 1e-4, f"chi-square p = {p:.2e} over {len(obs)} cells"


def _cli_rank0(timeout: float) -> list[str]:
    return [sys.executable, "-m", "specdecode", "generate", "hello there", "--model", "tiny-random", "--tp", "2",
            "--tp-timeout", str(timeout), "--device", "cpu", "--dtype", "float32", "--threads", "1",
            "--drafter", "ngram", "-k", "2", "-n", "8"]


@pytest.mark.parametrize("fate", ["die", "hang"])
def test_lost_rank_ends_rank0_with_clear_error(tmp_path, fate):
    """Rank 1 joins and then dies (or hangs): rank 0, in the CLI, exits non-zero with a one-line
    error within the timeout (10 s) instead of waiting for ever."""
    rank1 = [sys.executable, str(Path(__file__).resolve()), f"join_and_{fate}", str(tmp_path)]
    t0 = time.monotonic()
    port = free_port()
    procs = [subprocess.Popen(cmd, env=rank_env(r, port), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r, cmd in enumerate([_cli_rank0(10), rank1])]
    try:
        _, err = procs[0].communicate(timeout=45)
        elapsed = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert procs[0].returncode not in (0, None), err
    assert "specdecode: error: tensor-parallel rank lost (" in err, err[-2000:]
    assert "Traceback" not in err
    assert elapsed < 40


def test_tp_needs_torchrun_and_matching_world_size():
    from specdecode.cli import main

    env = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
           if k in os.environ}
    try:
        from specdecode.parallel import TensorParallelError, init_tensor_parallel

        with pytest.raises(TensorParallelError, match="torchrun --nproc-per-node 2 -m specdecode"):
            init_tensor_parallel(2, "cpu")
        os.environ.update(RANK="0", WORLD_SIZE="3", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="1")
        with pytest.raises(TensorParallelError, match="--tp 2 but torchrun started 3 processes"):
            init_tensor_parallel(2, "cpu")
        assert main(["generate", "x", "--model", "tiny-random", "--tp", "0"]) == 2
    finally:
        for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            os.environ.pop(k, None)
        os.environ.update(env)


def test_shard_plan_refuses_indivisible_heads():
    from specdecode.config import ModelArgs
    from specdecode.errors import SpecdecodeError
    from specdecode.parallel import shard_args, shard_plan

    args = ModelArgs(vocab_size=11, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                     num_attention_heads=4, num_key_value_heads=2)
    local = shard_args(args, 2)
    assert (local.num_attention_heads, local.num_key_value_heads, local.intermediate_size, local.head_dim,
            local.vocab_size) == (2, 1, 48, 16, 6)
    plan = shard_plan(args, 1, 2)
    assert plan["model.embed_tokens.weight"] == (0, 6, 11, 6)  # the last slice: 5 rows, padded to 6
    assert plan["model.layers.0.self_attn.k_proj.weight"] == (0, 16, 32, 16)
    assert plan["model.layers.0.self_attn.o_proj.weight"] == (1, 32, 64, 0)
    with pytest.raises(SpecdecodeError, match="key/value heads = 2 is not divisible by 4"):
        shard_args(args, 4)


def test_torchrun_generate_end_to_end():
    """`torchrun --nproc-per-node 2 -m specdecode generate ... --tp 2` prints what one process
    prints (float32, greedy, the default drafter: n-gram with the agreed cost model)."""
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this Python")
    common = ["generate", "def add(x, y):", "--model", "tiny-random", "--device", "cpu", "--dtype", "float32",
              "--threads", "1", "-n", "8", "--raw"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "specdecode", *common], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert single.returncode == 0, single.stderr
    tp = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "specdecode", *common,
                         "--tp", "2"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert tp.returncode == 0, tp.stderr[-3000:]
    assert tp.stdout == single.stdout  # rank 0 prints the text once; rank 1 is silent
    assert single.stdout.strip()


def wait_healthy(httpx, proc: subprocess.Popen, url: str, timeout: float, output) -> None:  # noqa: ANN001
    """Until `url`/health answers 200; fails with the server's output if `proc` exits first."""
    deadline = time.time() + timeout
    while True:
        assert proc.poll() is None, output()[-3000:]
        try:
            if httpx.get(url + "/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.time() < deadline, "the tensor-parallel server did not come up"
        time.sleep(0.3)


def test_torchrun_serve_end_to_end():
    """`torchrun ... serve --tp 2`: rank 0 answers HTTP, rank 1 replays its engine calls; a batch of
    concurrent greedy requests gets the single-process texts, and a request after an idle spell
    longer than the timeout still works (the leader's heartbeat keeps the followers waiting)."""
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this Python")
    from concurrent.futures import ThreadPoolExecutor

    import specdecode

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "specdecode", "serve",
                             "--model", "tiny-random", "--tp", "2", "--tp-timeout", "6", "--device", "cpu", "--dtype",
                             "float32", "--threads", "1", "--drafter", "ngram", "--port", str(port), "--log-level",
                             "warning"], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    prompts = ["def add(x, y):", "hello there, the weather", "for i in range(10):"]
    try:
        engine = specdecode.Engine(specdecode.load("tiny-random", dtype="float32", device="cpu"))
        expected = [engine.generate(p, max_new_tokens=8, chat=False).text for p in prompts]
        wait_healthy(httpx, proc, url, 90, lambda: proc.stdout.read())

        def complete(prompt: str) -> str:
            body = {"model": "tiny-random", "prompt": prompt, "max_tokens": 8, "temperature": 0}
            r = httpx.post(url + "/v1/completions", json=body, timeout=60)
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["text"]

        with ThreadPoolExecutor(3) as pool:
            assert list(pool.map(complete, prompts)) == expected
        time.sleep(7)  # idle past --tp-timeout 6
        assert complete(prompts[0]) == expected[0]
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_serve_leader_exits_when_follower_dies():
    """serve --tp 2 with rank 1 killed: the next request fails, and rank 0 shuts down with the
    rank-lost error and a non-zero status instead of serving failures or hanging."""
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    port, http = free_port(), free_port()
    cmd = [sys.executable, "-m", "specdecode", "serve", "--model", "tiny-random", "--tp", "2", "--tp-timeout", "10",
           "--device", "cpu", "--dtype", "float32", "--threads", "1", "--drafter", "ngram", "-k", "2",
           "--port", str(http), "--log-level", "warning", "--shutdown-timeout", "1"]
    procs = [subprocess.Popen(cmd, env=rank_env(r, port), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in range(WORLD)]
    url = f"http://127.0.0.1:{http}"
    try:
        wait_healthy(httpx, procs[0], url, 60, lambda: procs[0].communicate()[1])
        procs[1].kill()
        procs[1].wait()
        body = {"model": "tiny-random", "prompt": "hello", "max_tokens": 8, "temperature": 0}
        try:
            r = httpx.post(url + "/v1/completions", json=body, timeout=30)
            assert r.status_code == 503, r.text
        except httpx.TransportError:
            pass  # the server may already be closing
        _, err = procs[0].communicate(timeout=30)
        assert procs[0].returncode not in (0, None)
        assert "specdecode: error: tensor-parallel rank lost (" in err, err[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


SCENARIOS = {"equivalence": scenario_equivalence, "sampling": scenario_sampling,
             "join_and_die": scenario_join_and_die, "join_and_hang": scenario_join_and_hang}

if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    SCENARIOS[sys.argv[1]](Path(sys.argv[2]))
    # Leave the group before the interpreter exits, as the CLI does: left to the atexit hook, gloo
    # sometimes aborted a rank at exit ("terminate called without an active exception", -6) after
    # it had written its results, and the test failed on that.
    from specdecode.parallel.tp import close_tensor_parallel

    close_tensor_parallel()
    # Even so, on a loaded machine gloo's threads still aborted a rank in interpreter teardown
    # after a clean close (-6 again, CI 2026-12-04): the scenario has written its results and
    # left the group, so skip the teardown. A scenario that failed raised before this line.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
