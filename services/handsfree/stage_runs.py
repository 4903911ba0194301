"""`ops.stage_runs`: one row for every run of a stage, whatever started it.

A flag, an ingest or a chained run inserts its row when it starts. A scheduled run first claims
its tick: the row's unique (stage, tick) lets exactly one replica insert it (ON CONFLICT DO
NOTHING), and the others learn the tick is taken without relying on their clocks or timers.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Literal, TypeVar

import asyncpg

from app.db import Database

log = logging.getLogger(__name__)

Stage = Literal["pipeline", "dispatch", "analysis"]
Trigger = Literal["flag", "schedule", "chain", "ingest"]
Outcome = Literal["ok", "failed", "skipped"]
Summary = dict[str, Any]
STAGES: tuple[Stage, ...] = ("pipeline", "dispatch", "analysis")
# Which process ran it: host name and pid, no personal data.
RUNNER = f"{socket.gethostname()}:{os.getpid()}"
R = TypeVar("R")


async def start_run(conn: asyncpg.Connection, stage: Stage, trigger: Trigger) -> int:
    """The row of a run that starts now (not a scheduled one: see `claim_tick`)."""
    run_id: int = await conn.fetchval(
        "INSERT INTO ops.stage_runs (stage, trigger, runner) VALUES ($1, $2, $3) RETURNING id",
        stage,
        trigger,
        RUNNER,
    )
    return run_id


async def claim_tick(conn: asyncpg.Connection, stage: Stage, tick: datetime) -> int | None:
    """The row of the scheduled run at `tick`, or None when another process claimed it first."""
    run_id: int | None = await conn.fetchval(
        """
        INSERT INTO ops.stage_runs (stage, trigger, tick, runner) VALUES ($1, 'schedule', $2, $3)
        ON CONFLICT (stage, tick) WHERE tick IS NOT NULL DO NOTHING
        RETURNING id
        """,
        stage,
        tick,
        RUNNER,
    )
    return run_id


async def finish_run(conn: asyncpg.Connection, run_id: int, outcome: Outcome, summary: Summary) -> None:
    """Close a run's row with its outcome and summary."""
    await conn.execute(
        "UPDATE ops.stage_runs SET finished_at = clock_timestamp(), outcome = $2, summary = $3::jsonb "
        "WHERE id = $1",
        run_id,
        outcome,
        json.dumps(summary, default=str),
    )


async def finish_quietly(db: Database, run_id: int, outcome: Outcome, summary: Summary) -> None:
    """`finish_run`, but a database that is away only costs a warning: the run's own outcome
    (its log lines, its exit code) must not be replaced by a failure to record it."""
    try:
        async with db.connection() as conn:
            await finish_run(conn, run_id, outcome, summary)
    except Exception as exc:
        log.warning("could not record the end of stage run %d in ops.stage_runs: %s", run_id, exc)


def failure_summary(exc: BaseException) -> Summary:
    """What a failed run's summary holds: the error's type and message (no row content)."""
    return {"error": type(exc).__name__, "message": str(exc)[:500]}


def outcome_of(summary: Summary) -> Outcome:
    """A run that returned is `ok` unless its summary names an error (dispatch stopped early)."""
    return "failed" if summary.get("error") else "ok"


async def recorded(
    db: Database,
    stage: Stage,
    trigger: Trigger,
    call: Callable[[], Awaitable[R]],
    summarize: Callable[[R], Summary],
) -> R:
    """Run `call` (a flag's stage) as a row of ops.stage_runs; its result or exception passes through."""
    async with db.connection() as conn:
        run_id = await start_run(conn, stage, trigger)
    try:
        result = await call()
    except BaseException as exc:
        await finish_quietly(db, run_id, "failed", failure_summary(exc))
        raise
    summary = summarize(result)
    await finish_quietly(db, run_id, outcome_of(summary), summary)
    return result
