"""Stop strings on a text stream.

Stop strings are matched on text, not ids: the same string has many tokenizations and
may span token (and speculative-round) boundaries, so only the decoded text is reliable.
"""

from __future__ import annotations


class StopStringMatcher:
    """Cuts a text stream just before the first stop string.

    ``feed`` emits only text that can no longer turn into a stop string: a tail that is a
    prefix of some stop string is held until the next chunk settles it (or ``flush``
    releases it at the end of generation). Work per chunk is O(len(chunk) * len(stops)).
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]  # "" would match everywhere; treat as no stop
        self._held = ""
        self.stopped = False

    def feed(self, new_text: str) -> tuple[str, bool]:
        """Add streamed text; return (text safe to emit now, whether a stop string was hit).

        On a hit the returned text ends right before the stop string, which is never
        emitted; later calls return ("", True).
        """
        if self.stopped:
            return "", True
        text = self._held + new_text
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return text[: min(hits)], True
        keep = self._partial_match_len(text)
        self._held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        """End of stream: the held tail was not a stop string after all, release it."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_match_len(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best
