"""Stop strings on a streamed text: cut before the stop, hold only what could still match."""

from __future__ import annotations

import random

import pytest

from specdecode.stopping import StopStringMatcher


def _run(stops: list[str], chunks: list[str]) -> tuple[str, bool]:
    m = StopStringMatcher(stops)
    out = []
    for c in chunks:
        text, hit = m.feed(c)
        out.append(text)
        if hit:
            return "".join(out), True
    return "".join(out) + m.flush(), False


def test_stop_inside_one_chunk() -> None:
    assert _run(["END"], ["abc END def"]) == ("abc ", True)


def test_stop_spanning_chunks() -> None:
    assert _run(["\n\nUser:"], ["Hi there.\n", "\nUs", "er", ": more"]) == ("Hi there.", True)


def test_held_prefix_is_released_when_it_is_not_a_stop() -> None:
    m = StopStringMatcher(["STOP"])
    assert m.feed("go ST") == ("go ", False)  # "ST" could start STOP
    assert m.feed("ART") == ("START", False)
    assert m.feed("ok STO") == ("ok ", False)
    assert m.flush() == "STO"  # the stream ended: it never became a stop
    assert m.flush() == ""


def test_earliest_of_several_stops_wins() -> None:
    assert _run(["world", "lo w"], ["hel", "lo wor", "ld"]) == ("hel", True)
    assert _run(["</s>", "\n"], ["a\nb</s>"]) == ("a", True)


def test_after_a_hit_nothing_more_is_emitted() -> None:
    m = StopStringMatcher(["x"])
    assert m.feed("abxcd") == ("ab", True)
    assert m.feed("more") == ("", True)
    assert m.flush() == ""


def test_no_stops_passes_everything_through() -> None:
    m = StopStringMatcher([""])
    assert m.feed("anything") == ("anything", False)
    assert m.flush() == ""


def test_overlapping_prefix_holds_only_what_can_match() -> None:
    m = StopStringMatcher(["aab"])
    assert m.feed("aaa") == ("a", False)  # only "aa" can still start "aab"
    assert m.feed("b") == ("", True)  # the stop began at the second "a"


@pytest.mark.parametrize("seed", range(20))
def test_random_chunking_matches_whole_text(seed: int) -> None:
    """However the text is cut into chunks, the result is that of the whole text at once."""
    rng = random.Random(seed)
    text = "".join(rng.choice("ab\n今😀") for _ in range(60))
    stops = ["".join(rng.choice("ab\n今😀") for _ in range(rng.randint(2, 4))) for _ in range(2)]
    cuts = sorted(rng.sample(range(1, len(text)), 10))
    chunks = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    expected = (text[: min(hits)], True) if hits else (text, False)
    assert _run(stops, chunks) == expected
