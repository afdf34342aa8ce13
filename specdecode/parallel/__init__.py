"""Tensor parallelism of the native target over torch.distributed (docs/scale-out.md).

Launch with torchrun, one process per rank: `torchrun --nproc-per-node N -m specdecode generate
... --tp N` (or `serve`). Each rank holds 1/N of the target's attention heads, MLP columns and
vocabulary (shard.py), the drafter is replicated, and rank 0 decides what a rank would otherwise
decide alone (seeds, timed pass costs: tp.py).
"""

from .load import load_sharded
from .shard import (RowParallelLinear, VocabParallelEmbedding, VocabParallelHead, build_sharded, parallelize,
                    shard_args, shard_plan)
from .tp import (DEFAULT_TIMEOUT_S, TensorParallelError, TPGroup, agree_cost_model, agree_seed,
                 init_tensor_parallel)

__all__ = [
    "DEFAULT_TIMEOUT_S", "TPGroup", "TensorParallelError", "init_tensor_parallel", "agree_seed", "agree_cost_model",
    "load_sharded", "build_sharded", "parallelize", "shard_args", "shard_plan",
    "RowParallelLinear", "VocabParallelEmbedding", "VocabParallelHead",
]
