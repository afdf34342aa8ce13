"""One GGUF product timed alone, the weights hot in cache: y = x @ W.T for a random Q4_K / Q6_K
layer (the test suite's random blocks) at m = 1, 4, 8 rows, on one kernel path and thread count.
Medians of 9 rounds of 50 calls. Run from the repository root:

    .venv/bin/python docs/benchmarks/cpu-avx512bf16-zen4-kquant-acts/products.py [threads] [isa]

isa: 0 scalar, 1 AVX2, 2 AVX-512 (default: the machine's best). To compare two commits, run it in
a worktree of each, in turns (the extension of one commit is one module per process).
"""

import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
from specdecode.kernels import build  # noqa: E402
from test_gguf_kernels import activations, layer_for  # noqa: E402

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
ext = build.extension()
isa = int(sys.argv[2]) if len(sys.argv) > 2 else build.active_isa()
for name, N, K in (("Q4_K", 2048, 1536), ("Q6_K", 2048, 1536), ("Q4_K", 8960 * 3, 1536)):
    layer, _ = layer_for(name, N, K)
    spec = [layer.spec()]
    times = []
    for m in (1, 4, 8):
        x = activations(m, K).float().contiguous()
        for _ in range(20):
            ext.linear(x, spec, isa, torch.float32)
        rounds = []
        for _ in range(9):
            t = time.perf_counter()
            for _ in range(50):
                ext.linear(x, spec, isa, torch.float32)
            rounds.append((time.perf_counter() - t) / 50 * 1e6)
        times.append(f"m={m} {sorted(rounds)[4]:.1f} us")
    print(name, f"{N}x{K}", *times)
