"""`--pipeline`: staging → warehouse, incremental and idempotent.

Each step applies the loaded files it has not applied yet (`warehouse.pipeline_files` records
which), in one transaction with that record, so a crash or a second run never applies a file
twice and never skips one, whatever order files committed in. One pipeline runs at a time
across all processes (an advisory lock).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from app.db import Database
from app.errorlog import log_error
from app.schema import quote_ident
from app.settings import Settings
from app.sqlfiles import sql
from services.energy import EnergyResult, MeterWindow, compute_energy, summarize_reading_ranges

log = logging.getLogger(__name__)

PIPELINE_LOCK_KEY = 0x6C6F616462617902  # "loadbay" + 2
BEGINNING = datetime(1970, 1, 1, tzinfo=UTC)
HALF_HOUR = timedelta(minutes=30)


@dataclass(frozen=True)
class UpsertStep:
    """A step that upserts staging rows into a fact table, one current row per key."""

    name: str
    statement: str
    table: str
    key: str
    fact: str


UPSERT_STEPS = (
    UpsertStep("shipments", "pipeline/shipments.sql", "shipments", "shipment_number", "fact_shipment"),
    UpsertStep("packages", "pipeline/packages.sql", "packages", "package_id", "fact_package"),
)


@dataclass(frozen=True)
class LeftOut:
    """Rows of one file that an upsert step did not apply, by reason (see sql/pipeline/left_out.sql)."""

    file_id: int
    without_key: int
    superseded: int
    older: int

    @property
    def rows(self) -> int:
        """All rows of the file the step did not apply."""
        return self.without_key + self.superseded + self.older


def describe_left_out(key: str, without_key: int, superseded: int, older: int) -> str:
    """`2 without package_id, 1 superseded by a later version`: the non-zero counts, in words."""
    reasons = [
        (without_key, f"without {key}"),
        (superseded, "superseded by a later version"),
        (older, "older than the warehouse's version"),
    ]
    return ", ".join(f"{count} {reason}" for count, reason in reasons if count)


@dataclass(frozen=True)
class StepResult:
    """One pipeline step: files applied, rows changed, seconds, and a line of detail."""

    step: str
    files: int
    rows: int
    seconds: float
    detail: str = ""
    left_out: int = 0


@dataclass
class PipelineResult:
    """What a --pipeline run did, step by step."""

    steps: list[StepResult] = field(default_factory=list)
    energy: EnergyResult = field(default_factory=EnergyResult)

    @property
    def shipments_changed(self) -> bool:
        """Shipments or their packages were inserted or changed (DISPATCH_AFTER_PIPELINE)."""
        return any(s.rows for s in self.steps if s.step in ("shipments", "packages"))

    def summary(self) -> str:
        """The table --pipeline prints."""
        lines = [f"{'step':<10} {'files':>5} {'rows':>9} {'seconds':>8}  detail"]
        lines += [f"{s.step:<10} {s.files:>5} {s.rows:>9} {s.seconds:>8.2f}  {s.detail}" for s in self.steps]
        return "\n".join(lines)


async def run_pipeline(settings: Settings, db: Database) -> PipelineResult:
    """Apply every loaded file not yet applied: shipments, packages, then energy."""
    result = PipelineResult()
    async with db.connection() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", PIPELINE_LOCK_KEY)
        try:
            for step in UPSERT_STEPS:
                result.steps.append(await _upsert_step(conn, settings, step))
            energy_step, result.energy = await _energy_step(conn, settings, db)
            result.steps.append(energy_step)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", PIPELINE_LOCK_KEY)
    return result


async def _pending(conn: asyncpg.Connection, settings: Settings, step: str, datasets: list[str]) -> list[int]:
    rows = await conn.fetch(
        f"""
        SELECT f.id FROM ingest.files f
        WHERE f.dataset = ANY($1::text[]) AND f.status IN ('loaded', 'loaded_with_rejects')
          AND NOT EXISTS (
              SELECT 1 FROM {quote_ident(settings.warehouse_schema)}.pipeline_files p
              WHERE p.step = $2 AND p.file_id = f.id
          )
        ORDER BY f.id
        """,
        datasets,
        step,
    )
    return [r["id"] for r in rows]


async def _mark_done(conn: asyncpg.Connection, settings: Settings, step: str, files: list[int]) -> None:
    await conn.execute(
        f"INSERT INTO {quote_ident(settings.warehouse_schema)}.pipeline_files (step, file_id) "
        "SELECT $1, unnest($2::bigint[])",
        step,
        files,
    )


async def _upsert_step(conn: asyncpg.Connection, settings: Settings, step: UpsertStep) -> StepResult:
    started = time.monotonic()
    files = await _pending(conn, settings, step.name, [step.name])
    rows = 0
    left_out: list[LeftOut] = []
    if files:
        async with conn.transaction():
            left_out = await _left_out(conn, settings, step, files)
            status = await conn.execute(sql(step.statement, settings), files)
            rows = int(status.split()[-1])
            await _record_left_out(conn, step, left_out)
            await _mark_done(conn, settings, step.name, files)
    detail = "nothing new" if not files else f"{rows} rows inserted or changed"
    if left_out:
        detail += "; left out: " + describe_left_out(
            step.key,
            sum(x.without_key for x in left_out),
            sum(x.superseded for x in left_out),
            sum(x.older for x in left_out),
        )
    outcome = StepResult(
        step.name, len(files), rows, time.monotonic() - started, detail, sum(x.rows for x in left_out)
    )
    log.info("pipeline %s: %d new files, %s (%.2f s)", step.name, len(files), detail, outcome.seconds)
    return outcome


async def _left_out(
    conn: asyncpg.Connection, settings: Settings, step: UpsertStep, files: list[int]
) -> list[LeftOut]:
    statement = (
        sql("pipeline/left_out.sql", settings)
        .replace("{table}", quote_ident(step.table))
        .replace("{key}", quote_ident(step.key))
        .replace("{fact}", quote_ident(step.fact))
    )
    return [LeftOut(**dict(r)) for r in await conn.fetch(statement, files)]


async def _record_left_out(conn: asyncpg.Connection, step: UpsertStep, left_out: list[LeftOut]) -> None:
    """One ingest.error_log row per file with rows lost to the warehouse (no key, or older than
    what it holds): counts and ids, no row content. A version superseded by a later one of the same
    run is routine, so it is counted in the summary line only."""
    for x in left_out:
        if not (x.without_key or x.older):
            continue
        reasons = describe_left_out(step.key, x.without_key, x.superseded, x.older)
        await log_error(
            conn,
            "pipeline",
            f"{step.name}: {x.rows} rows of file {x.file_id} not applied to the warehouse: {reasons}",
            {
                "step": step.name,
                "key": step.key,
                "without_key": x.without_key,
                "superseded": x.superseded,
                "older": x.older,
            },
            file_id=x.file_id,
        )


async def _energy_step(
    conn: asyncpg.Connection, settings: Settings, db: Database
) -> tuple[StepResult, EnergyResult]:
    started = time.monotonic()
    files = await _pending(conn, settings, "energy", ["meter_readings", "sensor_readings"])
    energy = EnergyResult()
    if files:
        touched = await conn.fetch(sql("pipeline/energy_windows.sql", settings), files)
        windows = [_window(r) for r in touched]
        await summarize_reading_ranges(conn, settings)
        energy = await _compute_in_parallel(settings, db, windows)
        # Only now are the files done: had a group failed, they would all be recomputed next
        # time, which is harmless because every write is an idempotent upsert.
        async with conn.transaction():
            await _mark_done(conn, settings, "energy", files)
    detail = (
        "nothing new"
        if not files
        else f"{energy.meters} meters, {energy.readings} readings → {energy.intervals} half-hours "
        f"({energy.missing} missing), {energy.gaps} gaps, {energy.anomalies} anomalies"
    )
    outcome = StepResult("energy", len(files), energy.intervals, time.monotonic() - started, detail)
    log.info("pipeline energy: %d new files, %s (%.2f s)", len(files), detail, outcome.seconds)
    return outcome, energy


async def _compute_in_parallel(settings: Settings, db: Database, windows: list[MeterWindow]) -> EnergyResult:
    """Meters are independent: split them over PIPELINE_WORKERS connections (PostgreSQL runs a
    query on one core; this uses the others)."""
    groups = [windows[k :: settings.pipeline_workers] for k in range(settings.pipeline_workers)]

    async def compute(group: list[MeterWindow]) -> EnergyResult:
        async with db.connection() as worker, worker.transaction():
            return await compute_energy(worker, settings, group)

    outcomes = await asyncio.gather(*(compute(g) for g in groups if g), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    results = [o for o in outcomes if isinstance(o, EnergyResult)]
    return EnergyResult(
        meters=sum(r.meters for r in results),
        readings=sum(r.readings for r in results),
        intervals=sum(r.intervals for r in results),
        missing=sum(r.missing for r in results),
        gaps=sum(r.gaps for r in results),
        anomalies=sum(r.anomalies for r in results),
        seconds=max((r.seconds for r in results), default=0.0),
    )


def _window(row: asyncpg.Record) -> MeterWindow:
    checkpoint: datetime | None = row["checkpoint_ts"]
    if checkpoint is None:
        return MeterWindow(row["meter_id"], BEGINNING, BEGINNING)
    # Half-hours from the first boundary at or after the checkpoint are recomputed in full.
    emit_from = BEGINNING + HALF_HOUR * -(-(checkpoint - BEGINNING) // HALF_HOUR)
    return MeterWindow(row["meter_id"], checkpoint, emit_from, row["e_rel"])


async def record_failure(db: Database, exc: BaseException) -> None:
    """Put a pipeline failure in ingest.error_log; if the database is away, the log has it."""
    try:
        async with db.connection() as conn:
            await log_error(conn, "pipeline", str(exc), {"error": type(exc).__name__})
    except Exception:
        log.warning("could not record the pipeline failure in ingest.error_log", exc_info=True)
