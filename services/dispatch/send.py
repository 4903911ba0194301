"""Outbox → DeTrack: settle rows a crash left `sending`, create in bulk, update.

Rows are claimed (`FOR UPDATE SKIP LOCKED`) and marked `sending` in a committed transaction
before any request leaves, so a crash can only leave rows `sending`; the next run asks DeTrack
about each of those (GET) before it sends anything, and a job is never created twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from app.backoff import doubling
from app.errorlog import log_error
from app.errors import TransientError
from app.schema import quote_ident
from app.settings import Settings
from models.outbox import Action, OutboxStatus
from services.dispatch.client import BULK_LIMIT, JITTER_S, LONGEST_WAIT_S, DetrackClient

log = logging.getLogger(__name__)


def retry_delay(attempts: int) -> float:
    """Seconds until a row that failed its `attempts`-th send is due again (1 s doubling, at
    most 300 s, plus jitter: the client's schedule)."""
    return doubling(max(1, attempts), longest=LONGEST_WAIT_S, jitter=JITTER_S)


@dataclass
class SendCounts:
    """What one run's sends did, by outcome."""

    sent: int = 0
    duplicate_confirmed: int = 0
    updated: int = 0
    failed: int = 0
    retry: int = 0
    recovered: int = 0
    delivered: int = 0  # counted by the status sync (sync.py)
    errors: list[str] = field(default_factory=list)


def _is_duplicate(errors: list[dict[str, Any]]) -> bool:
    """DeTrack says the do_number exists on that date ("is already taken", or "has duplicate")."""
    return any(
        e.get("field") == "do_number" and any("taken" in c or "duplicate" in c for c in e.get("codes", []))
        for e in errors
    )


def _describe(errors: list[dict[str, Any]]) -> str:
    """DeTrack's refusal as `field: code, code; field: code`."""
    return "; ".join(f"{e.get('field')}: {', '.join(e.get('codes', []))}" for e in errors) or "rejected"


class Sender:
    """Sends the outbox to DeTrack on one connection and counts what happened."""

    def __init__(self, conn: asyncpg.Connection, settings: Settings, client: DetrackClient) -> None:
        self.conn = conn
        self.client = client
        self.wh = quote_ident(settings.warehouse_schema)
        self.counts = SendCounts()

    async def _http(self, call: Any, *args: Any) -> Any:
        """A blocking client call on a thread, so that the event loop goes on."""
        return await asyncio.to_thread(call, *args)

    async def recover_sending(self) -> None:
        """Rows a crash left `sending`: DeTrack has the job or it does not."""
        rows = await self.conn.fetch(
            f"SELECT do_number, date FROM {self.wh}.detrack_jobs WHERE status = $1", OutboxStatus.SENDING
        )
        for row in rows:
            job = await self._http(self.client.get_job, row["do_number"], row["date"].isoformat())
            if job is None:
                await self._set(row, OutboxStatus.PENDING, error=None)
            else:
                await self._set_sent(row, job)
                self.counts.recovered += 1

    async def _claim(self, action: Action) -> list[asyncpg.Record]:
        """Up to BULK_LIMIT due rows of `action`, marked `sending` and committed before any request."""
        async with self.conn.transaction():
            return list(
                await self.conn.fetch(
                    f"""
                    UPDATE {self.wh}.detrack_jobs j
                    SET status = $3, attempts = attempts + 1, updated_at = now()
                    FROM (
                        SELECT do_number, date FROM {self.wh}.detrack_jobs
                        WHERE status = ANY($4::text[]) AND action = $1 AND next_attempt_at <= now()
                        ORDER BY date, do_number
                        LIMIT $2
                        FOR UPDATE SKIP LOCKED
                    ) due
                    WHERE j.do_number = due.do_number AND j.date = due.date
                    RETURNING j.do_number, j.date, j.payload::text, j.attempts
                    """,
                    action,
                    BULK_LIMIT,
                    OutboxStatus.SENDING,
                    [OutboxStatus.PENDING, OutboxStatus.RETRY],
                )
            )

    async def create_all(self) -> None:
        """Create the due new jobs, 100 a request, and settle each item of the answer."""
        while batch := await self._claim(Action.CREATE):
            payloads = [json.loads(r["payload"]) for r in batch]
            try:
                response = await self._http(self.client.create_jobs, payloads)
            except TransientError as exc:
                await self._retry_later(batch, str(exc))
                continue
            await self._reconcile(batch, response.status_code, response.json())

    async def _reconcile(self, batch: list[asyncpg.Record], status: int, body: dict[str, Any]) -> None:
        """Each row of a bulk create: created, confirmed as a duplicate, refused, or asked again."""
        by_key = {(r["do_number"], r["date"].isoformat()): r for r in batch}
        for job in body.get("data") or []:
            row = by_key.pop((job.get("do_number"), job.get("date")), None)
            if row is not None:
                await self._set_sent(row, job)
                self.counts.sent += 1
        for failure in body.get("errors") or []:
            row = by_key.pop((failure.get("do_number"), failure.get("date")), None)
            if row is None:
                continue
            errors = failure.get("errors") or []
            if _is_duplicate(errors):
                existing = await self._http(self.client.get_job, row["do_number"], row["date"].isoformat())
                if existing is not None:
                    await self._set_sent(row, existing)
                    self.counts.duplicate_confirmed += 1
                    continue
            await self._fail(row, _describe(errors), errors)
        for row in by_key.values():  # neither created nor refused by name: ask again later
            await self._retry_later([row], f"DeTrack answered {status} without naming this job")

    async def update_all(self) -> None:
        """PUT the due changed jobs, one request each."""
        while batch := await self._claim(Action.UPDATE):
            for row in batch:
                fields = json.loads(row["payload"])
                try:
                    response = await self._http(
                        self.client.update_job, row["do_number"], row["date"].isoformat(), fields
                    )
                except TransientError as exc:
                    await self._retry_later([row], str(exc))
                    continue
                body = response.json() if response.content else {}
                if response.status_code == 200:
                    await self._set_sent(row, body.get("data") or {})
                    self.counts.updated += 1
                else:
                    await self._fail(row, _describe(body.get("errors") or []), body.get("errors") or [])

    async def _set_sent(self, row: asyncpg.Record, job: dict[str, Any]) -> None:
        """DeTrack has the job: `sent`, with its id and status."""
        await self.conn.execute(
            f"""
            UPDATE {self.wh}.detrack_jobs
            SET status = $5, detrack_id = coalesce($3, detrack_id),
                detrack_status = coalesce($4, detrack_status), last_error = NULL, sent_at = now(),
                updated_at = now()
            WHERE do_number = $1 AND date = $2
            """,
            row["do_number"],
            row["date"],
            None if job.get("id") is None else str(job["id"]),
            job.get("status"),
            OutboxStatus.SENT,
        )

    async def _set(self, row: asyncpg.Record, status: OutboxStatus, error: str | None) -> None:
        """Set a row's status and last error."""
        await self.conn.execute(
            f"UPDATE {self.wh}.detrack_jobs SET status = $3, last_error = $4, updated_at = now() "
            "WHERE do_number = $1 AND date = $2",
            row["do_number"],
            row["date"],
            status,
            error,
        )

    async def _fail(self, row: asyncpg.Record, reason: str, errors: list[dict[str, Any]]) -> None:
        """Permanent: DeTrack refused the job. It is not sent again until the shipment changes."""
        await self._set(row, OutboxStatus.FAILED, reason)
        self.counts.failed += 1
        self.counts.errors.append(f"{row['do_number']} {row['date']}: {reason}")
        await log_error(
            self.conn,
            "dispatch",
            f"DeTrack refused job {row['do_number']}: {reason}",
            {"date": row["date"].isoformat(), "errors": errors},
            do_number=row["do_number"],
        )

    async def _retry_later(self, rows: list[asyncpg.Record], reason: str) -> None:
        """DeTrack is away for these rows: `retry`, due again after the backoff of their attempts."""
        for row in rows:
            await self.conn.execute(
                f"""
                UPDATE {self.wh}.detrack_jobs
                SET status = $5, last_error = $3, updated_at = now(),
                    next_attempt_at = now() + make_interval(secs => $4)
                WHERE do_number = $1 AND date = $2
                """,
                row["do_number"],
                row["date"],
                reason,
                retry_delay(row["attempts"]),
                OutboxStatus.RETRY,
            )
            self.counts.retry += 1
        await log_error(self.conn, "dispatch", reason, {"jobs": [r["do_number"] for r in rows]})
