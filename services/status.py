"""`--status`: what happened to recent files, as a table a person can read."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from app.db import Database
from app.settings import Settings
from app.text import table
from models.schedule import parse_schedule

RECENT_FILES = 20
NO_FILES = "No files yet. Drop a CSV into the imports folder, or run: python main.py --demo"
_COLUMNS = ("id", "received (UTC)", "file", "dataset", "status", "rows", "rejected", "note")


@dataclass
class StatusResult:
    """What --status shows: recent files, totals, first rejects, files retrying, ERP pulls."""

    files: list[asyncpg.Record]
    totals: dict[str, int]
    rejects: list[asyncpg.Record]
    pulls: list[asyncpg.Record] = field(default_factory=list)
    pull_error: asyncpg.Record | None = None
    retrying: list[asyncpg.Record] = field(default_factory=list)
    stage_runs: list[asyncpg.Record] = field(default_factory=list)
    next_due: dict[str, str] = field(default_factory=dict)

    def render(self) -> str:
        """The text --status prints."""
        files = self._files() if self.files else [NO_FILES]
        return "\n".join(files + self._retrying() + self._pulls() + self._stages())

    def _stages(self) -> list[str]:
        if not self.stage_runs and not self.next_due:
            return []
        last = {r["stage"]: r for r in self.stage_runs}
        rows = [_stage_row(stage, last.get(stage), self.next_due.get(stage, "")) for stage in STAGES]
        return ["", "Stages (ops.stage_runs):", *table(rows, _STAGE_COLUMNS)]

    def _retrying(self) -> list[str]:
        if not self.retrying:
            return []
        lines = ["", "Waiting in imports/ after an unexpected error (ingest.file_attempts):"]
        lines += [
            f"  {r['name']}: tried {r['attempts']} time{'' if r['attempts'] == 1 else 's'}, last "
            f"{r['last_at']:%Y-%m-%d %H:%M:%S}: {r['error_type']}: {r['last_error'][:200]}"
            for r in self.retrying
        ]
        return lines

    def _pulls(self) -> list[str]:
        if not self.pulls and self.pull_error is None:
            return []
        lines = ["", "ERP pull (ingest.pull_watermarks):"]
        lines += [
            f"  {p['dataset']}: up to {p['shown']} from {p['source']}, last moved "
            f"{p['updated_at']:%Y-%m-%d %H:%M:%S} by #{p['file_id']} ({p['rows_pulled']} rows)"
            for p in self.pulls
        ]
        if self.pull_error is not None:
            error = self.pull_error
            lines.append(f"  last failure {error['occurred_at']:%Y-%m-%d %H:%M:%S}: {error['message']}")
        return lines

    def _files(self) -> list[str]:
        lines = table([_row(f) for f in self.files], _COLUMNS, right=(5, 6), rule=True)
        summary = ", ".join(f"{count} {status}" for status, count in sorted(self.totals.items()))
        lines.append("")
        lines.append(f"All files: {summary or 'none'}")
        if self.rejects:
            first = self.rejects[0]
            lines += [
                "",
                f"First rejected rows of #{first['file_id']} {first['name']} (see ingest.rejected_rows):",
            ]
            lines += [
                f"  record {r['record_no']}, line {r['line_no']}"
                + (f", column {r['column_name']}" if r["column_name"] else "")
                + f": {r['reason']}"
                for r in self.rejects
            ]
        return lines


STAGES = ("pipeline", "dispatch", "analysis")
_STAGE_COLUMNS = ("stage", "last run (UTC)", "trigger", "outcome", "seconds", "next due (UTC)")


def _stage_row(stage: str, run: asyncpg.Record | None, next_due: str) -> tuple[str, ...]:
    if run is None:
        return (stage, "never", "-", "-", "-", next_due or "-")
    seconds = (
        "-"
        if run["finished_at"] is None
        else f"{(run['finished_at'] - run['started_at']).total_seconds():.1f}"
    )
    outcome = run["outcome"] or "running"
    if run["outcome"] == "failed" and run["error"]:
        outcome += f" ({run['error']})"
    return (
        stage,
        f"{run['started_at']:%Y-%m-%d %H:%M:%S}",
        run["trigger"],
        outcome,
        seconds,
        next_due or "-",
    )


def next_due(settings: Settings, now: datetime) -> dict[str, str]:
    """When each stage runs next in watch mode, as these settings say."""
    due: dict[str, str] = {}
    for stage, text in settings.schedules().items():
        schedule = parse_schedule(text, settings.schedule_tz)
        if schedule is not None:
            due[stage] = f"{schedule.next_tick(now):%Y-%m-%d %H:%M:%S} ({schedule.describe()})"
    if settings.pipeline_on_ingest and "pipeline" not in due:
        due["pipeline"] = "after each loaded file"
    if settings.dispatch_after_pipeline and "dispatch" not in due:
        due["dispatch"] = "after a pipeline that changed shipments"
    return due


def _note(record: asyncpg.Record) -> str:
    if record["error"]:
        return str(record["error"])
    warnings = json.loads(record["warnings"] or "[]")
    notes = [
        "unknown fields kept in _extra: "
        + ", ".join(
            f"{name} ({rows} row{'' if rows == 1 else 's'})"
            for name, rows in sorted(w["unknown_fields"].items())
        )
        for w in warnings
        if "unknown_fields" in w
    ]
    if record["duplicate_of"]:
        notes.append(f"same content as #{record['duplicate_of']}")
    return "; ".join(notes)


def _row(record: asyncpg.Record) -> tuple[str, ...]:
    return (
        str(record["id"]),
        record["received_at"].strftime("%Y-%m-%d %H:%M:%S"),
        record["name"],
        record["dataset"] or "-",
        record["status"],
        str(record["rows_loaded"]),
        str(record["rows_rejected"]),
        _note(record),
    )


# What --status reads, by part. Row values are left out on purpose: they may hold personal data.
_QUERIES = {
    "files": """
        SELECT id, name, dataset, status, rows_loaded, rows_rejected, error, warnings::text,
               duplicate_of, received_at
        FROM ingest.files ORDER BY id DESC LIMIT $1
    """,
    "totals": "SELECT status, count(*) AS n FROM ingest.files GROUP BY status",
    "rejects": """
        SELECT r.file_id, f.name, r.record_no, r.line_no, r.column_name, r.reason
        FROM ingest.rejected_rows r JOIN ingest.files f ON f.id = r.file_id
        WHERE r.file_id = (SELECT max(file_id) FROM ingest.rejected_rows)
        ORDER BY r.record_no LIMIT 5
    """,
    "pulls": """
        SELECT dataset, source, file_id, rows_pulled, updated_at,
               CASE kind WHEN 'binary' THEN '0x' || upper(value) ELSE value END AS shown
        FROM ingest.pull_watermarks ORDER BY dataset
    """,
    "retrying": """
        SELECT name, attempts, error_type, last_error, last_at FROM ingest.file_attempts
        ORDER BY last_at DESC LIMIT 10
    """,
    # A failure newer than every watermark move: the pull is failing now.
    "pull_error": """
        SELECT occurred_at, message FROM ingest.error_log
        WHERE component = 'pull'
          AND occurred_at > coalesce((SELECT max(updated_at) FROM ingest.pull_watermarks), '-infinity')
        ORDER BY id DESC LIMIT 1
    """,
    "stage_runs": """
        SELECT DISTINCT ON (stage) stage, trigger, started_at, finished_at, outcome,
               summary->>'error' AS error
        FROM ops.stage_runs WHERE outcome IS DISTINCT FROM 'skipped'
        ORDER BY stage, started_at DESC, id DESC
    """,
}


async def run_status(
    db: Database, settings: Settings | None = None, limit: int = RECENT_FILES
) -> StatusResult:
    """Read what --status shows from the ledger and its companions; with `settings`, also when
    each scheduled stage is due next."""
    async with db.connection() as conn:
        await conn.execute("SET TimeZone = 'UTC'")
        found = {
            part: await conn.fetch(query, *((limit,) if part == "files" else ()))
            for part, query in _QUERIES.items()
        }
    return StatusResult(
        list(found["files"]),
        {r["status"]: r["n"] for r in found["totals"]},
        list(found["rejects"]),
        list(found["pulls"]),
        found["pull_error"][0] if found["pull_error"] else None,
        list(found["retrying"]),
        list(found["stage_runs"]),
        {} if settings is None else next_due(settings, datetime.now(UTC)),
    )
