"""Watch mode: notice each complete drop and hand it to the loader, until stopped.

A file becomes a candidate on create, modify, close-write or rename-into-the-folder events, at
start-up, and on every periodic rescan (events can be lost). When it is complete is decided by
`services.settle` (at once after a close-write or a rename into the folder, else once unchanged
for WATCH_SETTLE_SECONDS); the loader's read lease then refuses a file that some process still
holds open for writing, and the file waits for its writer's close.

Files wait in the folder while the database is away, while a writer holds them, while they cannot
be read, or while processed/ or failed/ cannot receive them: each wait is logged once per reason,
counted on /metrics, and retried with backoff.

`run_watcher` starts watch mode's services side by side under a `Supervisor`: this file watcher,
the ERP pull loop (services.pull.loop, when EPMS_ODBC_DSN is set), the health probe, and what
hands-free mode adds (services.handsfree: schedules, runs after loads, the DeTrack webhook, alerts,
retention).
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Literal

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper
from watchdog.observers.polling import PollingObserver

try:
    from watchdog.observers.inotify import InotifyObserver
except ImportError:  # not Linux: the platform's observer, renames in seen as creations
    InotifyObserver = None  # type: ignore[assignment,misc]

from app.backoff import Doubling
from app.db import Database, is_transient
from app.errorlog import log_error
from app.errors import DatabaseUnavailable, FileStillOpen, FileUnreadable, FolderProblem, TransientError
from app.settings import Settings
from models.datasets import DatasetRegistry
from models.outcomes import FileOutcome
from services.handsfree import hands_free
from services.health import PROBE_EVERY_S, PROBE_TIMEOUT_S, DatabaseProbe, Health, WaitReason
from services.ingest import Loader, check_state_folders, display_name, is_candidate_name
from services.pull import Puller, PullLoop
from services.settle import Due, Seen, SettleTracker
from services.supervisor import Service, Supervisor

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 8.0  # docker stop waits 10 s before SIGKILL
BUSY_RETRY_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0


@dataclass
class WatchResult:
    """What a watch session did, counted when it stops."""

    loaded: int = 0
    failed: int = 0
    duplicates: int = 0
    outcomes: list[FileOutcome] = field(default_factory=list)

    def count(self, outcome: FileOutcome) -> None:
        """Add one file's outcome (the last 100 are kept)."""
        if outcome.status == "skipped":
            return
        self.outcomes.append(outcome)
        del self.outcomes[:-100]
        if outcome.status == "failed":
            self.failed += 1
        elif outcome.status == "duplicate":
            self.duplicates += 1
        else:
            self.loaded += 1


def wait_reason(exc: BaseException) -> WaitReason | Literal["changed"]:
    """Why a file that raised `exc` waits in the folder; `changed` (it was still being written) is
    settling, not waiting, and is not counted."""
    if isinstance(exc, FileStillOpen):
        return "writer_open"
    if isinstance(exc, FileUnreadable):
        return "unreadable"
    if isinstance(exc, FolderProblem):
        return "folder_problem"
    if isinstance(exc, DatabaseUnavailable) or is_transient(exc):
        return "database"
    if isinstance(exc, TransientError):  # the file changed while it was read: settle again
        return "changed"
    return "retrying"


