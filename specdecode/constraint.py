"""Structured output: a grammar (a JSON schema) that every token of a request must follow.

The grammar engine is llguidance (MIT; llama.cpp and vLLM offer it as a backend too): from the
request's state it gives the set of tokens allowed next, as a bitmask over the vocabulary, and the tokens
forced next (where the grammar allows exactly one continuation). The engine applies the mask to
the target's logits at every position before anything chooses a token, so the constrained
target is simply a different model, and speculation stays exact for it:

- the rows of a verify pass are masked as the target-only run masks each position (the mask at
  draft position i is the grammar's state after the drafts before it), so greedy output is the
  constrained target's token for token, and sampling draws from the constrained distribution;
- a draft is cut at its first token the grammar forbids (the constrained target gives it
  probability 0: it could never be accepted, and leaving it out changes no draw);
- forced tokens are drafted for free, no drafter needed, and are always accepted.

Why llguidance (measured in docs/structured-output.md): a schema is ready in 1-3 ms and a mask
takes tens of microseconds per token on a CPU, with forced tokens and rollback built in and no
dependencies; outlines-core compiles a whole-vocabulary index per schema up front (0.7-6.8 s
here), xgrammar pulls triton and a CUDA torch.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any
from weakref import WeakKeyDictionary

import torch

from .errors import InvalidParameterError, SpecdecodeError, StructuredOutputError

# llguidance's JSON options: the separators json.dumps writes, so a model is held to one
# compact, common layout instead of being free to emit whitespace without end.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}

_BITS = torch.arange(32, dtype=torch.int32)  # unpacks a bitmask word into 32 allowed flags


def _llguidance():
    try:
        import llguidance
        import llguidance.hf
        import llguidance.torch
    except ImportError as e:  # pragma: no cover - a core dependency; a broken install
        raise SpecdecodeError(f"structured output needs llguidance ({e}); run scripts/setup.sh") from None
    return llguidance


def json_schema_grammar(schema: dict[str, Any]) -> str:
    """The llguidance grammar of a JSON schema; InvalidParameterError (a 400) if it is not one."""
    if not isinstance(schema, dict):
        raise InvalidParameterError(f"a JSON schema must be an object, got {type(schema).__name__}")
    try:
        text = json.dumps(schema)  # key order kept: properties are written in the schema's order
    except (TypeError, ValueError) as e:
        raise InvalidParameterError(f"invalid JSON schema: {e}") from None
    return _compiled(text)


@lru_cache(maxsize=256)  # a server sees the same few schemas again and again
def _compiled(schema_json: str) -> str:
    return _validated(lambda llg: llg.LLMatcher.grammar_from_json_schema(schema_json, defaults=JSON_OPTIONS),
                      "JSON schema")


def _validated(build, what: str) -> str:
    """The llguidance grammar `build(llguidance)` makes, checked by llguidance itself; a failure
    either way is an InvalidParameterError ("invalid <what>: ...", a 400)."""
    llg = _llguidance()
    try:
        grammar = build(llg)
    except (ValueError, TypeError) as e:
        raise InvalidParameterError(f"invalid {what}: {' '.join(str(e).split())}") from None
    is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:  # llguidance's message may span lines: one line, as every error of ours
        first = " ".join(messages[0].split()) if messages else "rejected"
        raise InvalidParameterError(f"invalid {what}: {first}")
    return grammar


def lark_grammar(grammar: str) -> str:
    """A grammar in llguidance's Lark dialect, checked; InvalidParameterError (a 400) if it is not one."""
    if not isinstance(grammar, str) or not grammar.strip():
        raise InvalidParameterError("a grammar must be a non-empty string")
    return _checked_lark(grammar)


@lru_cache(maxsize=256)
def _checked_lark(grammar: str) -> str:
    return _validated(lambda llg: llg.grammar_from("lark", grammar), "grammar")


