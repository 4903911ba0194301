"""Runs stages in watch mode: on their schedules, after loads (PIPELINE_ON_INGEST) and after a
pipeline that changed shipments (DISPATCH_AFTER_PIPELINE).

Across replicas each scheduled tick runs once: the tick is claimed in ops.stage_runs, then the
stage's own advisory lock is probed with pg_try_advisory_lock, so a replica that finds the stage
running (here or elsewhere) records the tick `skipped` and says so at debug level. A run that
fails is logged, written to ingest.error_log, counted on /metrics and alerted; the schedule goes
on and the next tick tries again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import asyncpg
from prometheus_client import CollectorRegistry, Counter

from app.db import Database
from app.errorlog import log_error
from app.settings import Settings
from models.schedule import Schedule
from services.handsfree.stage_runs import (
    Outcome,
    Stage,
    Summary,
    Trigger,
    claim_tick,
    failure_summary,
    finish_quietly,
    finish_run,
    outcome_of,
    start_run,
)
from services.handsfree.stages import StageCall

log = logging.getLogger(__name__)

# (kind, one line): what the runner tells the alerter; see services.handsfree.alerts.
Notify = Callable[[str, str], None]


class StageRunner:
    """Runs stages for watch mode's services and records each run; a service itself, so that the
    runs it started (ingest, chain) finish or are stopped with the others."""

    name = "stage runner"

    def __init__(
        self,
        settings: Settings,
        db: Database,
        calls: Mapping[Stage, StageCall],
        notify: Notify | None = None,
        metrics: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.calls = calls
        self.notify = notify
        self._busy: set[Stage] = set()
        self.requests = {stage: Requests(self, stage) for stage in calls}
        self.runs = (
            None
            if metrics is None
            else Counter(
                "loadbay_stage_runs",
                "Stage runs in watch mode, by stage, trigger and outcome",
                ["stage", "trigger", "outcome"],
                registry=metrics,
            )
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Wait for the stop, then for the ingest and chained runs in hand."""
        await stop.wait()
        await asyncio.gather(*(r.close() for r in self.requests.values()))

    async def scheduled(self, stage: Stage, tick: datetime) -> Outcome | None:
        """The run of `stage` at `tick`, unless another process claimed the tick (None) or the stage
        is running (`skipped`)."""
        call = self.calls[stage]
        async with self.db.connection() as conn:
            run_id = await claim_tick(conn, stage, tick)
            if run_id is None:
                log.debug("%s tick %s: claimed by another process", stage, tick.isoformat())
                return None
            if stage in self._busy or not await _lock_free(conn, call.lock_key):
                log.debug("%s tick %s skipped: the stage is still running", stage, tick.isoformat())
                await finish_run(conn, run_id, "skipped", {"reason": "the stage was running"})
                self._count(stage, "schedule", "skipped")
                return "skipped"
        return await self._run(call, "schedule", run_id)

    async def triggered(self, stage: Stage, trigger: Trigger) -> Outcome:
        """A run after a load or a pipeline: it waits for a run elsewhere to end (the stage's lock),
        since the one running may have started before the change that asked for this one."""
        async with self.db.connection() as conn:
            run_id = await start_run(conn, stage, trigger)
        return await self._run(self.calls[stage], trigger, run_id)

    async def _run(self, call: StageCall, trigger: Trigger, run_id: int) -> Outcome:
        self._busy.add(call.stage)
        try:
            summary = await self._call(call, trigger)
        except asyncio.CancelledError:  # stopped past the grace period: the stage rolled back
            await finish_quietly(
                self.db, run_id, "failed", {"error": "Stopped", "message": "loadbay stopped"}
            )
            raise
        finally:
            self._busy.discard(call.stage)
        outcome = outcome_of(summary)
        await finish_quietly(self.db, run_id, outcome, summary)
        self._count(call.stage, trigger, outcome)
        self._follow_up(call.stage, trigger, summary)
        return outcome

    async def _call(self, call: StageCall, trigger: Trigger) -> Summary:
        try:
            result = await call.call()
        except Exception as exc:  # the watcher goes on: the next tick, load or pipeline tries again
            log.exception(
                "%s run (%s) failed; watch mode goes on and tries again next time", call.stage, trigger
            )
            await self._record_error(call.stage, trigger, exc)
            return failure_summary(exc)
        log.info("%s run (%s) done:\n%s", call.stage, trigger, call.text(result))
        return call.summarize(result)

    async def _record_error(self, stage: Stage, trigger: Trigger, exc: Exception) -> None:
        try:
            async with self.db.connection() as conn:
                await log_error(conn, stage, str(exc), {"error": type(exc).__name__, "trigger": trigger})
        except Exception as db_exc:  # the database may be what failed: the log line stands
            log.warning("could not record the %s failure in ingest.error_log: %s", stage, db_exc)

    def _follow_up(self, stage: Stage, trigger: Trigger, summary: Summary) -> None:
        if self.notify is not None:
            if summary.get("error"):
                self.notify(
                    "stage_failed",
                    f"{stage} ({trigger} run) failed: {summary['error']}: {summary.get('message', '')}",
                )
            if summary.get("failed_jobs"):
                errors = "; ".join(summary.get("job_errors", []))
                self.notify("jobs_failed", f"{summary['failed_jobs']} DeTrack job(s) failed: {errors}")
        if (
            stage == "pipeline"
            and summary.get("shipments_changed")
            and self.settings.dispatch_after_pipeline
            and "dispatch" in self.requests
        ):
            self.requests["dispatch"].request("chain")

    def _count(self, stage: Stage, trigger: Trigger, outcome: Outcome) -> None:
        if self.runs is not None:
            self.runs.labels(stage=stage, trigger=trigger, outcome=outcome).inc()


