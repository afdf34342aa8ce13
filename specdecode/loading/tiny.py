"""The short names TINY_NAMES: tiny random models with a real (tiny) tokenizer, built in-process
in about a second instead of loaded from a file.

They let tests, the CLI, the server and the benchmark run end to end with no download:
`specdecode.load("tiny-random")` is a 2-layer llama; `"tiny-random-draft"` is a noisy copy of
it that agrees with it often but not always, like a real draft model. The text is gibberish.
"""

from __future__ import annotations

import torch

from specdecode.config import ModelArgs
from specdecode.model import build_transformer

TINY_NAMES = ("tiny-random", "tiny-random-draft")

_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "def add(x, y):\n    return x + y\n",
    "for i in range(10):\n    print(i)\n",
    "The quick brown fox jumps over the lazy dog. Hello world!",
    "hello there, the weather is nice today. 今天天气很好",
] * 20


def tiny_tokenizer():
    """A 300-token byte-level BPE with a ChatML template (deterministic training)."""
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    )
    raw.train_from_iterator(_CORPUS, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = _CHATML
    return tok


def tiny_args(vocab_size: int, layers: int = 2) -> ModelArgs:
    return ModelArgs(arch="llama", vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                     num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                     max_position_embeddings=2048, rope_theta=10000.0, rms_norm_eps=1e-6)


def tiny_state_dict(args: ModelArgs, noise: float = 0.0) -> dict[str, torch.Tensor]:
    """Random weights from a fixed seed; noise > 0 perturbs them (a draft that mostly agrees)."""
    from specdecode.model import Transformer

    torch.manual_seed(0)
    model = Transformer(args)
    state = {k: v for k, v in model.state_dict().items()}
    g, g_noise = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    for name, w in state.items():
        if w.dim() == 2:
            w = torch.randn(w.shape, generator=g) * 0.5  # sharp logits: greedy paths are stable
        if noise:
            w = w + torch.randn(w.shape, generator=g_noise) * noise * w.std()
        state[name] = w
    return state


def load_tiny(name: str, dtype: torch.dtype, device: torch.device):
    """(Transformer, HF tokenizer, eos ids) for one of TINY_NAMES."""
    tok = tiny_tokenizer()
    args = tiny_args(len(tok))
    state = tiny_state_dict(args, noise=0.02 if name.endswith("draft") else 0.0)
    model = build_transformer(args, state, dtype=dtype, device=device)
    return model, tok, [tok.convert_tokens_to_ids("<|im_end|>")]
