"""`specdecode bench`: every method on the same prompts, side by side, with reports.

    from specdecode.bench import BenchConfig, run_bench
    run_bench(BenchConfig(target="qwen2.5-coder-1.5b", draft="qwen2.5-coder-0.5b", limit=5, out="bench_out"))

New methods join through `register_method` (see methods.py).
"""

from .datasets import BenchPrompt, load_prompts
from .harness import BenchConfig, run_bench, select_methods
from .methods import METHODS, BenchContext, EngineRunner, HFGenerateRunner, Method, RunResult, register_method
from .report import write_reports

__all__ = [
    "BenchConfig", "run_bench", "select_methods", "load_prompts", "BenchPrompt", "METHODS", "Method",
    "register_method", "BenchContext", "RunResult", "EngineRunner", "HFGenerateRunner", "write_reports",
]
from . import methods_policy  # noqa: E402,F401 - registers the cost-policy methods (spec-model-k*, spec-auto)
