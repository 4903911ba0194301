"""Hands-free watch mode: stages on schedules and after loads, every stage run recorded in
ops.stage_runs, DeTrack's status pushes, alerts and the retention of processed/ (README,
"Running hands-free").

`hands_free(...)` gives the services `run_watcher` adds to the supervisor and the hook each file
outcome goes through; `recorded` records a flag's run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from app.db import Database
from app.settings import Settings
from models.outcomes import FileOutcome
from models.schedule import parse_schedule
from services.handsfree.alerts import Alerter, AppriseSender, OutageWatch
from services.handsfree.retention import Retention
from services.handsfree.runner import ScheduledStage, StageRunner
from services.handsfree.stage_runs import STAGES, recorded
from services.handsfree.stages import analysis_summary, dispatch_summary, pipeline_summary, stage_calls
from services.handsfree.webhook import WebhookListener
from services.health import Health
from services.supervisor import Service

__all__ = [
    "HandsFree",
    "analysis_summary",
    "dispatch_summary",
    "hands_free",
    "pipeline_summary",
    "recorded",
]


@dataclass
class HandsFree:
    """What hands-free mode adds to watch mode: services, and hooks on each file's outcome."""

    services: list[Service] = field(default_factory=list)
    hooks: list[Callable[[FileOutcome], Awaitable[None]]] = field(default_factory=list)

    async def on_outcome(self, outcome: FileOutcome) -> None:
        """Every hook hears of every file's outcome (a drop's or a pulled file's)."""
        for hook in self.hooks:
            await hook(outcome)


def hands_free(settings: Settings, db: Database, folder: Path, health: Health | None) -> HandsFree:
    """The services and hooks the settings ask for (none with the defaults)."""
    result = HandsFree()
    metrics = None if health is None else health.registry
    alerter = None
    if urls := [u.strip() for u in settings.alert_urls.get_secret_value().split(",") if u.strip()]:
        alerter = Alerter(settings, AppriseSender(urls), metrics)
        result.services.append(alerter)
        result.hooks.append(alerter.on_file)
        if health is not None:
            result.services.append(OutageWatch(settings, health, alerter.notify))
    if settings.detrack_webhook_port:
        result.services.append(WebhookListener(settings, db, metrics))
    if settings.processed_retention_days is not None:
        result.services.append(Retention(folder, settings.processed_retention_days))
    schedules = {stage: parse_schedule(settings.schedules()[stage], settings.schedule_tz) for stage in STAGES}
    if not (settings.pipeline_on_ingest or any(schedules.values())):
        return result
    runner = StageRunner(
        settings, db, stage_calls(settings, db), alerter.notify if alerter else None, metrics=metrics
    )
    result.services.append(runner)
    for stage, schedule in schedules.items():
        if schedule is not None:
            result.services.append(ScheduledStage(runner, stage, schedule))
    if settings.pipeline_on_ingest:

        async def after_load(outcome: FileOutcome) -> None:
            if outcome.status in ("loaded", "loaded_with_rejects"):
                runner.requests["pipeline"].request("ingest")

        result.hooks.append(after_load)
    return result
