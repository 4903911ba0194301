"""The file ledger `ingest.files` and its companions: every statement the loader runs on them."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

import asyncpg

from services.ingest.files import display_name
from services.ingest.rows import Reject


async def find_loaded(conn: asyncpg.Connection, dataset: str, sha256: str) -> asyncpg.Record | None:
    """The loaded ledger row of these bytes in this dataset, if any."""
    return await conn.fetchrow(
        """
        SELECT id, name, status, moved_to FROM ingest.files
        WHERE dataset = $1 AND sha256 = $2 AND status IN ('loaded', 'loaded_with_rejects')
        """,
        dataset,
        sha256,
    )


async def find_unmoved_load(conn: asyncpg.Connection, name: str, source: str) -> int | None:
    """A committed load of this file name whose move to processed/ never happened."""
    file_id: int | None = await conn.fetchval(
        "SELECT id FROM ingest.files WHERE name = $1 AND source = $2 AND moved_to IS NULL "
        "AND status IN ('loaded', 'loaded_with_rejects')",
        name,
        source,
    )
    return file_id


async def insert_file(
    conn: asyncpg.Connection,
    *,
    name: str,
    dataset: str | None,
    sha256: str,
    size_bytes: int,
    status: str,
    received_at: datetime | None,
    error: str | None = None,
    duplicate_of: int | None = None,
    source: str = "drop",
) -> int:
    """A new ledger row; its id is the file's id everywhere else."""
    file_id: int = await conn.fetchval(
        """
        INSERT INTO ingest.files
            (name, dataset, sha256, size_bytes, status, error, duplicate_of, source, received_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, coalesce($9, now()))
        RETURNING id
        """,
        name,
        dataset,
        sha256,
        size_bytes,
        status,
        error,
        duplicate_of,
        source,
        received_at,
    )
    return file_id


async def finish_load(
    conn: asyncpg.Connection,
    file_id: int,
    *,
    rows_loaded: int,
    rows_rejected: int,
    warnings: list[dict[str, object]],
) -> Literal["loaded", "loaded_with_rejects"]:
    """Record the load's rows, rejects and warnings; its status follows from the rejects."""
    status: Literal["loaded", "loaded_with_rejects"] = "loaded_with_rejects" if rows_rejected else "loaded"
    await conn.execute(
        """
        UPDATE ingest.files
        SET status = $2, rows_loaded = $3, rows_rejected = $4, warnings = $5::jsonb,
            loaded_at = clock_timestamp()
        WHERE id = $1
        """,
        file_id,
        status,
        rows_loaded,
        rows_rejected,
        json.dumps(warnings),
    )
    return status


async def write_rejects(conn: asyncpg.Connection, file_id: int, rejects: list[Reject]) -> None:
    """Record rejected rows as they are found (in the load's transaction): memory stays flat."""
    if rejects:
        await conn.copy_records_to_table(
            "rejected_rows",
            schema_name="ingest",
            columns=["file_id", "dataset", "record_no", "line_no", "column_name", "value", "reason", "raw"],
            records=_reject_records(file_id, rejects),
        )


def _reject_records(file_id: int, rejects: Iterable[Reject]) -> Iterable[tuple[object, ...]]:
    for r in rejects:
        yield (file_id, r.dataset, r.record_no, r.line_no, r.column, r.value, r.reason, r.raw)


async def set_moved(conn: asyncpg.Connection, file_id: int, moved_to: str) -> None:
    """Record where the file was moved (`processed/` or `failed/`)."""
    await conn.execute("UPDATE ingest.files SET moved_to = $2 WHERE id = $1", file_id, display_name(moved_to))


async def find_unmoved(conn: asyncpg.Connection, name: str, sha256: str, status: str) -> int | None:
    """A `failed` or `duplicate` row for these bytes under this name whose move never happened:
    a retry finishes that move instead of recording the file again."""
    file_id: int | None = await conn.fetchval(
        "SELECT max(id) FROM ingest.files WHERE name = $1 AND sha256 = $2 AND status = $3 "
        "AND moved_to IS NULL",
        name,
        sha256,
        status,
    )
    return file_id


@dataclass(frozen=True)
class Tries:
    """Tries at loading one file (name and content) that ended in an unexpected error."""

    attempts: int
    error_type: str
    last_error: str


async def failed_attempts(conn: asyncpg.Connection, name: str, sha256: str) -> Tries | None:
    """How often loading these bytes under this name ended in an unexpected error, and the last."""
    row = await conn.fetchrow(
        "SELECT attempts, error_type, last_error FROM ingest.file_attempts WHERE name = $1 AND sha256 = $2",
        name,
        sha256,
    )
    return Tries(row["attempts"], row["error_type"], row["last_error"]) if row else None


async def note_failed_attempt(conn: asyncpg.Connection, name: str, sha256: str, exc: BaseException) -> Tries:
    """Count one more unexpected error for this file."""
    tries = Tries(0, type(exc).__name__, (str(exc) or repr(exc))[:2000])
    attempts: int = await conn.fetchval(
        """
        INSERT INTO ingest.file_attempts AS a (name, sha256, attempts, error_type, last_error)
        VALUES ($1, $2, 1, $3, $4)
        ON CONFLICT (name, sha256) DO UPDATE
        SET attempts = a.attempts + 1, error_type = $3, last_error = $4, last_at = now()
        RETURNING attempts
        """,
        name,
        sha256,
        tries.error_type,
        tries.last_error,
    )
    return replace(tries, attempts=attempts)


async def forget_attempts(conn: asyncpg.Connection, name: str) -> None:
    """The file under this name is settled (loaded, duplicate or failed): its tries are history."""
    await conn.execute("DELETE FROM ingest.file_attempts WHERE name = $1", name)
