"""One file, exactly once: claim it, recognise it, load it in one transaction, then move it.

The claim is a PostgreSQL advisory lock on the content's SHA-256, held from before the ledger
look-up until after the move, so several processes (on one host or many) can watch one folder.
The ledger row, staging rows and rejected rows commit together; the file moves only after the
commit. A crash anywhere leaves the file in place: on restart it is loaded, or, when the ledger
already has it under the same name but never recorded the move, just moved.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import datetime
from pathlib import Path

import asyncpg

from app.db import Database, is_transient
from app.errors import (
    ConfigError,
    EmptyFile,
    FileRejected,
    FileUnreadable,
    TransientError,
    UnknownDataset,
)
from app.settings import Settings
from models.datasets import DatasetRegistry, DatasetSpec
from models.outcomes import FileOutcome
from services.ingest import ledger
from services.ingest.claim import (
    DROP,
    ClaimedFile,
    Origin,
    fail,
    finish_duplicate,
    gave_up,
    record,
)
from services.ingest.files import (
    FileFormat,
    check_state_folders,
    display_name,
    hash_fd,
    hold_read_lease,
    ignore_lease_breaks,
    is_candidate_name,
    is_regular_file,
    move_to_processed,
    open_no_follow,
    still_there,
)
from services.ingest.formats import format_named, format_of
from services.ingest.rows import LoadStats, Target
from services.ingest.source import Source

log = logging.getLogger(__name__)


class Loader:
    """Loads files into staging; one instance serves every worker of a process."""

    def __init__(self, settings: Settings, registry: DatasetRegistry, db: Database) -> None:
        self.settings = settings
        self.registry = registry
        self.db = db
        ignore_lease_breaks()

    async def ingest(
        self, path: Path, received_at: datetime | None = None, origin: Origin = DROP
    ) -> FileOutcome:
        """Load `path` once. Transient problems (database down, file still changing) raise."""
        name = display_name(path.name)
        if not is_candidate_name(path.name) or not is_regular_file(path):
            return FileOutcome(name, "skipped", error="not a regular, complete file")
        try:
            fd = open_no_follow(path)
        except PermissionError as exc:
            raise FileUnreadable(
                f"{name} cannot be read: {exc.strerror}",
                hint="Let loadbay's user read it (chmod a+r, or the uploader's umask); it waits in imports/",
            ) from None
        except OSError:  # gone, or a link swapped in after the candidate check
            return FileOutcome(name, "skipped", error="gone before it could be read")
        try:
            # Held until the file is moved (closing fd ends it): no writer can slip in meanwhile.
            leased = hold_read_lease(fd)
            sha256, identity = await asyncio.to_thread(hash_fd, fd)
            return await self._claim(ClaimedFile(path, fd, sha256, identity, received_at, origin, leased))
        finally:
            os.close(fd)

    async def _claim(self, file: ClaimedFile) -> FileOutcome:
        key = int.from_bytes(bytes.fromhex(file.sha256[:16]), "big", signed=True)
        async with self.db.connection() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
                return FileOutcome(file.name, "busy", error="another loader holds this content")
            try:
                if not still_there(file.path, file.identity):
                    return FileOutcome(file.name, "skipped", error="moved or changed by someone else")
                return await self._claimed(conn, file)
            finally:
                try:
                    await conn.execute("SELECT pg_advisory_unlock($1)", key)
                except (asyncpg.InterfaceError, asyncpg.PostgresConnectionError, OSError):
                    pass  # the connection is gone, and its session's locks with it

    async def _claimed(self, conn: asyncpg.Connection, file: ClaimedFile) -> FileOutcome:
        # Where the file will go must be safe before anything is loaded or recorded.
        check_state_folders(file.origin.root or file.path.parent)
        tried = await ledger.failed_attempts(conn, file.name, file.sha256)
        if tried is not None and tried.attempts >= self.settings.ingest_max_attempts:
            return await fail(conn, file, None, gave_up(file, tried))
        try:
            return await self._recognised(conn, file)
        except Exception as exc:
            if isinstance(exc, TransientError | ConfigError) or is_transient(exc):
                raise
            tried = await ledger.note_failed_attempt(conn, file.name, file.sha256, exc)
            if tried.attempts < self.settings.ingest_max_attempts:
                raise
            log.error("%s failed %d times in a row", file.name, tried.attempts, exc_info=exc)
            return await fail(conn, file, None, gave_up(file, tried))

    async def _recognised(self, conn: asyncpg.Connection, file: ClaimedFile) -> FileOutcome:
        dataset: DatasetSpec | None = None
        try:
            fmt = format_of(file.name)
            if file.identity.size == 0:
                raise EmptyFile("the file is empty (0 bytes)", hint="Drop it again once it has data")
            known = file.origin.dataset
            if known is None:
                known = await asyncio.to_thread(self._detect, file, fmt)
            dataset = known  # for the failure path below
            if file.origin.dedupe:
                existing = await ledger.find_loaded(conn, known.name, file.sha256)
                if existing is not None:
                    return await finish_duplicate(conn, file, known, existing)
            return await self._load(conn, file, fmt, known)
        except FileRejected as exc:
            return await fail(conn, file, dataset, exc)

    def _detect(self, file: ClaimedFile, fmt: FileFormat) -> DatasetSpec:
        by_name = self.registry.by_name(file.name)
        if by_name is not None:
            return by_name
        source = Source(file.fd, file.identity.size, file.sha256, file.name, fmt, file.leased)
        fields = format_named(fmt).field_names(source, None)
        by_fields = self.registry.by_header(fields)
        if by_fields is not None:
            return by_fields
        raise UnknownDataset(
            "no dataset matches this file's name or header",
            hint=f"Name it after a dataset pattern or declare one in datasets.toml. Datasets: "
            f"{self.registry.describe()}",
            file_name=file.name,
        )

    async def _load(
        self, conn: asyncpg.Connection, file: ClaimedFile, fmt: FileFormat, dataset: DatasetSpec
    ) -> FileOutcome:
        started = time.monotonic()
        async with conn.transaction():
            file_id = await record(conn, file, dataset, "loading")
            log.info("loading %s (#%d) as %s", file.name, file_id, dataset.name)
            target = Target(
                schema=self.settings.staging_schema,
                dataset=dataset,
                file_id=file_id,
                label=f"{file.name} (#{file_id})",
                source_timezone=self.settings.source_timezone,
                max_reject_ratio=self._reject_ratio(file.origin, dataset),
            )
            stats = await load_file(conn, file, fmt, target, self.registry)
            status = await ledger.finish_load(
                conn,
                file_id,
                rows_loaded=stats.rows_loaded,
                rows_rejected=stats.rows_rejected,
                warnings=stats.warnings,
            )
            await ledger.forget_attempts(conn, file.name)
            if file.origin.before_commit is not None:
                await file.origin.before_commit(conn, file_id)
            # Last check before the commit: the bytes loaded are the file as it still is.
            await asyncio.to_thread(file.check_unchanged)
        moved = move_to_processed(file.path, file_id, file.origin.root)
        await ledger.set_moved(conn, file_id, str(moved))
        log.info(
            "%s %s (#%d) into %s.%s: %d rows, %d rejected, %.2f s (%s path)",
            status,
            file.name,
            file_id,
            self.settings.staging_schema,
            dataset.table,
            stats.rows_loaded,
            stats.rows_rejected,
            time.monotonic() - started,
            stats.path,
        )
        return FileOutcome(
            file.name, status, file_id, dataset.name, stats.rows_loaded, stats.rows_rejected, moved_to=moved
        )

    def _reject_ratio(self, origin: Origin, dataset: DatasetSpec) -> float:
        for ratio in (origin.max_reject_ratio, dataset.max_reject_ratio):
            if ratio is not None:
                return ratio
        return self.settings.max_reject_ratio


async def load_file(
    conn: asyncpg.Connection, file: ClaimedFile, fmt: FileFormat, target: Target, registry: DatasetRegistry
) -> LoadStats:
    """Load a claimed file through its format module, inside the load's transaction."""
    await conn.execute(
        "SELECT set_config('TimeZone', $1, true), set_config('DateStyle', 'ISO, YMD', true)",
        target.source_timezone,
    )
    source = Source(file.fd, file.identity.size, file.sha256, target.label, fmt, file.leased)
    return await format_named(fmt).load(conn, source, target, registry)
