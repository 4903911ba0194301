"""`--analysis`: views in schema `analysis`, one CSV per view, PNG charts and one report.html.

The views come from `sql/analysis/`; every run replaces them, so it is safe to run at any time,
also while files are being loaded. Exports are written to a temporary name and renamed, so a
reader never sees half a file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from app.db import Database
from app.settings import Settings
from app.sqlfiles import sql
from app.text import table
from models.outbox import ship_via_codes

log = logging.getLogger(__name__)

ANALYSIS_LOCK_KEY = 0x6C6F616462617904  # "loadbay" + 4
VIEWS = {  # view → its natural order, for stable exports
    "shipments_daily": "day",
    "dispatch_backlog": "day, job_number, shipment_number",
    "dispatch_outcomes": "day, outbox_status, detrack_status",
    "delivery_lead_time": "day",
    "energy_daily": "meter_id, day",
    "energy_half_hour_profile": "meter_id, local_time",
    "ingest_quality": "day, dataset",
}


@dataclass
class AnalysisResult:
    """What an `--analysis` run wrote: the CSV exports, charts, report and rows per view."""

    exports: list[Path] = field(default_factory=list)
    charts: list[Path] = field(default_factory=list)
    report: Path | None = None
    rows: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """One line per view (rows and its CSV), then the charts and the report."""
        counts = table(list(self.rows.items()), right=(1,))
        lines = [f"{line} rows → {view}.csv" for line, view in zip(counts, self.rows, strict=True)]
        lines.append(f"charts: {', '.join(p.name for p in self.charts)}")
        lines.append(f"report: {self.report}")
        return "\n".join(lines)


async def run_analysis(settings: Settings, db: Database) -> AnalysisResult:
    """`--analysis`: replace the views, export each to CSV, draw the charts, write report.html."""
    result = AnalysisResult()
    settings.exports_dir.mkdir(parents=True, exist_ok=True)
    async with db.connection() as conn:
        await create_views(conn, settings)
        tables: dict[str, list[asyncpg.Record]] = {}
        for view, order in VIEWS.items():
            target = settings.exports_dir / f"{view}.csv"
            partial = target.with_name(f".{view}.csv.tmp")
            await conn.copy_from_query(
                f"SELECT * FROM analysis.{view} ORDER BY {order}",
                output=str(partial),
                format="csv",
                header=True,
            )
            os.replace(partial, target)
            result.exports.append(target)
            tables[view] = list(await conn.fetch(f"SELECT * FROM analysis.{view} ORDER BY {order}"))
            result.rows[view] = len(tables[view])
        last_load = await conn.fetchval("SELECT max(loaded_at) FROM ingest.files")
    from services.report import render_charts, render_report  # imports matplotlib: only here

    now = datetime.now(UTC)
    result.charts = render_charts(tables, settings.exports_dir, now)
    result.report = render_report(tables, result.charts, settings.exports_dir, now, last_load)
    log.info(
        "analysis: %d views exported, %d charts, report at %s", len(VIEWS), len(result.charts), result.report
    )
    return result


async def create_views(conn: asyncpg.Connection, settings: Settings) -> None:
    """Replace the views and store the settings they read, in one transaction under the lock."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", ANALYSIS_LOCK_KEY)
        await conn.execute(sql("analysis/01_views.sql", settings))
        await _store_parameters(conn, settings)


async def _store_parameters(conn: asyncpg.Connection, settings: Settings) -> None:
    """The settings the views read: DISPATCH_SHIP_VIA (through warehouse.eligible_shipments, as
    --dispatch does) and ENERGY_SETTLEMENT_TZ."""
    await conn.execute(sql("dispatch/ship_via.sql", settings), ship_via_codes(settings.dispatch_ship_via))
    # ship_via NULL: analysis.parameters.ship_via is superseded by warehouse.dispatch_parameters
    # (migration 0008); a stale list there would look current.
    await conn.execute(
        """
        INSERT INTO analysis.parameters (ship_via, settlement_tz) VALUES (NULL, $1)
        ON CONFLICT (id) DO UPDATE SET ship_via = NULL, settlement_tz = EXCLUDED.settlement_tz
        """,
        settings.energy_settlement_tz,
    )
