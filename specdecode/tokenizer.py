"""Tokenizer wrapper (prompt -> ids) and a streaming detokenizer (ids -> text, incrementally).

Everything text-related sits behind this one seam so that the engine only ever sees ids,
and the CLI, server and bench all stream text the same way.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Sequence
from functools import cached_property
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from specdecode.errors import SpecdecodeError

Messages = list[dict[str, Any]]

# What a byte-level / byte-fallback decoder prints for an incomplete UTF-8 sequence.
_REPLACEMENT = "\ufffd"

# Tokens of prompt context used to seed a detokenizer (same constant as vLLM): enough for
# a SentencePiece word boundary to decode as it does inside the full text.
_CONTEXT_TOKENS = 5

# An unfinished UTF-8 character has at most 3 bytes: seeing the last 4 always shows its lead byte.
_TAIL_BYTES = 4

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece byte fallback: <0xE4>

# How the decoder turns tokens into bytes, where it is known: "byte_level" (GPT-2 / Qwen / SmolLM:
# each token's characters stand for bytes) or "byte_fallback" (Llama / Mistral: <0xNN> tokens).
ByteScheme = Literal["byte_level", "byte_fallback"]


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte (the table every byte-level BPE uses),
    inverted: character -> byte. Kept here: transformers moves its copy between versions."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _unfinished_bytes(data: bytes) -> int:
    """How many bytes at the end of `data` begin a UTF-8 character without finishing it (0-3).

    Python's incremental decoder keeps exactly those back; invalid bytes it replaces instead, so
    a complete U+FFFD (EF BF BD) or garbage never counts as unfinished."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    decoder.decode(data, final=False)
    return len(decoder.getstate()[0])


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

    def open_user_turn(self, text: str) -> list[int]:
        """Ids of the chat template's start up to a user message that begins with `text` and is
        not finished (system prompt and role header included): a model continuing them writes the
        rest of a user's request (Magpie, Xu et al. 2024)."""
        if not self.has_chat_template:
            raise SpecdecodeError("writing user requests needs a chat template and this tokenizer has none")
        marker = "\u2063specdecode-request\u2063"  # invisible separators: no template rewrites them
        rendered = self.hf.apply_chat_template([{"role": "user", "content": marker}], add_generation_prompt=False,
                                               tokenize=False)
        if marker not in rendered:
            raise SpecdecodeError("this chat template does not show a user message as written")
        return list(self.hf.encode(rendered.split(marker)[0] + text, add_special_tokens=False))

    @property
    def supports_tool_calls(self) -> bool:
        """Whether the chat template renders tools in the Hermes / Qwen2.5 format (specdecode/tools.py),
        the one whose calls we parse."""
        template = getattr(self.hf, "chat_template", None) or ""
        return isinstance(template, str) and "tools" in template and "<tool_call>" in template

    def encode_prompt(self, prompt: str | Messages, chat: bool | None = None,
                      tools: list[dict[str, Any]] | None = None) -> list[int]:
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
        if tools and not self.supports_tool_calls:
            raise SpecdecodeError("this model's chat template does not offer tool calls in the <tool_call> format; "
                                  "leave tools out (or use tool_choice \"none\")")
        text = self.hf.apply_chat_template(messages, tools=tools or None, add_generation_prompt=True, tokenize=False)
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text, special tokens (e.g. <|im_end|>) dropped."""
        return self.hf.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def decode_complete(self, ids: Sequence[int]) -> str:
        """`decode(ids)` without an unfinished UTF-8 character at the end (a generation cut by
        max_tokens inside a multi-byte character), instead of the U+FFFD a decoder prints for it.

        A U+FFFD the ids hold as complete bytes (EF BF BD) stays. Where the tokenizer's bytes are
        unknown (neither byte-level nor byte-fallback) the two cannot be told apart, and every
        trailing U+FFFD is taken for an unfinished character and dropped.
        """
        ids = list(ids)
        text = self.decode(ids)
        if not text.endswith(_REPLACEMENT):
            return text
        tail = self._unfinished_tail(ids)
        if tail is None:
            return text.rstrip(_REPLACEMENT)
        cut, straddles = tail
        if cut < len(ids):
            # Decode without the tokens that only hold the unfinished bytes: byte fallback turns a
            # whole invalid run of <0xNN> tokens into U+FFFDs, so trimming the text would not do.
            text = self.decode(ids[:cut])
        if straddles:
            # The last kept token ends with the unfinished bytes after complete characters: a byte-level
            # decoder (from_utf8_lossy / errors="replace") prints exactly one U+FFFD for them.
            text = text[:-1] if text.endswith(_REPLACEMENT) else text
        return text

    def _unfinished_tail(self, ids: list[int]) -> tuple[int, bool] | None:
        """Where an unfinished character at the end of `ids` starts: (cut, straddles), such that
        ids[cut:] hold only its bytes (or decode to nothing), and straddles says whether ids[cut - 1]
        holds some of its bytes too, after complete characters. (len(ids), False) when the bytes end
        on a complete character; None when this tokenizer's bytes are unknown."""
        if self._byte_scheme is None:
            return None
        pieces: list[tuple[int, bytes]] = []  # (index, bytes), last token first
        size = 0
        for i in range(len(ids) - 1, -1, -1):
            if size >= _TAIL_BYTES:
                break
            data = b"" if ids[i] in self._skipped_ids else self._token_bytes(ids[i])
            pieces.append((i, data))
            size += len(data)
        unfinished = _unfinished_bytes(b"".join(data for _, data in reversed(pieces)))
        cut = len(ids)
        for i, data in pieces:
            if unfinished <= 0:
                break
            if len(data) > unfinished:
                return i + 1, True
            unfinished -= len(data)
            cut = i
        return cut, False

    @cached_property
    def _byte_scheme(self) -> ByteScheme | None:
        backend = getattr(self.hf, "backend_tokenizer", None)  # a fast tokenizer's Rust tokenizer
        decoder = getattr(backend, "decoder", None)
        if decoder is None:
            return None
        spec = json.loads(decoder.__getstate__())
        types = {spec.get("type")} | {d.get("type") for d in spec.get("decoders") or ()}
        if "ByteLevel" in types:
            return "byte_level"
        if "ByteFallback" in types:
            return "byte_fallback"
        return None

    @cached_property
    def _byte_alphabet(self) -> dict[str, int]:
        return _byte_level_alphabet()

    @cached_property
    def _skipped_ids(self) -> frozenset[int]:
        # What decode(skip_special_tokens=True) leaves out: the named special tokens, and added
        # tokens marked special (a tokenizer's own, such as <|endoftext|>, that no attribute names).
        added = getattr(self.hf, "added_tokens_decoder", {})
        return frozenset(self.hf.all_special_ids) | {i for i, t in added.items() if getattr(t, "special", False)}

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token adds to the decoded text (logprobs' `bytes`; a special token's name)."""
        return self._token_bytes(token_id)

    def _token_bytes(self, token_id: int) -> bytes:
        """The bytes one token adds to the decoded text, as the tokenizer's decoder makes them."""
        token = self.hf.convert_ids_to_tokens(token_id)
        if token is None:
            return b""
        if self._byte_scheme == "byte_level":
            try:
                return bytes(self._byte_alphabet[c] for c in token)
            except KeyError:  # an added token in plain text: the decoder passes its UTF-8 through
                return token.encode("utf-8")
        match = _BYTE_TOKEN.fullmatch(token)
        return bytes([int(match.group(1), 16)]) if match else token.replace("▁", " ").encode("utf-8")

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
    At the end (``flush``) a character still unfinished (the request stopped inside it) is
    dropped rather than printed as U+FFFD (`Tokenizer.decode_complete`).

    Invariant: the concatenation of every ``add`` and the final ``flush`` equals
    ``tokenizer.decode_complete(all_ids)``: ``tokenizer.decode(all_ids)`` without an unfinished
    last character (after ``context_ids``: the text that the new ids add to the decoded
    context). One exception, for invalid UTF-8 only: SentencePiece's ByteFallback turns a
    whole run of <0xNN> tokens into U+FFFDs once the run proves invalid, retroactively, so
    text already streamed may differ from the full decode.
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
        """Emit whatever is held back, the end of the output: an unfinished last character is
        dropped (a client would see U+FFFD for bytes the model never finished)."""
        if self._read == len(self._ids):
            return ""
        text = self._tok.decode_complete(self._ids)
        return self._advance(text) if len(text) > len(self._prefix_text) else ""

    def _advance(self, text: str) -> str:
        new_text = text[len(self._prefix_text):]
        # The new window starts at the old read offset: what was just emitted is the context.
        self._ids = self._ids[self._read:]
        self._read = len(self._ids)
        self._prefix_text = self._tok.decode(self._ids)
        return new_text
