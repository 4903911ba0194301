"""When watch mode pulls next: soon after rows arrived, less and less often while nothing changes."""

from __future__ import annotations

FIRST_WAIT_S = 1.0


class PullSchedule:
    """1 s after a pull that brought rows; then doubling while pulls come back empty or fail,
    up to `longest` (EPMS_PULL_SECONDS)."""

    def __init__(self, longest: float) -> None:
        self.longest = longest
        self._wait = min(FIRST_WAIT_S, longest)

    def next_wait(self, rows_arrived: bool) -> float:
        if rows_arrived:
            self._wait = min(FIRST_WAIT_S, self.longest)
        wait = self._wait
        self._wait = min(self._wait * 2, self.longest)
        return wait
