"""The three stages hands-free mode runs, each as a call plus how its result reads in
ops.stage_runs. A scheduled or chained run calls the same function as the flag and logs the
summary the flag prints."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from app.db import Database
from app.settings import Settings
from services.analysis import ANALYSIS_LOCK_KEY, AnalysisResult, run_analysis
from services.dispatch import DISPATCH_LOCK_KEY, DispatchResult, run_dispatch
from services.handsfree.stage_runs import Stage, Summary
from services.pipeline import PIPELINE_LOCK_KEY, PipelineResult, run_pipeline

MAX_JOB_ERRORS = 10  # failed jobs named in a summary (and an alert); the rest are counted


def pipeline_summary(result: PipelineResult) -> Summary:
    """Files and rows per step, and whether shipments changed (DISPATCH_AFTER_PIPELINE)."""
    return {
        "steps": {s.step: {"files": s.files, "rows": s.rows, "left_out": s.left_out} for s in result.steps},
        "shipments_changed": result.shipments_changed,
    }


def dispatch_summary(result: DispatchResult) -> Summary:
    """The counts --dispatch prints; `error` when it stopped early (DeTrack away)."""
    if result.dry_run:
        return {"dry_run": True, "jobs": len(result.payloads)}
    c = result.counts
    summary: Summary = {
        "new": result.new,
        "changed": result.changed,
        "created": c.sent,
        "duplicates_confirmed": c.duplicate_confirmed,
        "recovered": c.recovered,
        "updated": c.updated,
        "delivered": c.delivered,
        "failed_jobs": c.failed,
        "retry_jobs": c.retry,
        # do_number, date and DeTrack's field codes: identifiers, no personal data
        "job_errors": c.errors[:MAX_JOB_ERRORS],
        "outbox": dict(result.by_status),
    }
    if result.error:
        summary["error"] = "DetrackUnavailable"
        summary["message"] = result.error
    return summary


def analysis_summary(result: AnalysisResult) -> Summary:
    """Views exported, rows each, charts and the report's path."""
    return {
        "rows": dict(result.rows),
        "charts": len(result.charts),
        "report": None if result.report is None else str(result.report),
    }


@dataclass(frozen=True)
class StageCall:
    """How hands-free mode runs one stage: the call, how its result reads, the text it logs, and
    the advisory lock the stage takes (probed to skip a tick while the stage runs elsewhere)."""

    stage: Stage
    lock_key: int
    call: Callable[[], Awaitable[Any]]
    summarize: Callable[[Any], Summary]
    text: Callable[[Any], str]


def stage_calls(settings: Settings, db: Database) -> dict[Stage, StageCall]:
    """The three stages as watch mode runs them (dispatch for real: never a dry run)."""
    return {
        "pipeline": StageCall(
            "pipeline",
            PIPELINE_LOCK_KEY,
            lambda: run_pipeline(settings, db),
            pipeline_summary,
            lambda r: r.summary(),
        ),
        "dispatch": StageCall(
            "dispatch",
            DISPATCH_LOCK_KEY,
            lambda: run_dispatch(settings, db),
            dispatch_summary,
            lambda r: r.summary(),
        ),
        "analysis": StageCall(
            "analysis",
            ANALYSIS_LOCK_KEY,
            lambda: run_analysis(settings, db),
            analysis_summary,
            lambda r: r.summary(),
        ),
    }
