"""Tokenizer wrapper (prompt -> ids) and a streaming detokenizer (ids -> text, incrementally).

Everything text-related sits behind this one seam so that the engine only ever sees ids,
and the CLI, server and bench all stream text the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from specdecode.errors import SpecdecodeError

Messages = list[dict[str, Any]]

# What a byte-level / byte-fallback decoder prints for an incomplete UTF-8 sequence.
_REPLACEMENT = "\ufffd"

# Tokens of prompt context used to seed a detokenizer (same constant as vLLM): enough for
# a SentencePiece word boundary to decode as it does inside the full text.
_CONTEXT_TOKENS = 5


class Tokenizer:
    """A transformers tokenizer plus the few decisions generation needs made once.

    Decoding always skips special tokens and never applies the legacy BERT-era
    ``clean_up_tokenization_spaces`` (it rewrites " ." to "." and would make a streamed
    text differ from the full decode).
    """

    def __init__(self, hf_tokenizer: PreTrainedTokenizerBase, eos_token_ids: list[int]) -> None:
        self.hf = hf_tokenizer
        self.eos_token_ids = list(eos_token_ids)

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce (base vocab + added tokens).

        May be smaller than the model's embedding rows (Qwen pads 151665 -> 151936).
        """
        return len(self.hf)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.hf, "chat_template", None))

    def encode(self, text: str) -> list[int]:
        """Raw text -> ids, with BOS only where the tokenizer adds it by default."""
        return list(self.hf.encode(text))

    def encode_prompt(self, prompt: str | Messages, chat: bool | None = None) -> list[int]:
        """Prompt -> ids; instruct models get their chat template unless ``chat=False``.

        A plain string becomes one user message. The rendered template already holds any
        BOS the model wants, so it is encoded without adding special tokens again (a
        doubled BOS measurably hurts Llama-family outputs).
        """
        use_chat = self.has_chat_template if chat is None else chat
        if isinstance(prompt, str) and not use_chat:
            return self.encode(prompt)
        if not self.has_chat_template:
            what = "chat=True" if isinstance(prompt, str) else "a list of chat messages"
            raise SpecdecodeError(f"{what} needs a chat template and this tokenizer has none; "
                                  "pass a plain string prompt")
        if not use_chat:
            raise SpecdecodeError("chat=False needs a plain string prompt, not a list of chat messages")
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        _check_messages(messages)
        text = self.hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text, special tokens (e.g. <|im_end|>) dropped."""
        return self.hf.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def detokenizer(self, context_ids: Sequence[int] = ()) -> StreamingDetokenizer:
        """A fresh streaming detokenizer.

        ``context_ids`` (usually the prompt) are not emitted; they only make the first
        generated token decode as it would after them, e.g. SentencePiece's "▁Paris" ->
        " Paris" rather than "Paris" for a completion of "The capital is".
        """
        return StreamingDetokenizer(self, context_ids)


def _check_messages(messages: Messages) -> None:
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise SpecdecodeError(f"each chat message needs 'role' and 'content', got {m!r}")


class StreamingDetokenizer:
    """Ids in, finished text out, one small window at a time.

    The incremental scheme of vLLM / TGI: keep a window ``ids[prefix:]`` whose first part
    ``ids[prefix:read]`` has already been emitted, decode the window and emit what follows
    the decoded prefix. Decoding a window (not a single token) keeps SentencePiece spaces
    and multi-token characters right; dropping ids before ``prefix`` keeps each step O(1).
    Text ending in U+FFFD is an unfinished UTF-8 character and is held until completed.
    Offsets only advance at such completed boundaries, so a window never starts mid-character.

    Invariant: the concatenation of every ``add`` and the final ``flush`` equals
    ``tokenizer.decode(all_ids)`` (after ``context_ids``: equals the text that the new ids
    add to the decoded context). One exception, for invalid UTF-8 only: SentencePiece's
    ByteFallback turns a whole run of <0xNN> tokens into U+FFFDs once the run proves
    invalid, retroactively, so text already streamed may differ from the full decode.
    """

    def __init__(self, tokenizer: Tokenizer, context_ids: Sequence[int] = ()) -> None:
        self._tok = tokenizer
        self._ids: list[int] = list(context_ids)[-_CONTEXT_TOKENS:]  # the window
        self._read = len(self._ids)  # ids[:read] are already emitted (or context)
        self._prefix_text = tokenizer.decode(self._ids)
        # A context ending mid-character: its tail is pending, the new ids will finish it.
        while self._read and self._prefix_text.endswith(_REPLACEMENT):
            self._read -= 1
            self._prefix_text = tokenizer.decode(self._ids[: self._read])

    def add(self, token_ids: Sequence[int]) -> str:
        """Append ids; return the text they complete ("" while a character is unfinished)."""
        if not token_ids:
            return ""
        self._ids.extend(token_ids)
        text = self._tok.decode(self._ids)
        if len(text) <= len(self._prefix_text) or text.endswith(_REPLACEMENT):
            return ""
        return self._advance(text)

    def flush(self) -> str:
        """Emit whatever is held back (an unfinished character comes out as U+FFFD)."""
        if self._read == len(self._ids):
            return ""
        text = self._tok.decode(self._ids)
        return self._advance(text) if len(text) > len(self._prefix_text) else ""

    def _advance(self, text: str) -> str:
        new_text = text[len(self._prefix_text):]
        # The new window starts at the old read offset: what was just emitted is the context.
        self._ids = self._ids[self._read:]
        self._read = len(self._ids)
        self._prefix_text = self._tok.decode(self._ids)
        return new_text
