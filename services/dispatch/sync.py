"""DeTrack → outbox: the status of every sent, unfinished job, read back a day at a time.

`completed` and `completed_partial` mark the shipment `delivered`, with the time DeTrack's
milestones give. (The webhook brings the same news by push; this is the pull that never misses.)
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from typing import Any

import asyncpg

from app.schema import quote_ident
from app.settings import Settings
from models.detrack import FINISHED_STATUSES
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
    for day in days:
        jobs = await asyncio.to_thread(lambda d: list(client.jobs_on(d)), day["date"].isoformat())
        for job in jobs:
            counts.delivered += await _record_status(conn, wh, day["date"], job)


async def _record_status(conn: asyncpg.Connection, wh: str, day: date, job: dict[str, Any]) -> int:
    """Store DeTrack's status of a job; a finished one marks its shipment delivered (returns 1)."""
    status = job.get("status")
    row = await conn.fetchrow(
        f"""
        UPDATE {wh}.detrack_jobs SET detrack_status = $3, updated_at = now()
        WHERE do_number = $1 AND date = $2 AND detrack_status IS DISTINCT FROM $3
        RETURNING shipment_number
        """,
        job.get("do_number"),
        day,
        status,
    )
    if row is None or status not in FINISHED_STATUSES:
        return 0
    marked = await conn.execute(
        f"UPDATE {wh}.fact_shipment SET delivered = true, delivered_at = $2 "
        "WHERE shipment_number = $1 AND NOT delivered",
        row["shipment_number"],
        _finished_at(job),
    )
    return int(marked.split()[-1])


def _finished_at(job: dict[str, Any]) -> datetime:
    """When DeTrack's milestones say the job was finished; now if they do not say."""
    for milestone in reversed(job.get("milestones") or []):
        if milestone.get("status") in FINISHED_STATUSES and milestone.get("created_at"):
            try:
                return datetime.fromisoformat(str(milestone["created_at"]).replace("Z", "+00:00"))
            except ValueError:
                break
    return datetime.now(UTC)