class GrammarVocabulary:
    """llguidance's view of one tokenizer over a model's vocabulary (built once, about 1 s for a
    150k vocabulary; shared by every request on that tokenizer)."""

    _cache: WeakKeyDictionary = WeakKeyDictionary()

    def __init__(self, hf_tokenizer, vocab_size: int, eos_token_ids: list[int]) -> None:
        llg = _llguidance()
        try:
            self.ll = llg.hf.from_tokenizer(hf_tokenizer, n_vocab=vocab_size, eos_token=list(eos_token_ids) or None)
        except ValueError as e:  # a slow (Python) tokenizer
            raise SpecdecodeError(f"structured output needs a fast tokenizer: {e}") from None
        self.vocab_size = vocab_size

    @classmethod
    def of(cls, tokenizer, vocab_size: int, eos_token_ids: list[int]) -> GrammarVocabulary:
        """The cached vocabulary of a specdecode Tokenizer (one per tokenizer and vocabulary size)."""
        per_size = cls._cache.setdefault(tokenizer, {})
        key = (vocab_size, tuple(eos_token_ids))
        if key not in per_size:
            per_size[key] = cls(tokenizer.hf, vocab_size, eos_token_ids)
        return per_size[key]


class Constraint:
    """One request's grammar state. The engine keeps it at the request's text: `advance` with
    every token the request emits; `masks` and `forced` look ahead without moving it."""

    def __init__(self, vocabulary: GrammarVocabulary, grammar: str) -> None:
        llg = _llguidance()
        self._lt = llg.torch
        self.matcher = llg.LLMatcher(vocabulary.ll, grammar, log_level=0)
        self._check()
        self.vocab_size = vocabulary.vocab_size
        self._bitmask = self._lt.allocate_token_bitmask(1, vocabulary.vocab_size)  # (1, ceil(V / 32)) int32

    def _check(self) -> None:
        if self.matcher.is_error():
            raise StructuredOutputError(f"the grammar engine failed: {self.matcher.get_error()}")

    def allowed(self) -> torch.Tensor:
        """(V,) bool: the tokens the grammar allows next."""
        self._lt.fill_next_token_bitmask(self.matcher, self._bitmask)
        words = self._bitmask[0].view(-1, 1)  # (W, 1)
        return ((words >> _BITS) & 1).flatten()[: self.vocab_size].bool()

    def masks(self, draft: list[int]) -> tuple[torch.Tensor, int]:
        """(masks (u + 1, V) bool, u): the allowed tokens at each of the draft's positions and the
        one after, where u is how many of the draft's tokens the grammar allows in a row (the draft
        is cut there). The state is left where it was."""
        rows = [self.allowed()]
        used = 0
        for token in draft:
            if self.matcher.is_stopped() or not bool(rows[-1][token]):
                break  # (once the grammar is complete only the end of text follows: the target's to draw)
            if not self.matcher.consume_token(token):
                self._check()
                break
            used += 1
            rows.append(self.allowed())
        if used and not self.matcher.rollback(used):
            self._check()
        return torch.stack(rows), used

    def push(self, token: int) -> bool:
        """Move the state past `token` for a look-ahead (undo with `pop`); False, and no move, where
        the grammar is complete or forbids it."""
        if self.matcher.is_stopped() or not self.matcher.consume_token(token):
            self._check()
            return False
        return True

    def pop(self, n: int) -> None:
        """Undo the last n `push`es."""
        if n and not self.matcher.rollback(n):
            self._check()

    def forced(self, limit: int) -> list[int]:
        """Up to `limit` tokens the grammar forces next (the only continuation it allows)."""
        if limit <= 0 or self.matcher.is_stopped():
            return []
        return list(self.matcher.compute_ff_tokens())[:limit]

    def advance(self, tokens: list[int]) -> None:
        """The request emitted `tokens` (each allowed where it was drawn). Past the grammar's end
        only an end-of-text token can have been drawn: the text ends there, nothing is consumed."""
        for token in tokens:
            if self.matcher.is_stopped():
                return
            if not self.matcher.consume_token(token):
                self._check()
                raise StructuredOutputError(f"the grammar refused token {token} it had allowed")


def constrain(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """logits (n, V) with every token not allowed (allowed (n, V) bool) set to -inf."""
    return logits.masked_fill(~allowed.to(logits.device), float("-inf"))
