"""Which jobs DeTrack should have: payloads, do_number suffixes and vehicles, into the outbox.

A shipment keeps the do_number it was first given; a new shipment of a job on a date takes the
next suffix (`JOB`, `JOB(2)`, `JOB(3)` …). A changed shipment whose job is not finished is queued
for an update; a finished job is left alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

import asyncpg
from pydantic import ValidationError

from app.errorlog import log_error
from app.schema import quote_ident
from app.settings import Settings
from app.sqlfiles import sql
from models.detrack import FINISHED_STATUSES, AssignmentRules, Item, Job

log = logging.getLogger(__name__)

_SUFFIX = re.compile(r"^(?P<job>.*?)(?:\((?P<n>\d+)\))?$")


@dataclass
class Plan:
    new: int = 0
    changed: int = 0
    unsendable: int = 0
    jobs: list[Job] = field(default_factory=list)


def address_of(row: asyncpg.Record) -> str:
    parts = [
        row[k]
        for k in (
            "ship_address1",
            "ship_address2",
            "ship_address3",
            "ship_city",
            "ship_state",
            "ship_zip",
            "ship_country",
        )
    ]
    return ", ".join(p.strip() for p in parts if p and p.strip())


def build_job(row: asyncpg.Record, do_number: str, job_date: date, assign_to: str | None) -> Job:
    return Job(
        do_number=do_number,
        date=job_date.isoformat(),
        address=address_of(row),
        tracking_number=row["shipment_number"],
        company_name=row["ship_name"],
        deliver_to_collect_from=row["ship_contact"],
        phone_number=row["ship_phone"],
        notify_email=row["email"],
        instructions=row["instructions"],
        postal_code=row["ship_zip"],
        city=row["ship_city"],
        state=row["ship_state"],
        country=row["ship_country"],
        assign_to=assign_to,
        items=[Item(**item) for item in json.loads(row["items"])],
    )


def payload_hash(job: Job) -> str:
    content = job.to_api()
    content.pop("assign_to", None)  # the vehicle is ours to choose, not a change of the shipment
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


class Assigner:
    """Rules first, in order; then the vehicle with the fewest jobs that day (ties by name)."""

    def __init__(
        self, rules: AssignmentRules, vehicles: Callable[[], list[str]], load: Counter[tuple[str, str]]
    ):
        self.rules = rules
        self._vehicles = vehicles
        self._names: list[str] | None = None
        self.load = load  # (date, vehicle) → jobs

    def choose(self, job: Job) -> str | None:
        vehicle = next((r.vehicle for r in self.rules.rules if r.matches(job)), None)
        if vehicle is None and self.rules.fallback == "least_loaded":
            if self._names is None:
                self._names = self._vehicles()
            if self._names:
                vehicle = min(self._names, key=lambda name: (self.load[(job.date, name)], name))
        if vehicle is not None:
            self.load[(job.date, vehicle)] += 1
        return vehicle


async def plan_jobs(
    conn: asyncpg.Connection, settings: Settings, assigner_for: Callable[[Counter[tuple[str, str]]], Assigner]
) -> Plan:
    """Bring the outbox up to date with the warehouse's eligible shipments."""
    ship_via = [code.strip() for code in settings.dispatch_ship_via.split(",") if code.strip()]
    rows = await conn.fetch(sql("dispatch/eligible.sql", settings), ship_via)
    wh = quote_ident(settings.warehouse_schema)
    taken: dict[tuple[str, date], set[int]] = defaultdict(set)
    for existing in await conn.fetch(f"SELECT do_number, date FROM {wh}.detrack_jobs"):
        match = _SUFFIX.match(existing["do_number"])
        if match:
            taken[(match["job"], existing["date"])].add(int(match["n"] or 1))
    load: Counter[tuple[str, str]] = Counter(
        {
            (r["date"].isoformat(), r["assign_to"]): r["n"]
            for r in await conn.fetch(
                f"SELECT date, assign_to, count(*) AS n FROM {wh}.detrack_jobs "
                "WHERE assign_to IS NOT NULL GROUP BY 1, 2"
            )
        }
    )
    assigner = assigner_for(load)
    plan = Plan()
    upserts: list[tuple[object, ...]] = []
    for row in rows:
        job_date = row["scheduled_ship_date"]
        if row["do_number"] is None:
            if job_date is None:
                plan.unsendable += 1
                log.warning(
                    "shipment %s has no ScheduledShipDate; it cannot be dispatched", row["shipment_number"]
                )
                continue
            used = taken[(row["job_number"], job_date)]
            n = max(used, default=0) + 1
            used.add(n)
            do_number = row["job_number"] if n == 1 else f"{row['job_number']}({n})"
            action, assign_to = "create", None
        else:
            if row["status"] == "sending":
                continue  # settled first (recover_sending); a change is seen on the next run
            do_number, job_date, assign_to = row["do_number"], row["job_date"], row["assign_to"]
            action = row["action"]
        try:
            job = build_job(row, do_number, job_date, assign_to)
        except ValidationError:
            plan.unsendable += 1
            if not (row["status"] == "failed" and row["payload_hash"] == ""):  # not recorded yet
                await _unsendable(conn, settings, row, do_number, job_date)
            continue
        digest = payload_hash(job)
        if row["do_number"] is not None:
            if digest == row["payload_hash"]:
                continue
            if row["status"] == "sent" and row["detrack_status"] in FINISHED_STATUSES:
                continue  # delivered: the job is history
            action = "update" if row["status"] == "sent" or row["action"] == "update" else "create"
            plan.changed += 1
        else:
            plan.new += 1
        if job.assign_to is None:
            job.assign_to = assigner.choose(job)
        plan.jobs.append(job)
        upserts.append(
            (
                do_number,
                job_date,
                row["shipment_number"],
                action,
                job.assign_to,
                json.dumps(job.to_api()),
                digest,
            )
        )
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
        upserts,
    )
    return plan


async def _unsendable(
    conn: asyncpg.Connection, settings: Settings, row: asyncpg.Record, do_number: str, job_date: date
) -> None:
    """A shipment without an address: recorded as failed, never sent (DeTrack requires one)."""
    wh = quote_ident(settings.warehouse_schema)
    reason = "the shipment has no address (address lines, city, state, zip and country are all empty)"
    await conn.execute(
        f"""
        INSERT INTO {wh}.detrack_jobs
            (do_number, date, shipment_number, status, payload, payload_hash, last_error)
        VALUES ($1, $2, $3, 'failed', '{{}}'::jsonb, '', $4)
        ON CONFLICT (do_number, date) DO UPDATE SET status = 'failed', last_error = EXCLUDED.last_error,
            payload_hash = '', updated_at = now()
        """,
        do_number,
        job_date,
        row["shipment_number"],
        reason,
    )
    await log_error(
        conn, "dispatch", reason, {"shipment_number": row["shipment_number"]}, do_number=do_number
    )
