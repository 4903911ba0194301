"""Misbehaviour on demand for the DeTrack stand-in: injected faults and the rate limit.

Planned faults (``fail_next``, ``rate_limit_next``, ``timeout_next``) wait in one queue and are used
one per request, in the order they were planned, so a test can script a sequence such as
"503, then a timeout, then 429". ``fail_every(k)`` fails every k-th request counted from the call,
unless a planned fault already claimed that request.

Timeout modes, both ending with the client's read timeout when ``seconds`` is longer than it:

- ``processed``: the request is handled (a POST creates its jobs) and the answer is held back for
  ``seconds``. This is the dangerous case: the job exists but the client does not know it.
- ``dropped``: nothing is processed; after ``seconds`` the connection is closed without an answer
  (a client that waits longer sees the connection closed).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Literal

TimeoutMode = Literal["processed", "dropped"]
WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour, used by one request."""

    kind: Literal["status", "rate_limit", "processed", "dropped"]
    status: int = 503
    seconds: float = 0.0
    retry_after: int | None = None


class FaultPlan:
    """The faults planned for the coming requests, plus a latency added to every request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Fault] = deque()
        self._every = 0
        self._every_status = 503
        self._seen = 0
        self.latency = 0.0

    def plan(self, fault: Fault, n: int) -> None:
        if fault.kind == "status":
            HTTPStatus(fault.status)  # refuse a status the server could not send
        with self._lock:
            self._queue.extend([fault] * n)

    def fail_every(self, k: int, status: int) -> None:
        HTTPStatus(status)
        with self._lock:
            self._every, self._every_status, self._seen = k, status, 0

    def take(self) -> Fault | None:
        """The fault for the request now being served, if any."""
        with self._lock:
            self._seen += 1
            if self._queue:
                return self._queue.popleft()
            if self._every and self._seen % self._every == 0:
                return Fault("status", self._every_status)
            return None

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self._every = self._seen = 0
            self.latency = 0.0


class SlidingWindow:
    """Requests admitted in the last 60 seconds; a request at ``t`` counts while ``now - t < 60``."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._times: deque[float] = deque()

    def admit(self, limit: int | None) -> float | None:
        """Count one request and return None, or, over ``limit``, the seconds until one would fit."""
        with self._lock:
            now = self._clock()
            while self._times and now - self._times[0] >= WINDOW_SECONDS:
                self._times.popleft()
            if limit is not None and len(self._times) >= limit:
                return self._times[0] + WINDOW_SECONDS - now if self._times else WINDOW_SECONDS
            self._times.append(now)
            return None

    def reset(self) -> None:
        with self._lock:
            self._times.clear()