class _Events(FileSystemEventHandler):
    """Runs on watchdog's thread; hands every event to the event loop."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, note: Callable[[Path, Seen], None], folder: Path
    ) -> None:
        self._loop = loop
        self._note = note
        self._folder = folder

    def _send(self, path: str | bytes, seen: Seen) -> None:
        p = Path(os.fsdecode(path))
        if p.parent == self._folder:
            self._loop.call_soon_threadsafe(self._note, p, seen)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        if isinstance(event, FileMovedEvent):
            # With full events, a move from or to an unwatched folder has one side empty.
            if event.src_path:
                self._send(event.src_path, Seen.GONE)
            if event.dest_path:
                self._send(event.dest_path, Seen.MOVED_IN)
        elif isinstance(event, FileClosedEvent):  # close-write only; close-nowrite is its own class
            self._send(event.src_path, Seen.CLOSED)
        elif isinstance(event, FileModifiedEvent):
            self._send(event.src_path, Seen.WRITTEN)
        elif isinstance(event, FileCreatedEvent):
            self._send(event.src_path, Seen.CREATED)
        elif isinstance(event, FileDeletedEvent):
            self._send(event.src_path, Seen.GONE)
        # opens, closes without writes, attribute changes: the settle check sees what matters


class WaitingFiles:
    """Files tried and left in the folder: why each waits, said once per reason, on /metrics."""

    def __init__(self, db: Database, health: Health | None) -> None:
        self.db = db
        self.health = health
        self.reasons: dict[Path, WaitReason | Literal["changed"]] = {}
        self._backoff: dict[Path, Doubling] = {}

    async def wait(self, path: Path, exc: Exception) -> float:
        """Record why `path` waits; returns the seconds until its next try."""
        reason = wait_reason(exc)
        name = display_name(path.name)
        delay = self._backoff.setdefault(path, Doubling(longest=MAX_BACKOFF_SECONDS)).next()
        first = self.reasons.get(path) != reason
        self.reasons[path] = reason
        if reason == "retrying":
            # An unexpected error: the traceback once, then a line a try (ingest.file_attempts counts).
            log.error(
                "unexpected error while loading %s; it stays in the folder and is tried again in %.0f s",
                name,
                delay,
                exc_info=exc if first else None,
            )
        elif reason == "folder_problem":
            if first:
                log.error("%s waits: %s", name, exc)
                await self._record(name, exc)
            if self.health is not None:
                self.health.folders(str(exc))
        else:
            shown: object = exc
            if reason == "database":
                retry = str(getattr(exc, "sqlstate", "") or "").startswith("40")
                shown = (
                    f"PostgreSQL asked to try again ({exc})"
                    if retry
                    else f"PostgreSQL is not reachable ({exc})"
                )
            level = logging.INFO if reason == "writer_open" else logging.WARNING
            log.log(level, "%s will be tried again in %.0f s: %s", name, delay, shown)
        self._report()
        return delay

    def done(self, path: Path) -> None:
        """`path` was tried and did not raise: it waits no more."""
        self._backoff.pop(path, None)
        if self.reasons.pop(path, None) is None:
            return
        if self.health is not None and "folder_problem" not in self.reasons.values():
            self.health.folders(None)
        self._report()

    def _report(self) -> None:
        if self.health is not None:
            self.health.waiting(dict(Counter(self.reasons.values())))

    async def _record(self, name: str, exc: Exception) -> None:
        """An `ingest.error_log` row for a problem a person must mend; best effort."""
        try:
            async with self.db.connection(timeout=PROBE_TIMEOUT_S) as conn:
                await log_error(conn, "watcher", str(exc), {"error": type(exc).__name__, "file": name})
        except Exception as db_exc:  # the database may be away too: the log line stands
            log.debug("could not record the problem in ingest.error_log: %s", db_exc)


class Watcher:
    """The file watcher service: events and rescans feed the settle tracker, workers load what is
    complete, and what cannot be loaded yet waits with a reason."""

    name = "file watcher"

    def __init__(
        self,
        settings: Settings,
        loader: Loader,
        folder: Path,
        on_outcome: Callable[[FileOutcome], Awaitable[None]] | None = None,
        health: Health | None = None,
    ) -> None:
        self.settings = settings
        self.loader = loader
        self.folder = folder.resolve()
        self.on_outcome = on_outcome
        self.health = health
        self.tracker = SettleTracker(
            settle_seconds=settings.watch_settle_seconds,
            writer_timeout=settings.watch_rescan_seconds,
            track_writers=not settings.watch_polling,
        )
        self.waiting = WaitingFiles(loader.db, health)
        self.in_flight: set[Path] = set()
        self.queue: asyncio.Queue[tuple[Path, datetime]] = asyncio.Queue()
        self.result = WatchResult()
        self._ignored: set[Path] = set()

    # -- candidates -------------------------------------------------------------------------

    def note(self, path: Path, seen: Seen = Seen.CHECK) -> None:
        """Look at `path` after an event (or a rescan) and take it if it is complete."""
        if not is_candidate_name(path.name):
            return
        self.tracker.writer_event(path, seen)
        if path in self.in_flight:
            return
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self.tracker.forget(path)
            return
        except OSError as exc:  # e.g. permissions: the next event or rescan looks again
            log.warning("cannot look at %s (%s); it waits", display_name(path.name), exc)
            return
        if not stat.S_ISREG(st.st_mode):
            if path not in self._ignored:
                self._ignored.add(path)
                log.warning(
                    "ignoring %s: not a regular file (links and folders are never taken)",
                    display_name(path.name),
                )
            return
        due = self.tracker.observe(path, st.st_size, st.st_mtime_ns, seen)
        if due is not None:
            self._take(due)

    def settle(self) -> None:
        """Look at every candidate again and take the ones complete by now."""
        for path in list(self.tracker.candidates):
            self.note(path)
        for due in self.tracker.due():
            if due.lost_close:
                log.warning(
                    "taking %s although its writer never closed it: it has not changed for %.0f s "
                    "(its close event may have been lost)",
                    display_name(due.path.name),
                    self.tracker.writer_timeout,
                )
            self._take(due)

    def _take(self, due: Due) -> None:
        if due.path in self.in_flight:
            return
        self.in_flight.add(due.path)
        self.queue.put_nowait((due.path, due.seen_at))

    def rescan(self) -> None:
        """Note every file in the folder. Other processes move files out at any moment, so a
        name listed here may be gone when it is looked at: `note` forgets it then."""
        try:
            with os.scandir(self.folder) as entries:
                # processed/ and failed/ live here; folders are never candidates, silently
                names = [entry.name for entry in entries if not entry.is_dir(follow_symlinks=False)]
        except OSError as exc:
            log.warning("could not list %s (%s); trying again at the next rescan", self.folder, exc)
            return
        for name in names:
            path = self.folder / name
            if path not in self.tracker.candidates:
                self.note(path)

    def _retry_later(self, path: Path, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, self.note, path)

    # -- work -------------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            path, seen_at = await self.queue.get()
            try:
                await self._process(path, seen_at)
            except Exception:  # a worker that died would leave the watcher running but idle
                log.exception("unexpected error after loading %s", display_name(path.name))
            finally:
                self.in_flight.discard(path)
                self.queue.task_done()

    async def _process(self, path: Path, seen_at: datetime) -> None:
        started = time.monotonic()
        try:
            outcome = await self.loader.ingest(path, received_at=seen_at)
        except Exception as exc:
            if isinstance(exc, FileStillOpen):
                self.tracker.writer_still_open(path)  # its close-write event takes it at once
            self._retry_later(path, await self.waiting.wait(path, exc))
            return
        self.waiting.done(path)
        if outcome.status == "busy":
            self._retry_later(path, BUSY_RETRY_SECONDS)
            return
        await self.finish(outcome, time.monotonic() - started)

    async def finish(self, outcome: FileOutcome, seconds: float) -> None:
        """Count a file's outcome (a drop's, or a pulled file's) and run the follow-up."""
        self.result.count(outcome)
        if self.health is not None and outcome.status != "skipped":
            self.health.observe(outcome.status, outcome.rows_loaded, outcome.rows_rejected, seconds)
        if self.on_outcome is not None:
            await self.on_outcome(outcome)

    async def run(self, stop: asyncio.Event) -> None:
        """Watch until `stop` is set, then finish or roll back the files in hand."""
        check_state_folders(self.folder)  # refuse to start rather than move files through a link
        observer = _observe(self.settings, self.folder, self.note)
        workers = [asyncio.create_task(self._worker()) for _ in range(self.settings.ingest_workers)]
        mode = "polling" if self.settings.watch_polling else "inotify"
        log.info("watching %s (%s, %d workers)", self.folder, mode, len(workers))
        try:
            await self._tick_until(stop)
        finally:
            observer.stop()
            await self._drain(workers)
            observer.join(timeout=5)

    async def _tick_until(self, stop: asyncio.Event) -> None:
        self.rescan()
        tick = min(0.25, max(0.05, self.settings.watch_settle_seconds / 4))
        next_rescan = time.monotonic() + self.settings.watch_rescan_seconds
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=tick)
            except TimeoutError:
                pass
            self.settle()
            if self.health is not None:
                self.health.beat()
                self.health.queue_depth.set(len(self.tracker.candidates) + len(self.in_flight))
            if time.monotonic() >= next_rescan:
                next_rescan = time.monotonic() + self.settings.watch_rescan_seconds
                self.rescan()

    async def _drain(self, workers: list[asyncio.Task[None]]) -> None:
        """Let the files in hand finish for a grace period, then roll back what is left."""
        while not self.queue.empty():  # not started yet: they stay in the folder
            path, _ = self.queue.get_nowait()
            self.in_flight.discard(path)
            self.queue.task_done()
        if self.in_flight:
            log.info("finishing %d file(s) in hand before stopping", len(self.in_flight))
            try:
                await asyncio.wait_for(self.queue.join(), timeout=STOP_GRACE_SECONDS)
            except TimeoutError:
                log.warning(
                    "rolling back %s: they stay in the folder for next time",
                    sorted(display_name(p.name) for p in self.in_flight),
                )
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


