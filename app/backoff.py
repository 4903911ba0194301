"""Waits that double: the one backoff rule of loadbay (DeTrack requests, the dispatch outbox,
files that wait, ERP pulls).

Written here rather than taken from a retry library because every caller keeps its own state (a
request's history, an outbox row's attempts, a file's streak, a pull's schedule) and only needs
the arithmetic: a library's decorators and loops would not fit four places that wait differently.
"""

from __future__ import annotations

import random


def doubling(attempt: int, *, longest: float, first: float = 1.0, jitter: float = 0.0) -> float:
    """The wait before retry number `attempt` (1 is the first retry): `first`, doubling each time,
    at most `longest`, plus up to `jitter` seconds at random so that many waiters spread out."""
    if attempt < 1:
        return 0.0
    # min() before the power would overflow: 2 ** 10_000 is fine for ints, not for floats.
    wait: float = min(longest, first * 2.0 ** min(attempt - 1, 64))
    return wait + (random.uniform(0, jitter) if jitter else 0.0)


class Doubling:
    """A running wait: each `next()` returns the current wait and doubles it, up to `longest`;
    `reset()` starts again from `first`."""

    def __init__(self, *, longest: float, first: float = 1.0) -> None:
        self.first = min(first, longest)
        self.longest = longest
        self._attempt = 0

    def next(self) -> float:
        """The wait now; the next one is twice as long (at most `longest`)."""
        self._attempt += 1
        return doubling(self._attempt, longest=self.longest, first=self.first)

    def reset(self) -> None:
        """Start again from `first` (the thing waited for happened)."""
        self._attempt = 0
