"""When a scheduled stage runs: `PIPELINE_SCHEDULE`, `DISPATCH_SCHEDULE`, `ANALYSIS_SCHEDULE`.

A schedule is empty (off), a number of seconds, or a 5-field cron expression evaluated in
`SCHEDULE_TZ`. Its ticks are instants every replica computes alike from the clock alone (seconds
count from the Unix epoch, so `300` ticks at :00, :05, … on every host), which is what lets
replicas claim each tick once in PostgreSQL instead of trusting their timers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ScheduleError(ValueError):
    """A schedule that is neither empty, a number of seconds, nor a 5-field cron expression."""


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: every `seconds`, or at each match of `cron` in `tz`."""

    text: str
    seconds: float | None = None
    cron: str | None = None
    tz: str = "UTC"

    def next_tick(self, now: datetime) -> datetime:
        """The first tick strictly after `now` (aware), in UTC."""
        if self.seconds is not None:
            elapsed = (now - EPOCH).total_seconds()
            ticks = math.floor(elapsed / self.seconds) + 1
            return datetime.fromtimestamp(ticks * self.seconds, UTC)
        assert self.cron is not None
        from croniter import croniter  # only when a cron is used: every command's start-up pays imports

        local = now.astimezone(ZoneInfo(self.tz))
        following: datetime = croniter(self.cron, local).get_next(datetime)
        return following.astimezone(UTC)

    def describe(self) -> str:
        """`every 300 s` or `cron "0 * * * *" (Europe/London)`."""
        if self.seconds is not None:
            return f"every {self.seconds:g} s"
        return f'cron "{self.cron}" ({self.tz})'


def parse_schedule(text: str, tz: str = "UTC") -> Schedule | None:
    """None for an empty schedule (off); raises ScheduleError saying what is accepted."""
    text = text.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is not None:
        if not math.isfinite(seconds) or seconds < 1:
            raise ScheduleError(f"{text!r} is not a usable number of seconds: give 1 or more")
        return Schedule(text, seconds=seconds, tz=tz)
    from croniter import croniter

    fields = text.split()
    if len(fields) != 5 or not croniter.is_valid(text):
        raise ScheduleError(
            f"{text!r} is neither a number of seconds nor a 5-field cron expression "
            '(minute hour day-of-month month day-of-week, e.g. "*/5 * * * *" or "0 6 * * 1-5")'
        )
    return Schedule(text, cron=" ".join(fields), tz=tz)
