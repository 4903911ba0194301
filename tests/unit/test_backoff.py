from __future__ import annotations

import pytest

from app.backoff import Doubling, doubling


def test_doubling_starts_at_first_and_stops_at_longest() -> None:
    assert [doubling(n, longest=300) for n in range(0, 12)] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert [doubling(n, longest=60, first=0.5) for n in (1, 2, 3, 8, 9)] == [0.5, 1, 2, 60, 60]
    assert doubling(10_000, longest=300) == 300


def test_jitter_adds_at_most_its_amount() -> None:
    waits = [doubling(3, longest=300, jitter=0.5) for _ in range(200)]
    assert all(4 <= w <= 4.5 for w in waits)
    assert len(set(waits)) > 1


def test_a_running_wait_doubles_and_starts_over() -> None:
    wait = Doubling(first=1, longest=8)
    assert [wait.next() for _ in range(6)] == [1, 2, 4, 8, 8, 8]
    wait.reset()
    assert wait.next() == 1


@pytest.mark.parametrize(("first", "longest", "expected"), [(1, 0.25, 0.25), (2, 60, 2)])
def test_first_is_never_above_longest(first: float, longest: float, expected: float) -> None:
    assert Doubling(first=first, longest=longest).next() == expected