def _observe(settings: Settings, folder: Path, note: Callable[[Path, Seen], None]) -> BaseObserver:
    """Start watchdog on `folder`, handing every event to `note` on the event loop."""
    if not settings.watch_polling:
        # watchdog holds a rename-away (our own move to processed/) for 0.5 s to pair it with
        # a rename-in, and every later event waits behind it. Unpaired halves are fine here:
        # a file renamed in is noted as moved in, which is all the watcher needs.
        InotifyMoveEventGrouper.delay = 0
    observer: BaseObserver
    if settings.watch_polling:
        observer = PollingObserver(timeout=1)
    elif InotifyObserver is not None:
        # Full events: a file renamed in from another folder is a move (taken at once), not a
        # creation (which waits for the settle time).
        observer = InotifyObserver(generate_full_events=True)
    else:
        observer = Observer()
    handler = _Events(asyncio.get_running_loop(), note, folder)
    observer.schedule(handler, str(folder), recursive=False)
    observer.start()
    return observer


async def run_watcher(
    settings: Settings,
    db: Database,
    registry: DatasetRegistry,
    folder: Path,
    stop: asyncio.Event,
    on_outcome: Callable[[FileOutcome], Awaitable[None]] | None = None,
    puller: Puller | None = None,
    prepare: Callable[[], Awaitable[None]] | None = None,
) -> WatchResult:
    """Watch `folder` until `stop` is set. `prepare` (the migrations) is tried first, and again
    with backoff for as long as PostgreSQL does not answer; /healthz says 503 meanwhile."""
    folder.mkdir(parents=True, exist_ok=True)
    # Alerts watch the database and ERP gauges even when /metrics is not served.
    health = Health() if settings.health_port or settings.alert_urls.get_secret_value() else None
    server = _serve_health(settings, health)
    try:
        if prepare is not None and not await _wait_for_database(prepare, stop, health):
            log.info("stopped before PostgreSQL answered; nothing was loaded")
            return WatchResult()
        extra = hands_free(settings, db, folder, health)
        if on_outcome is not None:
            extra.hooks.insert(0, on_outcome)
        watcher = Watcher(settings, Loader(settings, registry, db), folder, extra.on_outcome, health)
        services: list[Service] = [watcher, *extra.services]
        if puller is not None:
            services.append(PullLoop(settings, puller, watcher.finish, health))
        if health is not None:
            services.append(DatabaseProbe(db, health))
        await Supervisor(services, grace=STOP_GRACE_SECONDS + 1).run(stop)
        result = watcher.result
        log.info(
            "stopped watching: %d loaded, %d duplicates, %d failed",
            result.loaded,
            result.duplicates,
            result.failed,
        )
        return result
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()


