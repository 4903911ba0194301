"""A file in hand between its claim and its move: what was hashed, where it came from, and how
its claim ends when no rows load (a duplicate, a failure). Each ending writes one ledger row, and a
retry of an ending whose move failed reuses that row."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from app.errorlog import log_error
from app.errors import FileChanged, FileRejected, GaveUp
from models.datasets import DatasetSpec
from models.outcomes import FileOutcome
from services.ingest import ledger
from services.ingest.files import (
    FileIdentity,
    display_name,
    move_to_failed,
    move_to_processed,
    unchanged_since_hashed,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Origin:
    """Where a file comes from. A drop is found by its name or header and may be a duplicate; a
    file written by loadbay itself (an ERP pull) knows its dataset and is new by construction."""

    source: str = "drop"
    dataset: DatasetSpec | None = None
    # Rows are rejected one by one but never fail the whole file (None: the dataset's limit).
    max_reject_ratio: float | None = None
    # Same bytes loaded before: record a duplicate. Off for pulls, where a row changed and changed
    # back gives the same bytes as an earlier pull, yet must be loaded again to be current.
    dedupe: bool = True
    # Folder whose processed/ and failed/ receive the file (None: the file's own folder).
    root: Path | None = None
    # Runs inside the load's transaction just before it commits (the pull's watermark update):
    # the work and the load commit together or not at all.
    before_commit: Callable[[asyncpg.Connection, int], Awaitable[None]] | None = None


DROP = Origin()


@dataclass(frozen=True)
class ClaimedFile:
    """A file in hand: open, hashed, and where it came from."""

    path: Path
    fd: int
    sha256: str
    identity: FileIdentity
    received_at: datetime | None
    origin: Origin
    leased: bool = False  # a read lease on `fd` keeps writers out (Source.leased)

    @property
    def name(self) -> str:
        """The file's name as the ledger and the logs show it."""
        return display_name(self.path.name)

    def check_unchanged(self) -> None:
        """Raise FileChanged unless the file is still exactly the one that was hashed."""
        if not unchanged_since_hashed(self.path, self.fd, self.identity):
            raise FileChanged(
                f"{self.name} changed while it was loaded",
                hint="It was still being written; it will be loaded once it is complete",
            )


async def finish_duplicate(
    conn: asyncpg.Connection, file: ClaimedFile, dataset: DatasetSpec, existing: asyncpg.Record
) -> FileOutcome:
    """The same bytes were loaded before (`existing`): finish that load's move, or record and move
    this file as a duplicate."""
    if existing["name"] == file.name and existing["moved_to"] is None:
        # The load committed but the process stopped before the move: finish the move.
        moved = move_to_processed(file.path, existing["id"], file.origin.root)
        await ledger.set_moved(conn, existing["id"], str(moved))
        log.info("%s (#%d) was already loaded; moved it to %s", file.name, existing["id"], moved)
        return FileOutcome(file.name, existing["status"], existing["id"], dataset.name, moved_to=moved)
    # A duplicate recorded before whose move failed is finished, not recorded again.
    file_id = await ledger.find_unmoved(conn, file.name, file.sha256, "duplicate")
    if file_id is None:
        async with conn.transaction():
            file_id = await record(conn, file, dataset, "duplicate", duplicate_of=existing["id"])
            await ledger.forget_attempts(conn, file.name)
    moved = move_to_processed(file.path, file_id, file.origin.root)
    await ledger.set_moved(conn, file_id, str(moved))
    log.info(
        "%s (#%d) is a duplicate of #%d (%s); no rows loaded",
        file.name,
        file_id,
        existing["id"],
        existing["name"],
    )
    return FileOutcome(file.name, "duplicate", file_id, dataset.name, moved_to=moved)


async def fail(
    conn: asyncpg.Connection, file: ClaimedFile, dataset: DatasetSpec | None, exc: FileRejected
) -> FileOutcome:
    """Record the file as failed (ledger, error log) and move it to failed/ with its .error.json."""
    message = str(exc)
    retry = await ledger.find_unmoved(conn, file.name, file.sha256, "failed")
    if retry is not None:
        # Recorded as failed before, but the move did not happen: finish it, record nothing new.
        return await _move_failed(conn, file, dataset, exc, retry)
    async with conn.transaction():
        file_id = await record(conn, file, dataset, "failed", error=message)
        await log_error(
            conn,
            "ingest",
            message,
            {"error": _error_type(exc), "file": file.name, "line": exc.line_no},
            file_id=file_id,
        )
        await ledger.forget_attempts(conn, file.name)
    return await _move_failed(conn, file, dataset, exc, file_id)


async def _move_failed(
    conn: asyncpg.Connection,
    file: ClaimedFile,
    dataset: DatasetSpec | None,
    exc: FileRejected,
    file_id: int,
) -> FileOutcome:
    message = str(exc)
    moved = move_to_failed(
        file.path,
        file_id,
        {
            "file": file.name,
            "file_id": file_id,
            "dataset": dataset.name if dataset else None,
            "sha256": file.sha256,
            "failed_at": datetime.now(UTC).isoformat(),
            "error": _error_type(exc),
            "message": exc.message,
            "hint": exc.hint,
            "line": exc.line_no,
        },
        file.origin.root,
    )
    await ledger.set_moved(conn, file_id, str(moved))
    log.warning("failed %s (#%d): %s; moved to %s", file.name, file_id, message, moved)
    return FileOutcome(
        file.name, "failed", file_id, dataset.name if dataset else None, error=message, moved_to=moved
    )


def gave_up(file: ClaimedFile, tried: ledger.Tries) -> GaveUp:
    """The failure of a file whose tries all ended in an unexpected error."""
    return GaveUp(
        f"loading it failed {tried.attempts} times; last error {tried.error_type}: {tried.last_error}",
        hint="Keep the file and its .error.json for a bug report; drop the file again to retry "
        "(INGEST_MAX_ATTEMPTS sets the number of tries)",
        file_name=file.name,
        cause_type=tried.error_type,
    )


def _error_type(exc: FileRejected) -> str:
    """The error's class name; for a file loadbay gave up on, the class of the error behind it."""
    return exc.cause_type if isinstance(exc, GaveUp) else type(exc).__name__


async def record(
    conn: asyncpg.Connection,
    file: ClaimedFile,
    dataset: DatasetSpec | None,
    status: str,
    *,
    error: str | None = None,
    duplicate_of: int | None = None,
) -> int:
    """The file's row in the ledger; its id is the file's id everywhere else."""
    return await ledger.insert_file(
        conn,
        name=file.name,
        dataset=dataset.name if dataset else None,
        sha256=file.sha256,
        size_bytes=file.identity.size,
        status=status,
        received_at=file.received_at,
        error=error,
        duplicate_of=duplicate_of,
        source=file.origin.source,
    )
