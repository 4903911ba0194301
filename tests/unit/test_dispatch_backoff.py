"""DeTrack's waits follow app.backoff's one rule: 1 s doubling to at most 300 s, plus up to 0.5 s
of jitter, both within a request (urllib3's retries) and between runs (the outbox)."""

from __future__ import annotations

from urllib3.util.retry import RequestHistory

from services.dispatch.client import Backoff
from services.dispatch.send import retry_delay

SCHEDULE: list[float] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]


def within_jitter(waits: list[float], expected: list[float]) -> bool:
    return len(waits) == len(expected) and all(
        0 <= w - e <= 0.5 for w, e in zip(waits, expected, strict=True)
    )


def test_the_outbox_waits_by_the_attempts_a_row_has_had() -> None:
    waits = [retry_delay(attempts) for attempts in range(1, 12)]

    assert within_jitter(waits, SCHEDULE)
    assert 1 <= retry_delay(0) <= 1.5  # a row is retried after at least one attempt; never sooner
    assert 300 <= retry_delay(10_000) <= 300.5
    assert len({retry_delay(3) for _ in range(50)}) > 1  # jittered


def backoff_after(statuses: list[int | None]) -> float:
    retry = Backoff(total=20, backoff_max=300, backoff_jitter=0.5)
    history = tuple(RequestHistory("POST", "/dn/jobs/bulk", None, status, None) for status in statuses)
    return retry.new(history=history).get_backoff_time()


def test_a_request_waits_by_the_failures_it_has_had() -> None:
    waits = [backoff_after([503] * n) for n in range(1, 12)]

    assert within_jitter(waits, SCHEDULE)
    assert backoff_after([]) == 0.0  # the first try does not wait, not even the jitter
    assert backoff_after([301, 302]) == 0.0  # redirects are not failures
    assert 2 <= backoff_after([429, None]) <= 2.5  # a timeout (no status) counts
    assert 4 <= backoff_after([500, 301, 502, 504]) <= 4.5
