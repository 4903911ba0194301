"""When watch mode pulls next: soon after rows arrived, less and less often while nothing changes."""

from __future__ import annotations

from app.backoff import Doubling

FIRST_WAIT_S = 1.0


class PullSchedule:
    """1 s after a pull that brought rows; then doubling while pulls come back empty or fail,
    up to `longest` (EPMS_PULL_SECONDS)."""

    def __init__(self, longest: float) -> None:
        self.longest = longest
        self._wait = Doubling(first=FIRST_WAIT_S, longest=longest)

    def next_wait(self, rows_arrived: bool) -> float:
        """Seconds until the next pull: 1 after rows arrived, then doubling up to `longest`."""
        if rows_arrived:
            self._wait.reset()
        return self._wait.next()
