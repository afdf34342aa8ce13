"""The tensor-parallel process group: forming it from torchrun's environment, its collectives
(timed, and turned into one clear error when a rank is lost), and the few agreements the ranks
need besides the model's own collectives (a sampling seed, the cost model, JSON messages).

Every rank runs the same command on the same inputs: the engine, the drafter and the sampler
are replicated, and the only cross-rank traffic of a pass is inside the model's forward
(parallel/shard.py). Whatever a rank would otherwise decide by itself (a random seed, timed pass
costs) is decided by rank 0 and broadcast, so all ranks take the same branch every round.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import torch

from ..errors import SpecdecodeError

DEFAULT_TIMEOUT_S = 60.0
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class TensorParallelError(SpecdecodeError):
    """The tensor-parallel group could not form, or a rank was lost (died, hung past the timeout)."""


def rank_lost(exc: BaseException, rank: int) -> TensorParallelError:
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    detail = re.sub(r"^\[[^\]]*\]\s*", "", detail).split(". This is typically")[0][:200]  # gloo's source location
    return TensorParallelError(f"tensor-parallel rank lost (rank {rank}: {type(exc).__name__}: {detail})")


@dataclass
class TPGroup:
    """This process's place in a tensor-parallel group, and its collectives.

    comm_seconds / comm_calls / comm_bytes count the model's collectives (all-reduce, all-gather)
    since the group formed: what tensor parallelism costs on top of the sharded compute. On CUDA
    they time the launch only unless `sync_timing` is set (then each collective is waited for).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    timeout_s: float
    control: Any = None  # a gloo group for JSON messages (CPU tensors, also next to NCCL); None = default group
    comm_seconds: float = 0.0
    comm_calls: int = 0
    comm_bytes: int = 0
    sync_timing: bool = False
    _lost: TensorParallelError | None = field(default=None, repr=False)

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def reset_counters(self) -> None:
        self.comm_seconds, self.comm_calls, self.comm_bytes = 0.0, 0, 0

    def _run(self, fn, *args, timed: bool = True, nbytes: int = 0, **kwargs) -> None:  # noqa: ANN001
        if self._lost is not None:  # a group that lost a rank never works again: fail fast
            raise self._lost
        t0 = time.perf_counter()
        try:
            fn(*args, **kwargs)
            if timed and self.sync_timing and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        except RuntimeError as e:  # torch.distributed's DistError family, gloo's plain RuntimeErrors
            self._lost = rank_lost(e, self.rank)
            raise self._lost from e
        finally:
            if timed:
                self.comm_seconds += time.perf_counter() - t0
                self.comm_calls += 1
                self.comm_bytes += nbytes

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of `x` over the ranks, added in float32 (gloo has no bf16 sum, and fp32 keeps the
        sum of the partial products as exact as one rank's own accumulation), in x's dtype."""
        import torch.distributed as dist

        y = (x if x.dtype == torch.float32 else x.float()).contiguous()
        self._run(dist.all_reduce, y, nbytes=y.numel() * 4)
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def all_gather_last(self, x: torch.Tensor) -> torch.Tensor:
        """(..., n) on every rank -> (..., n * world_size): the ranks' slices side by side, in rank order."""
        import torch.distributed as dist

        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        self._run(dist.all_gather, parts, x, nbytes=x.numel() * x.element_size() * self.world_size)
        return torch.cat(parts, dim=-1)

    def close(self, wait: bool = True) -> None:
        """Leave the group: first (wait=True) let every rank get here, so none closes its connections
        while another still reads them; then destroy it. Idempotent; also run at exit, but a script
        should call it at its end (at interpreter exit gloo sometimes aborts instead)."""
        global _GROUP
        import torch.distributed as dist

        if not dist.is_initialized():
            return
        if wait and self._lost is None:
            try:
                dist.barrier(group=self.control)
            except RuntimeError:  # a rank left early: nothing to wait for
                pass
        dist.destroy_process_group()
        if _GROUP is self:
            _GROUP = None

    def broadcast_json(self, obj: Any = None) -> Any:
        """Rank 0's `obj` on every rank (others pass None): JSON bytes in a uint8 tensor, no pickle."""
        import torch.distributed as dist

        size = torch.zeros(1, dtype=torch.int64)
        if self.leader:
            data = json.dumps(obj, separators=(",", ":")).encode()
            size[0] = len(data)
        self._run(dist.broadcast, size, src=0, group=self.control, timed=False)
        buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8) if self.leader
               else torch.empty(int(size[0]), dtype=torch.uint8))
        self._run(dist.broadcast, buf, src=0, group=self.control, timed=False)
        return obj if self.leader else json.loads(bytes(buf.numpy()).decode())


_GROUP: TPGroup | None = None  # torch.distributed's default group is process-wide; so is this view of it
_JOINED = False


