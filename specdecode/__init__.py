"""specdecode: lossless speculative decoding for PyTorch and Hugging Face language models.

    import specdecode
    target = specdecode.load("qwen2.5-coder-1.5b")
    engine = specdecode.Engine(target, drafter=specdecode.load("qwen2.5-coder-0.5b"))
    result = engine.generate("Write a quicksort in Python.", max_new_tokens=128)
"""

from .config import ModelArgs, SamplingParams
from .drafters import Draft, Drafter, ModelDrafter, NgramDrafter
from .engine import Chunk, Engine, GenerationResult
from .errors import SpecdecodeError
from .loader import Model, load
from .metrics import SpecStats
from .policy import AdaptiveK, CostPlanner, FixedK, Planner
from .prefix_cache import PrefixCache

__version__ = "0.1.0"

__all__ = [
    "load", "Model", "Engine", "Chunk", "GenerationResult", "SamplingParams", "ModelArgs", "SpecStats",
    "Drafter", "Draft", "ModelDrafter", "NgramDrafter", "Planner", "FixedK", "AdaptiveK", "CostPlanner",
    "PrefixCache", "SpecdecodeError", "__version__",
]
