"""Loads of one staging table overlap (DESIGN §9): no table lock, and `_record_no` numbers each
file's records from 1 (the loader writes the numbers; nothing is drawn from a shared sequence)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from app.db import Database, asyncpg_dsn
from app.settings import Settings
from models.datasets import DatasetRegistry
from models.outcomes import FileOutcome
from services.ingest import Loader, Origin
from tests.integration.helpers import METER_HEADER, drop
from tests.pg import fetch, run

ROWS = 20_000
START = datetime(2024, 1, 15, tzinfo=UTC)


def readings(meter: str) -> str:
    """ROWS readings of one meter, ten minutes apart from START."""
    return "".join(
        f"{meter},{(START + timedelta(minutes=10 * i)).isoformat()},{100 + i * 0.5:.3f},{i}\n"
        for i in range(ROWS)
    )


def test_two_loads_of_one_table_are_inside_their_transactions_at_once(settings: Settings, dsn: str) -> None:
    """Each load waits, just before its commit, until the other has reached the same point: with a
    table-wide lock the second could never get there and both would time out."""
    paths = [
        drop(settings.imports_dir, f"meter_{name}.csv", METER_HEADER + readings(name)) for name in ("A", "B")
    ]
    arrived = {path.name: asyncio.Event() for path in paths}

    def waiting_for_the_other(mine: Path) -> Origin:
        other = next(p for p in paths if p != mine)

        async def meet(_conn: asyncpg.Connection, _file_id: int) -> None:
            arrived[mine.name].set()
            await asyncio.wait_for(arrived[other.name].wait(), timeout=30)

        return Origin(before_commit=meet)

    async def go() -> list[FileOutcome]:
        db = Database(asyncpg_dsn(settings.database_url.get_secret_value()))
        loader = Loader(settings, DatasetRegistry.from_toml({}), db)
        try:
            return list(
                await asyncio.gather(*(loader.ingest(p, origin=waiting_for_the_other(p)) for p in paths))
            )
        finally:
            await db.close()

    outcomes = run(go())

    assert [(o.name, o.status, o.rows_loaded) for o in outcomes] == [
        ("meter_A.csv", "loaded", ROWS),
        ("meter_B.csv", "loaded", ROWS),
    ]
    numbering = fetch(
        dsn,
        "SELECT meter_id, min(_record_no), max(_record_no), count(DISTINCT _record_no), "
        "bool_and(_record_no = (extract(epoch FROM reading_at - '2024-01-15T00:00:00Z') / 600 + 1)) "
        "FROM staging.meter_readings GROUP BY meter_id ORDER BY meter_id",
    )
    assert [tuple(r) for r in numbering] == [("A", 1, ROWS, ROWS, True), ("B", 1, ROWS, ROWS, True)]