def init_tensor_parallel(tp: int, device: str | torch.device | None = "auto",
                         timeout_s: float = DEFAULT_TIMEOUT_S) -> TPGroup:
    """Join the group torchrun started this process in (env: RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT): gloo on CPU, NCCL on CUDA (device cuda:LOCAL_RANK).

    timeout_s bounds every collective: a rank that hangs that long (or dies: then its peers see
    the closed connection at once) ends the others with TensorParallelError."""
    global _GROUP
    import torch.distributed as dist

    if not isinstance(tp, int) or tp < 1:
        raise SpecdecodeError(f"--tp must be an integer >= 1, got {tp!r}")
    if not 0 < timeout_s < float("inf"):
        raise SpecdecodeError(f"the tensor-parallel timeout must be a positive number of seconds, got {timeout_s}")
    if not dist.is_available():
        raise TensorParallelError("this PyTorch build has no torch.distributed: --tp N > 1 cannot run")
    missing = [k for k in _TORCHRUN_ENV if k not in os.environ]
    if missing:
        argv = sys.argv[1:] if "--tp" in sys.argv else ["COMMAND", "...", "--tp", str(tp)]
        raise TensorParallelError(
            f"--tp {tp} runs one process per rank, started by torchrun ({', '.join(missing)} not set): "
            f"torchrun --nproc-per-node {tp} -m specdecode {' '.join(argv)}")
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if world != tp:
        raise TensorParallelError(f"--tp {tp} but torchrun started {world} processes (WORLD_SIZE); "
                                  f"start {tp} in all (torchrun --nproc-per-node {tp}, or nodes x processes = {tp})")
    if _GROUP is not None and dist.is_initialized():
        return _GROUP
    dev = _rank_device(device, local)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "gloo" and not dist.is_gloo_available():
        raise TensorParallelError("this PyTorch build has no gloo backend: tensor parallelism on CPU needs it")
    if backend == "nccl" and not dist.is_nccl_available():
        raise TensorParallelError("this PyTorch build has no NCCL backend: tensor parallelism on CUDA needs it")
    timeout = timedelta(seconds=timeout_s)
    try:
        if not dist.is_initialized():
            dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout)
        control = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    except (RuntimeError, ValueError) as e:  # the rendezvous timed out, a port is taken, ...
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise TensorParallelError(f"could not form the tensor-parallel group of {world} ranks "
                                  f"(rank {rank}, {backend}): {detail}") from None
    _GROUP = TPGroup(rank, world, local, dev, backend, timeout_s, control)
    atexit.register(_GROUP.close)
    global _JOINED
    _JOINED = True
    return _GROUP


def joined_tensor_parallel() -> bool:
    """Whether this process ever joined a tensor-parallel group (it runs under torchrun)."""
    return _JOINED


def close_tensor_parallel(wait: bool = True) -> None:
    """Leave the tensor-parallel group this process joined, if any (TPGroup.close)."""
    if _GROUP is not None:
        _GROUP.close(wait)


def _rank_device(device: str | torch.device | None, local_rank: int) -> torch.device:
    from ..loader import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    return dev


def agree_seed(group: TPGroup | None, params):  # noqa: ANN001, ANN201 - SamplingParams in and out
    """`params` with a seed every rank shares: its own, or one rank 0 draws (sampling must draw the
    same tokens on every rank, or the ranks' next passes would differ)."""
    if group is None or group.world_size == 1 or params.seed is not None:
        return params
    seed = group.broadcast_json(secrets.randbits(63) if group.leader else None)
    return replace(params, seed=int(seed))


def agree_cost_model(target, drafters, group: TPGroup):  # noqa: ANN001, ANN201 - CostModel
    """The cost model every rank uses: rank 0's figures, broadcast. Timed pass costs differ per
    rank, and a policy that saw other costs would choose other draft lengths, so no rank may use
    its own.

    A sharded model (the target, a self-drafter's quantized copy of it) is timed on all ranks
    together, since its passes are collective, on a fixed schedule of passes (a time budget's
    early stop would fall at different passes on different ranks); rank 0 caches the result on
    disk like a single process's, keyed by the shard's shape and the world size. A replicated
    draft model is timed by rank 0 alone."""
    from .. import cost_model as cm

    costs = {"target": _agreed_pass_costs(target, group)}
    for d in drafters:
        model = getattr(d, "model", None)
        if model is None or not hasattr(model, "new_cache") or d.name in costs:
            continue
        if getattr(model, "tp", None) is not None:
            costs[d.name] = _agreed_pass_costs(model, group, budget_share=0.5)
        elif group.leader:
            costs[d.name] = cm.measure_pass_costs(model, budget_s=0.2)
    payload = group.broadcast_json({k: c.to_dict() for k, c in costs.items()} if group.leader else None)
    out = {}
    for name, d in payload.items():
        c = cm.PassCosts.from_dict(d)
        c.from_cache = name in costs and costs[name].from_cache
        out[name] = c
    target_costs = out.pop("target")
    return cm.CostModel(target_costs, out)


def _agreed_pass_costs(model, group: TPGroup, budget_share: float = 1.0):  # noqa: ANN001, ANN201
    """PassCosts of a sharded model: rank 0's cache entry if it has one, else timed by all ranks."""
    from .. import cost_model as cm

    key = path = None
    cached = None
    if group.leader:
        key = cm.cost_key(model)
        if key is not None:
            key = {**key, "tensor_parallel": group.world_size}
            path = cm.costs_dir() / f"{cm._digest(key)}.json"
            cached = cm._read(path, key)
    hit = group.broadcast_json(cached is not None if group.leader else None)
    if hit:
        return cached if group.leader else cm.PassCosts([0.0])  # only rank 0's figures are used
    t0 = time.perf_counter()
    points, _ = cm.time_passes(model, budget_s=float("inf"), repeats=2 if budget_share >= 1 else 1)
    costs = cm.PassCosts.from_points(points, key=key or {}, measure_seconds=time.perf_counter() - t0)
    if path is not None:
        cm._write(path, costs)
    return costs
