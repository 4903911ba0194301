"""Which jobs DeTrack should have: the eligible shipments read, decided and written to the outbox.

A shipment keeps the do_number it was first given; a new shipment of a job on a date takes the
next suffix (`JOB`, `JOB(2)`, `JOB(3)` …). A changed shipment whose job is not finished is queued
for an update; a finished job is left alone. The rules are in `decide.py`; this module is the
reading and writing around them.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from app.errorlog import log_error
from app.schema import quote_ident
from app.settings import Settings
from app.sqlfiles import sql
from models.detrack import Job
from models.outbox import ship_via_codes
from services.dispatch.decide import (
    Assigner,
    Decision,
    DoNumbers,
    NoAddress,
    NoDate,
    Outboxed,
    Queue,
    Shipment,
    decide,
    van_loads,
)

__all__ = ["Assigner", "Plan", "plan_jobs"]

log = logging.getLogger(__name__)

NO_ADDRESS = "the shipment has no address (address lines, city, state, zip and country are all empty)"


@dataclass
class Plan:
    """What planning found: new and changed shipments, ones that cannot be jobs, the jobs queued."""

    new: int = 0
    changed: int = 0
    unsendable: int = 0
    jobs: list[Job] = field(default_factory=list)

    def count(self, decision: Decision) -> None:
        """Add one decision to the tallies."""
        if isinstance(decision, Queue):
            if decision.changed:
                self.changed += 1
            else:
                self.new += 1
        elif isinstance(decision, NoDate | NoAddress):
            self.unsendable += 1


async def plan_jobs(
    conn: asyncpg.Connection, settings: Settings, assigner_for: Callable[[Counter[tuple[str, str]]], Assigner]
) -> Plan:
    """Bring the outbox up to date with the warehouse's eligible shipments."""
    wh = quote_ident(settings.warehouse_schema)
    async with conn.transaction():  # the list written is the list read, whatever runs beside
        await conn.execute(sql("dispatch/ship_via.sql", settings), ship_via_codes(settings.dispatch_ship_via))
        rows = await conn.fetch(sql("dispatch/eligible.sql", settings))
    do_numbers = DoNumbers(
        (r["do_number"], r["date"])
        for r in await conn.fetch(f"SELECT do_number, date FROM {wh}.detrack_jobs")
    )
    loads = await conn.fetch(
        f"SELECT date, assign_to, count(*) AS n FROM {wh}.detrack_jobs "
        "WHERE assign_to IS NOT NULL GROUP BY 1, 2"
    )
    assigner = assigner_for(van_loads((r["date"], r["assign_to"], r["n"]) for r in loads))
    plan = Plan()
    queued: list[tuple[object, ...]] = []
    for row in rows:
        shipment = Shipment.from_row(row)
        decision = decide(shipment, Outboxed.from_row(row), do_numbers)
        plan.count(decision)
        if isinstance(decision, NoDate):
            log.warning(
                "shipment %s has no ScheduledShipDate; it cannot be dispatched", shipment.shipment_number
            )
        elif isinstance(decision, NoAddress) and not decision.recorded:
            await _record_no_address(conn, wh, shipment, decision)
        elif isinstance(decision, Queue):
            job = decision.job
            if job.assign_to is None:
                job = job.model_copy(update={"assign_to": assigner.choose(job)})
            plan.jobs.append(job)
            queued.append(
                (
                    job.do_number,
                    decision.job_date,
                    shipment.shipment_number,
                    decision.action,
                    job.assign_to,
                    json.dumps(job.to_api()),
                    decision.digest,
                )
            )
    await _queue(conn, wh, queued)
    return plan


async def _queue(conn: asyncpg.Connection, wh: str, queued: list[tuple[object, ...]]) -> None:
    """Write the queued jobs as `pending` rows, new or replacing the job's row (attempts reset)."""
    await conn.executemany(
        f"""
        INSERT INTO {wh}.detrack_jobs
            (do_number, date, shipment_number, action, assign_to, payload, payload_hash)
        VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)
        ON CONFLICT (do_number, date) DO UPDATE
        SET action = EXCLUDED.action, assign_to = EXCLUDED.assign_to, payload = EXCLUDED.payload,
            payload_hash = EXCLUDED.payload_hash, status = 'pending', attempts = 0,
            next_attempt_at = now(), last_error = NULL, updated_at = now()
        """,
        queued,
    )


async def _record_no_address(
    conn: asyncpg.Connection, wh: str, shipment: Shipment, decision: NoAddress
) -> None:
    """A shipment without an address: recorded as failed, never sent (DeTrack requires one).

    payload_hash '' marks the row as recorded for this reason, so the next run does not log it
    again (`decide` reads it back)."""
    await conn.execute(
        f"""
        INSERT INTO {wh}.detrack_jobs
            (do_number, date, shipment_number, status, payload, payload_hash, last_error)
        VALUES ($1, $2, $3, 'failed', '{{}}'::jsonb, '', $4)
        ON CONFLICT (do_number, date) DO UPDATE SET status = 'failed', last_error = EXCLUDED.last_error,
            payload_hash = '', updated_at = now()
        """,
        decision.do_number,
        decision.date,
        shipment.shipment_number,
        NO_ADDRESS,
    )
    await log_error(
        conn,
        "dispatch",
        NO_ADDRESS,
        {"shipment_number": shipment.shipment_number},
        do_number=decision.do_number,
    )
