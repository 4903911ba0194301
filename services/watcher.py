"""Watch mode: notice each complete drop and hand it to the loader, until stopped.

A file becomes a candidate on create, modify, close-write or rename-into-the-folder events, at
start-up, and on every periodic rescan (events can be lost). It is taken at once after a
close-write event, otherwise when its size and mtime have not changed for WATCH_SETTLE_SECONDS.

With inotify the watcher also knows when a writer still holds a file open: it saw the file
written (or created empty) and has not seen its close-write yet. Such a file is not complete,
however long the writer pauses (an SFTP upload can stall for longer than the settle time), so the
settle check leaves it alone; only if it stays unchanged for WATCH_RESCAN_SECONDS is it taken
anyway, in case its close event was lost. Polling sees no writes or closes as such, so there the
settle time alone decides.

Files wait in the folder while the database is away; a transient failure is retried with backoff.

With EPMS_ODBC_DSN set, the watcher also pulls the ERP (services.pull): at once, then 1 s after a
pull that brought rows, doubling while nothing changes or the ERP does not answer, up to
EPMS_PULL_SECONDS. The ERP being away never stops the watcher; pulled files count like drops.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

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

from app.backoff import Doubling
from app.db import Database, is_transient
from app.errors import (
    DatabaseUnavailable,
    FileStillOpen,
    FileUnreadable,
    FolderProblem,
    PullCancelled,
    TransientError,
)
from app.settings import Settings
from models.datasets import DatasetRegistry
from services.health import Health
from services.ingest import ledger
from services.ingest.files import check_state_folders, display_name, is_candidate_name
from services.ingest.loader import FileOutcome, Loader
from services.pull import Puller
from services.pull.schedule import PullSchedule

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 8.0  # docker stop waits 10 s before SIGKILL
BUSY_RETRY_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0
PROBE_EVERY_S = 5.0  # how often /healthz's view of the database is refreshed
PROBE_TIMEOUT_S = 3.0


@dataclass
class Candidate:
    size: int
    mtime_ns: int
    stable_since: float
    seen_at: datetime
    closed: bool = False


@dataclass
class WatchResult:
    loaded: int = 0
    failed: int = 0
    duplicates: int = 0
    outcomes: list[FileOutcome] = field(default_factory=list)


# What an event says about a file: the `what` argument of Watcher.note.
CHECK, CREATED, WRITTEN, CLOSED = "check", "created", "written", "closed"
MOVED_IN, GONE = "moved in", "gone"


def wait_reason(exc: BaseException) -> str:
    """Why a file that raised `exc` waits in the folder (a WAIT_REASONS value)."""
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
        self, loop: asyncio.AbstractEventLoop, note: Callable[[Path, str], None], folder: Path
    ) -> None:
        self._loop = loop
        self._note = note
        self._folder = folder

    def _send(self, path: str | bytes, what: str) -> None:
        p = Path(os.fsdecode(path))
        if p.parent == self._folder:
            self._loop.call_soon_threadsafe(self._note, p, what)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        if isinstance(event, FileMovedEvent):
            self._send(event.src_path, GONE)
            self._send(event.dest_path, MOVED_IN)
        elif isinstance(event, FileClosedEvent):  # close-write only; close-nowrite is its own class
            self._send(event.src_path, CLOSED)
        elif isinstance(event, FileModifiedEvent):
            self._send(event.src_path, WRITTEN)
        elif isinstance(event, FileCreatedEvent):
            self._send(event.src_path, CREATED)
        elif isinstance(event, FileDeletedEvent):
            self._send(event.src_path, GONE)
        # opens, closes without writes, attribute changes: the settle check sees what matters


class Watcher:
    def __init__(
        self,
        settings: Settings,
        loader: Loader,
        folder: Path,
        on_outcome: Callable[[FileOutcome], Awaitable[None]] | None = None,
        health: Health | None = None,
        puller: Puller | None = None,
    ) -> None:
        self.settings = settings
        self.puller = puller
        self._stop_pulling = threading.Event()
        self.loader = loader
        self.folder = folder.resolve()
        self.on_outcome = on_outcome
        self.health = health
        self.candidates: dict[Path, Candidate] = {}
        self.in_flight: set[Path] = set()
        self.queue: asyncio.Queue[tuple[Path, datetime]] = asyncio.Queue()
        self.result = WatchResult()
        self._backoff: dict[Path, Doubling] = {}
        # Files tried and left in the folder, and why (a WAIT_REASONS value).
        self.waiting: dict[Path, str] = {}
        self._ignored: set[Path] = set()
        # inotify only: files a writer holds open (written or created empty, no close-write yet)
        self._track_writers = not settings.watch_polling
        self.open_for_writing: set[Path] = set()

    # -- candidates -------------------------------------------------------------------------

    def note(self, path: Path, what: str = CHECK) -> None:
        if not is_candidate_name(path.name):
            return
        # Kept up to date for a file in flight too: if it is written to while it is loaded, the
        # load fails (the file changed) and the retry must wait for the writer's close.
        if what == WRITTEN and self._track_writers:
            self.open_for_writing.add(path)
        elif what in (CLOSED, MOVED_IN, GONE):
            self.open_for_writing.discard(path)
        if path in self.in_flight:
            return
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self.candidates.pop(path, None)
            self.open_for_writing.discard(path)
            return
        except OSError as exc:  # e.g. permissions: the next event or rescan looks again
            log.warning("cannot look at %s (%s); it waits", path.name, exc)
            return
        if what == CREATED and self._track_writers and st.st_size == 0:
            self.open_for_writing.add(path)  # created by open(): its data is still to come
        if not stat.S_ISREG(st.st_mode):
            if path not in self._ignored:
                self._ignored.add(path)
                log.warning("ignoring %s: not a regular file (links and folders are never taken)", path.name)
            return
        now = time.monotonic()
        known = self.candidates.get(path)
        if known is None or (known.size, known.mtime_ns) != (st.st_size, st.st_mtime_ns):
            seen = known.seen_at if known else datetime.now(UTC)
            known = self.candidates[path] = Candidate(st.st_size, st.st_mtime_ns, now, seen)
        if what == CLOSED:
            known.closed = True
            self._take(path)

    def _settle(self) -> None:
        now = time.monotonic()
        settle = self.settings.watch_settle_seconds
        for path in list(self.candidates):
            self.note(path)
            candidate = self.candidates.get(path)
            if candidate is None:
                continue
            unchanged = now - candidate.stable_since
            if path not in self.open_for_writing:
                if unchanged >= settle:
                    self._take(path)
            elif unchanged >= max(settle, self.settings.watch_rescan_seconds):
                log.warning(
                    "taking %s although its writer never closed it: it has not changed for %.0f s "
                    "(its close event may have been lost)",
                    path.name,
                    unchanged,
                )
                self.open_for_writing.discard(path)
                self._take(path)

    def _take(self, path: Path) -> None:
        candidate = self.candidates.pop(path, None)
        if candidate is None or path in self.in_flight:
            return
        self.in_flight.add(path)
        self.queue.put_nowait((path, candidate.seen_at))

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
            if path not in self.candidates:
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
                log.exception("unexpected error after loading %s", path.name)
            finally:
                self.in_flight.discard(path)
                self.queue.task_done()

    async def _process(self, path: Path, seen_at: datetime) -> None:
        started = time.monotonic()
        try:
            outcome = await self.loader.ingest(path, received_at=seen_at)
        except Exception as exc:
            await self._wait(path, exc)
            return
        self._backoff.pop(path, None)
        self._stop_waiting(path)
        if outcome.status == "busy":
            self._retry_later(path, BUSY_RETRY_SECONDS)
            return
        await self._finish(outcome, time.monotonic() - started)

    async def _wait(self, path: Path, exc: Exception) -> None:
        """The file stays in the folder and is tried again later; say why, once per reason."""
        reason = wait_reason(exc)
        name = display_name(path.name)
        delay = self._backoff.setdefault(path, Doubling(longest=MAX_BACKOFF_SECONDS)).next()
        first = self.waiting.get(path) != reason
        self.waiting[path] = reason
        if reason == "writer_open" and self._track_writers:
            self.open_for_writing.add(path)  # its close-write event takes it at once
        shown = f"PostgreSQL is not reachable ({exc})" if reason == "database" and is_transient(exc) else exc
        if reason == "retrying":
            # An unexpected error: the traceback once, then a line a try (the ledger counts them).
            log.error(
                "unexpected error while loading %s; it stays in %s and is tried again in %.0f s",
                name,
                self.folder,
                delay,
                exc_info=exc if first else None,
            )
        elif reason == "folder_problem":
            if first:
                log.error("%s waits: %s", name, exc)
                await self._log_error(name, exc)
            if self.health is not None:
                self.health.folders(str(exc))
        else:
            log.log(
                logging.INFO if reason == "writer_open" else logging.WARNING,
                "%s will be tried again in %.0f s: %s",
                name,
                delay,
                shown,
            )
        self._report_waiting()
        self._retry_later(path, delay)

    def _stop_waiting(self, path: Path) -> None:
        if self.waiting.pop(path, None) is None:
            return
        if self.health is not None and "folder_problem" not in self.waiting.values():
            self.health.folders(None)
        self._report_waiting()

    def _report_waiting(self) -> None:
        if self.health is not None:
            self.health.waiting(dict(Counter(self.waiting.values())))

    async def _log_error(self, name: str, exc: Exception) -> None:
        """An `ingest.error_log` row for a problem a person must mend; best effort."""
        try:
            async with self.loader.db.connection(timeout=PROBE_TIMEOUT_S) as conn:
                await ledger.log_error(conn, "watcher", str(exc), {"error": type(exc).__name__, "file": name})
        except Exception as db_exc:  # the database may be away too: the log line stands
            log.debug("could not record the problem in ingest.error_log: %s", db_exc)

    async def _finish(self, outcome: FileOutcome, seconds: float) -> None:
        self._count(outcome)
        if self.health is not None and outcome.status != "skipped":
            self.health.observe(outcome.status, outcome.rows_loaded, outcome.rows_rejected, seconds)
        if self.on_outcome is not None:
            await self.on_outcome(outcome)

    async def _pull_loop(self, stop: asyncio.Event) -> None:
        assert self.puller is not None
        schedule = PullSchedule(self.settings.epms_pull_seconds)
        while not stop.is_set():
            started = time.monotonic()
            arrived = False
            try:
                result = await self.puller.pull(self._stop_pulling)
            except PullCancelled:
                return
            except TransientError as exc:  # PostgreSQL away, or another process moved the watermark
                error: str | None = str(exc)
            except Exception as exc:
                if is_transient(exc):
                    error = f"PostgreSQL is not reachable ({exc})"
                else:
                    log.exception("unexpected error while pulling the ERP")
                    error = str(exc)
            else:
                error = result.error
                arrived = result.rows_arrived
                for outcome in result.outcomes:
                    await self._finish(outcome, time.monotonic() - started)
            if self.health is not None:
                self.health.erp(error is None)
            wait = schedule.next_wait(arrived)
            if error is not None:
                log.warning("ERP pull failed: %s; trying again in %.0f s", error, wait)
            try:
                await asyncio.wait_for(stop.wait(), timeout=wait)
            except TimeoutError:
                pass

    def _count(self, outcome: FileOutcome) -> None:
        if outcome.status == "skipped":
            return
        self.result.outcomes.append(outcome)
        del self.result.outcomes[:-100]
        if outcome.status == "failed":
            self.result.failed += 1
        elif outcome.status == "duplicate":
            self.result.duplicates += 1
        else:
            self.result.loaded += 1

    async def run(self, stop: asyncio.Event) -> WatchResult:
        check_state_folders(self.folder)  # refuse to start rather than move files through a link
        loop = asyncio.get_running_loop()
        if not self.settings.watch_polling:
            # watchdog holds a rename-away (our own move to processed/) for 0.5 s to pair it with
            # a rename-in, and every later event waits behind it. Unpaired halves are fine here:
            # a file renamed in is noted as created, which is all the watcher needs.
            InotifyMoveEventGrouper.delay = 0
        observer: BaseObserver = PollingObserver(timeout=1) if self.settings.watch_polling else Observer()
        observer.schedule(_Events(loop, self.note, self.folder), str(self.folder), recursive=False)
        observer.start()
        workers = [asyncio.create_task(self._worker()) for _ in range(self.settings.ingest_workers)]
        mode = "polling" if self.settings.watch_polling else "inotify"
        log.info("watching %s (%s, %d workers)", self.folder, mode, len(workers))
        pulling = asyncio.create_task(self._pull_loop(stop)) if self.puller is not None else None
        if pulling is not None:
            log.info("pulling the ERP at most %.0f s apart", self.settings.epms_pull_seconds)
        self.rescan()
        tick = min(0.25, max(0.05, self.settings.watch_settle_seconds / 4))
        next_rescan = time.monotonic() + self.settings.watch_rescan_seconds
        probe: asyncio.Task[None] | None = None
        next_probe = 0.0
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), timeout=tick)
                except TimeoutError:
                    pass
                self._settle()
                if self.health is not None:
                    self.health.beat()
                    self.health.queue_depth.set(len(self.candidates) + len(self.in_flight))
                    if time.monotonic() >= next_probe and (probe is None or probe.done()):
                        next_probe = time.monotonic() + PROBE_EVERY_S
                        probe = asyncio.create_task(self._probe_database())
                if time.monotonic() >= next_rescan:
                    next_rescan = time.monotonic() + self.settings.watch_rescan_seconds
                    self.rescan()
        finally:
            if probe is not None:
                probe.cancel()
                await asyncio.gather(probe, return_exceptions=True)
            observer.stop()
            # The pull in hand and the files in hand share one grace period.
            await asyncio.gather(self._drain(workers), *([self._stop_pull(pulling)] if pulling else []))
            observer.join(timeout=5)
        log.info(
            "stopped watching: %d loaded, %d duplicates, %d failed",
            self.result.loaded,
            self.result.duplicates,
            self.result.failed,
        )
        return self.result

    async def _probe_database(self) -> None:
        assert self.health is not None
        try:
            async with self.loader.db.connection(timeout=PROBE_TIMEOUT_S) as conn:
                await conn.fetchval("SELECT 1", timeout=PROBE_TIMEOUT_S)
            self.health.database(True)
        except Exception:  # any failure means: not answering now
            self.health.database(False)

    async def _stop_pull(self, pulling: asyncio.Task[None]) -> None:
        """A pull in hand gets the grace period; if it is still reading or loading then, it stops
        and rolls back (its watermark stays, so the next start reads the same rows again)."""
        self._stop_pulling.set()
        try:
            await asyncio.wait_for(asyncio.shield(pulling), timeout=STOP_GRACE_SECONDS)
        except TimeoutError:
            log.warning("stopping the ERP pull in hand; its rows are read again next time")
            pulling.cancel()
        except Exception:
            log.exception("the ERP pull loop failed")
        await asyncio.gather(pulling, return_exceptions=True)

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
                    sorted(p.name for p in self.in_flight),
                )
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


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
    health = Health() if settings.health_port else None
    server = None
    if health is not None:
        try:
            server = health.serve(settings.health_host, settings.health_port)
        except OSError as exc:  # e.g. a second watcher on this host: it still loads files
            log.warning(
                "/healthz and /metrics not served: %s port %d: %s",
                settings.health_host,
                settings.health_port,
                exc.strerror,
            )
    try:
        if prepare is not None and not await _wait_for_database(prepare, stop, health):
            log.info("stopped before PostgreSQL answered; nothing was loaded")
            return WatchResult()
        watcher = Watcher(settings, Loader(settings, registry, db), folder, on_outcome, health, puller)
        return await watcher.run(stop)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()


async def _wait_for_database(
    prepare: Callable[[], Awaitable[None]], stop: asyncio.Event, health: Health | None
) -> bool:
    """Run `prepare` until it succeeds (True) or `stop` is set (False), waiting 1 s, then twice as
    long each time up to MAX_BACKOFF_SECONDS, while the server is away. A ConfigError (a wrong
    password, no such database) is not waited out: it propagates and the process exits 2."""
    delay = 1.0
    while True:
        try:
            await prepare()
            return True
        except DatabaseUnavailable as exc:
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
        delay = min(MAX_BACKOFF_SECONDS, delay * 2)
