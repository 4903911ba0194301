"""ops.stage_runs and the stage runner against a real PostgreSQL: flag runs recorded, a scheduled
tick claimed once across runners, a busy stage skipped, a failure recorded and retried."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from prometheus_client import CollectorRegistry

from app.db import Database, asyncpg_dsn
from app.settings import Settings
from services.handsfree.runner import StageRunner
from services.handsfree.stage_runs import Stage, Summary
from services.handsfree.stages import StageCall, stage_calls
from services.pipeline import PIPELINE_LOCK_KEY
from tests.conftest import make_settings, run_cli
from tests.integration.helpers import METER_HEADER, drop, meter_rows
from tests.pg import fetch, run

T = TypeVar("T")
TICK = datetime(2024, 5, 1, 10, 5, tzinfo=UTC)


def with_runner(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    async def go() -> T:
        db = Database(asyncpg_dsn(settings.database_url.get_secret_value()), max_size=6)
        try:
            return await work(db)
        finally:
            await db.close()

    return run(go())


def stage_runs(dsn: str) -> list[tuple[Any, ...]]:
    rows = fetch(dsn, "SELECT stage, trigger, tick, outcome, summary FROM ops.stage_runs ORDER BY id")
    return [(r["stage"], r["trigger"], r["tick"], r["outcome"], json.loads(r["summary"])) for r in rows]


def test_flag_runs_are_recorded_with_their_summary(dsn: str, workdir: Path) -> None:
    drop(workdir / "imports", "meter_a.csv", METER_HEADER + meter_rows(7))
    assert run_cli(dsn, workdir, "--ingest", "imports", "--pipeline", "--analysis").returncode == 0

    runs = stage_runs(dsn)
    assert [r[:4] for r in runs] == [("pipeline", "flag", None, "ok"), ("analysis", "flag", None, "ok")]
    assert runs[0][4] == {
        "steps": {
            "shipments": {"files": 0, "rows": 0, "left_out": 0},
            "packages": {"files": 0, "rows": 0, "left_out": 0},
            "energy": {"files": 1, "rows": 2, "left_out": 0},
        },
        "shipments_changed": False,
    }
    assert runs[1][4]["report"] == str(workdir / "exports" / "report.html")
    assert runs[1][4]["rows"]["energy_daily"] == 1
    finished = fetch(dsn, "SELECT count(*) FROM ops.stage_runs WHERE finished_at >= started_at")[0][0]
    assert finished == 2


def test_a_tick_runs_once_whichever_runner_claims_it(settings: Settings, dsn: str) -> None:
    async def work(db: Database) -> list[object]:
        first = StageRunner(settings, db, stage_calls(settings, db))
        second = StageRunner(settings, db, stage_calls(settings, db))
        return list(
            await asyncio.gather(first.scheduled("pipeline", TICK), second.scheduled("pipeline", TICK))
        )

    outcomes = with_runner(settings, work)

    assert sorted(outcomes, key=str) == [None, "ok"]
    assert [r[:4] for r in stage_runs(dsn)] == [("pipeline", "schedule", TICK, "ok")]


def test_a_tick_that_finds_the_stage_running_elsewhere_is_skipped(settings: Settings, dsn: str) -> None:
    async def work(db: Database) -> object:
        other = await asyncpg.connect(asyncpg_dsn(settings.database_url.get_secret_value()))
        try:
            await other.execute("SELECT pg_advisory_lock($1)", PIPELINE_LOCK_KEY)  # another replica's run
            return await StageRunner(settings, db, stage_calls(settings, db)).scheduled("pipeline", TICK)
        finally:
            await other.close()

    assert with_runner(settings, work) == "skipped"
    assert stage_runs(dsn) == [("pipeline", "schedule", TICK, "skipped", {"reason": "the stage was running"})]


def failing_then_working(settings: Settings, db: Database) -> dict[Stage, StageCall]:
    calls = stage_calls(settings, db)
    attempts: list[int] = []
    real = calls["analysis"]

    async def call() -> Any:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("the exports folder is full")
        return await real.call()

    calls["analysis"] = StageCall("analysis", real.lock_key, call, real.summarize, real.text)
    return calls


def test_a_failed_scheduled_run_is_recorded_counted_alerted_and_the_next_tick_runs(
    settings: Settings, dsn: str
) -> None:
    alerts: list[tuple[str, str]] = []
    metrics = CollectorRegistry()

    async def work(db: Database) -> list[object]:
        runner = StageRunner(
            settings, db, failing_then_working(settings, db), lambda k, t: alerts.append((k, t)), metrics
        )
        first = await runner.scheduled("analysis", TICK)
        second = await runner.scheduled("analysis", TICK.replace(minute=10))
        return [first, second]

    assert with_runner(settings, work) == ["failed", "ok"]
    runs = stage_runs(dsn)
    assert [r[:4] for r in runs] == [
        ("analysis", "schedule", TICK, "failed"),
        ("analysis", "schedule", TICK.replace(minute=10), "ok"),
    ]
    assert runs[0][4] == {"error": "RuntimeError", "message": "the exports folder is full"}
    errors = fetch(dsn, "SELECT component, message, detail FROM ingest.error_log")
    assert [(e["component"], e["message"], json.loads(e["detail"])) for e in errors] == [
        ("analysis", "the exports folder is full", {"error": "RuntimeError", "trigger": "schedule"})
    ]
    assert alerts == [
        ("stage_failed", "analysis (schedule run) failed: RuntimeError: the exports folder is full")
    ]
    sample = metrics.get_sample_value
    labels = {"stage": "analysis", "trigger": "schedule"}
    assert sample("loadbay_stage_runs_total", {**labels, "outcome": "failed"}) == 1
    assert sample("loadbay_stage_runs_total", {**labels, "outcome": "ok"}) == 1


def test_a_pipeline_that_changed_shipments_asks_for_a_dispatch(dsn: str, workdir: Path) -> None:
    settings = make_settings(dsn, workdir, dispatch_after_pipeline=True, detrack_api_key="k")
    drop(
        workdir / "imports",
        "shipments_a.csv",
        "JobNumber,ShipmentNumber,ShipVia,IsPartial,ScheduledShipDate,ShipCity\nJ1,S1,10005,1,2024-06-03,Leeds\n",
    )
    assert run_cli(dsn, workdir, "--ingest", "imports").returncode == 0
    asked: list[str] = []

    async def work(db: Database) -> list[object]:
        runner = StageRunner(settings, db, stage_calls(settings, db))
        runner.requests["dispatch"].request = asked.append  # type: ignore[method-assign,assignment]
        first = await runner.triggered("pipeline", "ingest")
        second = await runner.triggered("pipeline", "ingest")  # nothing new: no dispatch
        return [first, second]

    assert with_runner(settings, work) == ["ok", "ok"]
    assert asked == ["chain"]
    summaries: list[Summary] = [r[4] for r in stage_runs(dsn)]
    assert [s["shipments_changed"] for s in summaries] == [True, False]