async def _lock_free(conn: asyncpg.Connection, key: int) -> bool:
    """Whether nobody holds the stage's advisory lock now (probed, then let go at once: the stage
    takes it itself on its own connection)."""
    free: bool = await conn.fetchval("SELECT pg_try_advisory_lock($1)", key)
    if free:
        await conn.execute("SELECT pg_advisory_unlock($1)", key)
    return free


class Requests:
    """Runs of one stage asked for by loads or by the pipeline: one at a time, and the requests
    that arrive while one runs are served by one more run."""

    def __init__(self, runner: StageRunner, stage: Stage) -> None:
        self.runner = runner
        self.stage = stage
        self._requested: Trigger | None = None
        self._task: asyncio.Task[None] | None = None

    def request(self, trigger: Trigger) -> None:
        """Ask for a run."""
        self._requested = trigger
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._serve(), name=f"{self.stage} ({trigger})")

    async def _serve(self) -> None:
        while self._requested is not None:
            trigger, self._requested = self._requested, None
            try:
                await self.runner.triggered(self.stage, trigger)
            except Exception:  # recording the run failed (the database is away): the next request tries
                log.exception("could not run %s (%s)", self.stage, trigger)

    async def close(self) -> None:
        """Wait for the run in hand (and the one asked for during it)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


class ScheduledStage:
    """One stage on its schedule: at each tick, a run, unless another replica has the tick."""

    def __init__(self, runner: StageRunner, stage: Stage, schedule: Schedule) -> None:
        self.runner = runner
        self.stage = stage
        self.schedule = schedule
        self.name = f"{stage} schedule"

    async def run(self, stop: asyncio.Event) -> None:
        """Run at every tick until `stop` is set; then let the run in hand finish."""
        log.info("%s runs %s", self.stage, self.schedule.describe())
        runs: set[asyncio.Task[None]] = set()
        last = datetime.now(UTC)
        while True:
            tick = self.schedule.next_tick(max(datetime.now(UTC), last))
            wait = (tick - datetime.now(UTC)).total_seconds()
            try:
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, wait))
                break
            except TimeoutError:
                pass
            last = tick
            # A task per tick: a long run does not hold back the next tick, which then finds the
            # stage busy and is recorded `skipped`.
            task = asyncio.create_task(self._tick(tick))
            runs.add(task)
            task.add_done_callback(runs.discard)
        await asyncio.gather(*runs, return_exceptions=True)

    async def _tick(self, tick: datetime) -> None:
        try:
            await self.runner.scheduled(self.stage, tick)
        except Exception as exc:  # claiming failed (the database is away): the next tick tries again
            log.warning("%s tick %s not run: %s", self.stage, tick.isoformat(), exc)
