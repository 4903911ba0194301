"""When a file in the drop folder is complete: pure bookkeeping of events and sizes, told the time.

A file is complete at once after a close-write event or a rename into the folder (how uploaders
publish a finished file), otherwise when its size and mtime have not changed for the settle time.
With inotify a file known to be open for writing (written, or created empty, with no close-write
yet) is not complete however long its writer pauses; only after `writer_timeout` unchanged is it
taken anyway, in case its close event was lost (the loader's read lease still refuses a file that
is open for writing). Polling sees no writes or closes, so there the settle time alone decides.

Nothing here touches the file system or the clock directly: the watcher feeds what it saw and
the clock is injected, so every rule is tested without files changing or time passing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path


class Seen(StrEnum):
    """What an event, or a look at the folder, says about a file."""

    CHECK = "check"  # a rescan or a settle check looked at it
    CREATED = "created"
    WRITTEN = "written"
    CLOSED = "closed"  # closed after writing
    MOVED_IN = "moved in"
    GONE = "gone"


@dataclass
class Candidate:
    """A file that may be complete: its last size and mtime, since when they hold, first seen."""

    size: int
    mtime_ns: int
    stable_since: float
    seen_at: datetime


@dataclass(frozen=True)
class Due:
    """A file to take now; `lost_close` when its writer never closed it (taken after the timeout)."""

    path: Path
    seen_at: datetime
    lost_close: bool = False


class SettleTracker:
    """Which candidates are complete. `observe` what was seen, `due` what is ready to take."""

    def __init__(
        self,
        *,
        settle_seconds: float,
        writer_timeout: float,
        track_writers: bool,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settle_seconds = settle_seconds
        self.writer_timeout = max(settle_seconds, writer_timeout)
        self.track_writers = track_writers
        self._clock = clock
        self._wall = wall
        self.candidates: dict[Path, Candidate] = {}
        self.open_for_writing: set[Path] = set()

    def writer_event(self, path: Path, seen: Seen) -> None:
        """Keep track of writers; done for files in flight too, so that a file written to while it
        loads (the load then rolls back) waits for its writer's close before it is taken again."""
        if seen is Seen.WRITTEN and self.track_writers:
            self.open_for_writing.add(path)
        elif seen in (Seen.CLOSED, Seen.MOVED_IN, Seen.GONE):
            self.open_for_writing.discard(path)

    def writer_still_open(self, path: Path) -> None:
        """The loader found a writer holding the file: wait for its close-write event."""
        if self.track_writers:
            self.open_for_writing.add(path)

    def forget(self, path: Path) -> None:
        """The file is gone (moved out by someone, deleted)."""
        self.candidates.pop(path, None)
        self.open_for_writing.discard(path)

    def observe(self, path: Path, size: int, mtime_ns: int, seen: Seen) -> Due | None:
        """Record what a look at a regular file found; a Due when it is complete right now."""
        now = self._clock()
        if seen is Seen.CREATED and self.track_writers and size == 0:
            self.open_for_writing.add(path)  # created by open(): its data is still to come
        known = self.candidates.get(path)
        if known is None or (known.size, known.mtime_ns) != (size, mtime_ns):
            seen_at = known.seen_at if known else self._wall()
            known = self.candidates[path] = Candidate(size, mtime_ns, now, seen_at)
        if seen in (Seen.CLOSED, Seen.MOVED_IN):
            return self.take(path)
        return None

    def due(self) -> list[Due]:
        """The candidates complete by now (call after observing each with a fresh look)."""
        now = self._clock()
        ready: list[Due] = []
        for path, candidate in list(self.candidates.items()):
            unchanged = now - candidate.stable_since
            if path not in self.open_for_writing:
                if unchanged >= self.settle_seconds:
                    ready.append(Due(path, candidate.seen_at))
            elif unchanged >= self.writer_timeout:
                self.open_for_writing.discard(path)
                ready.append(Due(path, candidate.seen_at, lost_close=True))
        for item in ready:
            self.candidates.pop(item.path, None)
        return ready

    def take(self, path: Path) -> Due | None:
        """Take a candidate now, whatever its age (None if it is not one)."""
        candidate = self.candidates.pop(path, None)
        return Due(path, candidate.seen_at) if candidate is not None else None
