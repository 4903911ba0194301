"""`--dispatch`: eligible shipments → DeTrack jobs on the right van, statuses back.

One dispatch runs at a time across all processes (an advisory lock); within it the outbox rows
are claimed with `FOR UPDATE SKIP LOCKED`. The order of a run: plan the outbox from the
warehouse, settle rows a crash left `sending`, create new jobs in bulk, update changed ones, and
read back the status of every job not yet finished. The rules of planning are in `decide.py`
(pure), the reading and writing around them in `plan.py`; `send.py` and `sync.py` talk to
DeTrack through `client.py`.
"""

from __future__ import annotations

import json
import logging
import tomllib
from dataclasses import dataclass, field

import asyncpg
from pydantic import ValidationError

from app.db import Database
from app.errorlog import log_error
from app.errors import ConfigError, TransientError
from app.schema import quote_ident
from app.settings import Settings
from app.text import table
from models.detrack import AssignmentRules
from models.outbox import OutboxStatus
from services.dispatch.client import DetrackClient
from services.dispatch.plan import Assigner, plan_jobs
from services.dispatch.send import SendCounts, Sender
from services.dispatch.sync import sync_statuses

log = logging.getLogger(__name__)

DISPATCH_LOCK_KEY = 0x6C6F616462617903  # "loadbay" + 3


@dataclass
class DispatchResult:
    """What a `--dispatch` run did: planned, sent, and the outbox by status at the end."""

    dry_run: bool
    new: int = 0
    changed: int = 0
    counts: SendCounts = field(default_factory=SendCounts)
    by_status: dict[OutboxStatus, int] = field(default_factory=dict)
    payloads: list[dict[str, object]] = field(default_factory=list)
    error: str | None = None

    @property
    def failed(self) -> bool:
        """True when the run stopped early or a job ended `failed` or `retry` (exit code 1)."""
        by_status = self.by_status
        return bool(self.error or by_status.get(OutboxStatus.FAILED) or by_status.get(OutboxStatus.RETRY))

    def summary(self) -> str:
        """The lines `--dispatch` prints: the payloads of a dry run, else a table of counts."""
        stopped = [f"stopped early: {self.error}"] if self.error else []
        if self.dry_run:
            lines = [json.dumps(p, ensure_ascii=False) for p in self.payloads]
            lines.append(f"dry run: {len(self.payloads)} jobs would be sent or updated; nothing was sent")
            return "\n".join(lines)
        c = self.counts
        rows = [
            ("new shipments planned", self.new),
            ("changed shipments", self.changed),
            ("jobs created", c.sent),
            ("duplicates confirmed", c.duplicate_confirmed),
            ("recovered after a crash", c.recovered),
            ("jobs updated", c.updated),
            ("marked delivered", c.delivered),
            ("failed (outbox)", self.by_status.get(OutboxStatus.FAILED, 0)),
            ("retry later (outbox)", self.by_status.get(OutboxStatus.RETRY, 0)),
            ("sent (outbox)", self.by_status.get(OutboxStatus.SENT, 0)),
        ]
        return "\n".join(table(rows, right=(1,)) + stopped)


def load_rules(settings: Settings) -> AssignmentRules:
    """The vehicle rules of `DISPATCH_RULES` (none when the file does not exist)."""
    path = settings.dispatch_rules
    if not path.exists():
        return AssignmentRules()
    try:
        return AssignmentRules.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise ConfigError(
            f"{path} is not a valid rules file: {exc}", hint="See the README, 'Dispatch'"
        ) from None


async def run_dispatch(settings: Settings, db: Database, *, dry_run: bool = False) -> DispatchResult:
    """`--dispatch`: plan the outbox, send it to DeTrack, read statuses back (one run at a time)."""
    key = settings.detrack_api_key
    if not dry_run and not key.get_secret_value():
        raise ConfigError(
            "DETRACK_API_KEY is empty, so jobs cannot be sent",
            hint="Set DETRACK_API_KEY, or run --dispatch --dry-run to see the payloads",
        )
    rules = load_rules(settings)
    client = DetrackClient(
        settings.detrack_base_url,
        key,
        settings.detrack_rate_limit_per_minute,
        timeout_s=settings.detrack_timeout_seconds,
        retries=settings.detrack_max_retries,
    )
    result = DispatchResult(dry_run=dry_run)
    async with db.connection() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", DISPATCH_LOCK_KEY)
        try:
            if dry_run:
                result.payloads = await _dry_run(conn, settings, rules)
            else:
                await _send(conn, settings, rules, client, result)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", DISPATCH_LOCK_KEY)
    log.info(
        "dispatch: %d created, %d duplicates confirmed, %d updated, %d delivered, %d failed, %d to retry",
        result.counts.sent,
        result.counts.duplicate_confirmed,
        result.counts.updated,
        result.counts.delivered,
        result.by_status.get(OutboxStatus.FAILED, 0),
        result.by_status.get(OutboxStatus.RETRY, 0),
    )
    return result


async def _dry_run(
    conn: asyncpg.Connection, settings: Settings, rules: AssignmentRules
) -> list[dict[str, object]]:
    """The payloads a run would send, masked; planned in a transaction that is thrown away."""
    payloads: list[dict[str, object]] = []
    try:
        async with conn.transaction():
            plan = await plan_jobs(conn, settings, lambda load: Assigner(rules, lambda: [], load))
            payloads = [job.masked() for job in plan.jobs]
            raise _RollBack
    except _RollBack:
        pass
    return payloads


async def _send(
    conn: asyncpg.Connection,
    settings: Settings,
    rules: AssignmentRules,
    client: DetrackClient,
    result: DispatchResult,
) -> None:
    """Plan, settle rows a crash left `sending`, create, update, read statuses back; into `result`."""
    sender = Sender(conn, settings, client)
    try:
        plan = await plan_jobs(conn, settings, lambda load: Assigner(rules, client.vehicle_names, load))
        result.new, result.changed = plan.new, plan.changed
        await sender.recover_sending()
        await sender.create_all()
        await sender.update_all()
        await sync_statuses(conn, settings, client, sender.counts)
    except TransientError as exc:
        # DeTrack is away: what was not sent stays in the outbox for the next run.
        result.error = str(exc)
        log.error("dispatch stopped early: %s", exc)
        await log_error(conn, "dispatch", str(exc), {"error": type(exc).__name__})
    result.counts = sender.counts
    wh = quote_ident(settings.warehouse_schema)
    result.by_status = {
        OutboxStatus(r["status"]): r["n"]
        for r in await conn.fetch(f"SELECT status, count(*) AS n FROM {wh}.detrack_jobs GROUP BY status")
    }


class _RollBack(Exception):
    """A dry run plans inside a transaction and throws the plan away."""
