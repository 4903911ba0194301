"""DeTrack → outbox: the status of every sent, unfinished job, read back a day at a time.

`completed` and `completed_partial` mark the shipment `delivered`, with the time DeTrack's
milestones give; status and proof of delivery fill the same columns as the webhook's pushes, by
the same rule (sql/detrack/apply_job_event.sql). The webhook brings the news by push; this is
the pull that never misses.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from app.schema import quote_ident
from app.settings import Settings
from app.sqlfiles import sql
from models.detrack import FINISHED_STATUSES
from models.detrack_events import NotAJob, job_event
from models.outbox import OutboxStatus
from services.dispatch.client import DetrackClient
from services.dispatch.send import SendCounts


async def sync_statuses(
    conn: asyncpg.Connection, settings: Settings, client: DetrackClient, counts: SendCounts
) -> None:
    """Read back the status of every sent, unfinished job, a day at a time; count deliveries."""
    wh = quote_ident(settings.warehouse_schema)
    days = await conn.fetch(
        f"SELECT DISTINCT date FROM {wh}.detrack_jobs WHERE status = $2 "
        "AND (detrack_status IS NULL OR detrack_status <> ALL($1::text[])) ORDER BY date",
        list(FINISHED_STATUSES),
        OutboxStatus.SENT,
    )
    statement = sql("detrack/apply_job_event.sql", settings)
    for day in days:
        jobs = await asyncio.to_thread(lambda d: list(client.jobs_on(d)), day["date"].isoformat())
        for job in jobs:
            counts.delivered += await _record_status(conn, statement, job)


async def _record_status(conn: asyncpg.Connection, statement: str, job: dict[str, Any]) -> int:
    """Store DeTrack's status and proof of delivery of a job by the webhook's rule (never older
    over newer); a finished one marks its shipment delivered (returns the shipments marked)."""
    try:
        event = job_event(job)
    except NotAJob:
        return 0  # not one of loadbay's jobs (no do_number or date): nothing to store
    row = await conn.fetchrow(statement, *event.parameters())
    return int(row["delivered"]) if row is not None else 0
