"""Configuration dataclasses: the model's shape (ModelArgs) and how to sample (SamplingParams)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidParameterError

SUPPORTED_ARCHS = ("llama", "qwen2", "mistral")


def hf_rope_theta(config: dict[str, Any]) -> float | None:
    """A Hugging Face config's RoPE base: `rope_theta` at the top level, else inside
    `rope_parameters` (transformers 5) or `rope_scaling`; None where it names none."""
    if config.get("rope_theta") is not None:
        return config["rope_theta"]
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    return rope.get("rope_theta") if isinstance(rope, dict) else None


@dataclass
class ModelArgs:
    """Shape of a Llama-family decoder. Built from a HF config dict or GGUF metadata."""

    arch: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    head_dim: int | None = None
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v projections carry a bias (qwen2)

    def __post_init__(self) -> None:
        if self.arch not in SUPPORTED_ARCHS:
            raise ValueError(f"unsupported architecture {self.arch!r}; supported: {', '.join(SUPPORTED_ARCHS)}")
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> "ModelArgs":
        """Tolerant constructor: unknown keys are ignored, the architecture comes from model_type."""
        arch = config.get("model_type", "llama")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in config.items() if k in known and v is not None}
        kwargs["arch"] = arch
        if "attention_bias" not in config:
            kwargs["attention_bias"] = arch == "qwen2"
        theta = hf_rope_theta(config)
        if theta is not None:
            kwargs["rope_theta"] = theta
        if not kwargs.get("num_key_value_heads"):
            kwargs["num_key_value_heads"] = kwargs.get("num_attention_heads", cls.num_attention_heads)
        return cls(**kwargs)

    def to_hf_config(self) -> dict[str, Any]:
        """The matching transformers config dict (used to cache converted models as HF dirs)."""
        d = dataclasses.asdict(self)
        d["model_type"] = d.pop("arch")
        d["architectures"] = [
            {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}[self.arch]
        ]
        if self.arch != "llama" and self.arch != "mistral":
            d.pop("attention_bias")
        return d


@dataclass
class SamplingParams:
    """How the next token is chosen. temperature == 0 means greedy (argmax)."""

    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    max_new_tokens: int = 128
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    # Structured output: every token follows this JSON schema ({"type": "object"}: any JSON
    # object); speculation stays exact for the constrained target (specdecode/constraint.py).
    json_schema: dict[str, Any] | None = None
    # The target's log-probability of each emitted token (specdecode/logprobs.py), with this many
    # most likely alternatives (0..20); None: none.
    logprobs: int | None = None
    # OpenAI's penalties (-2..2) on tokens already in the output, and logit_bias ({token id:
    # -100..100} added to its logit); the adjusted target is what speculation preserves
    # (specdecode/logit_adjust.py).
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    # A grammar in llguidance's Lark dialect every token must follow (tool calls use it;
    # json_schema is the common case); not both.
    grammar: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.validate()

    def validate(self) -> None:
        """Raise InvalidParameterError (a SpecdecodeError and a ValueError) with a one-line message."""
        # NaN and inf pass a plain `< 0` check and would turn every probability into NaN.
        if not isinstance(self.temperature, (int, float)) or not 0 <= self.temperature < math.inf:
            raise InvalidParameterError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise InvalidParameterError(f"top_k must be an integer >= 0, got {self.top_k}")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise InvalidParameterError(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise InvalidParameterError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise InvalidParameterError("stop strings must be non-empty strings")
        if self.json_schema is not None and not isinstance(self.json_schema, dict):
            raise InvalidParameterError(f"json_schema must be a JSON object (a dict), got {type(self.json_schema).__name__}")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or isinstance(self.logprobs, bool)
                                          or not 0 <= self.logprobs <= 20):
            raise InvalidParameterError(f"logprobs must be an integer in 0..20 (alternatives per token), got {self.logprobs!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not -(2**63) <= self.seed < 2**64):  # what a torch.Generator takes
            raise InvalidParameterError(f"seed must be an integer that fits in 64 bits, got {self.seed!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not -2.0 <= v <= 2.0:
                raise InvalidParameterError(f"{name} must be a number in [-2, 2], got {v!r}")
        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, dict):
                raise InvalidParameterError("logit_bias must map token ids to biases")
            for token, bias in self.logit_bias.items():
                if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                    raise InvalidParameterError(f"logit_bias keys must be token ids (integers >= 0), got {token!r}")
                if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -100.0 <= bias <= 100.0:
                    raise InvalidParameterError(f"logit_bias values must be numbers in [-100, 100], got {bias!r}")
        if self.grammar is not None and (not isinstance(self.grammar, str) or not self.grammar.strip()):
            raise InvalidParameterError("grammar must be a non-empty string (llguidance's Lark syntax)")
        if self.grammar is not None and self.json_schema is not None:
            raise InvalidParameterError("give json_schema or grammar, not both")
        if (self.json_schema is not None or self.grammar is not None) and self.ignore_eos:
            raise InvalidParameterError("ignore_eos cannot be combined with json_schema or a grammar: the answer ends where the grammar does")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
