"""`ingest.error_log`: every component records its failures here (the seed system's ErrorLog)."""

from __future__ import annotations

import json

import asyncpg


async def log_error(
    conn: asyncpg.Connection,
    component: str,
    message: str,
    detail: dict[str, object],
    *,
    file_id: int | None = None,
    do_number: str | None = None,
) -> None:
    """One row in ingest.error_log: what failed, where, and a detail that holds no personal data."""
    await conn.execute(
        "INSERT INTO ingest.error_log (component, message, detail, file_id, do_number) "
        "VALUES ($1, $2, $3::jsonb, $4, $5)",
        component,
        message,
        json.dumps(detail, default=str),
        file_id,
        do_number,
    )