def _serve_health(settings: Settings, health: Health | None) -> ThreadingHTTPServer | None:
    """/healthz and /metrics on HEALTH_HOST:HEALTH_PORT, if asked for and the port is free."""
    if health is None or not settings.health_port:
        return None
    try:
        return health.serve(settings.health_host, settings.health_port)
    except OSError as exc:  # e.g. a second watcher on this host: it still loads files
        log.warning(
            "/healthz and /metrics not served: %s port %d: %s",
            settings.health_host,
            settings.health_port,
            exc.strerror,
        )
        return None


async def _wait_for_database(
    prepare: Callable[[], Awaitable[None]], stop: asyncio.Event, health: Health | None
) -> bool:
    """Run `prepare` until it succeeds (True) or `stop` is set (False), waiting 1 s, then twice as
    long each time up to MAX_BACKOFF_SECONDS, while the server is away. A ConfigError (a wrong
    password, no such database) is not waited out: it propagates and the process exits 2."""
    backoff = Doubling(longest=MAX_BACKOFF_SECONDS)
    while True:
        try:
            await prepare()
            return True
        except DatabaseUnavailable as exc:
            delay = backoff.next()
            log.warning("%s; waiting for it, next try in %.0f s", exc.message, delay)
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            if health is not None:
                health.beat()  # waiting is what the loop should do now: not a stall
            try:
                await asyncio.wait_for(stop.wait(), timeout=min(left, PROBE_EVERY_S))
                return False
            except TimeoutError:
                pass
