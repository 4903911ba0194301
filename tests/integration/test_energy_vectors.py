"""The published energy vectors, computed by the real SQL against real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from services.energy import MeterWindow, compute_energy
from tests.integration.energy_helpers import (
    VECTORS,
    actual_gaps,
    actual_intervals,
    expected_gaps,
    expected_intervals,
    stage_readings,
    vector_settings,
)
from tests.pg import run

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("case", VECTORS, ids=[c["name"] for c in VECTORS])
def test_vector_through_energy_sql(case: dict[str, Any], dsn: str, workdir: Path) -> None:
    settings = vector_settings(dsn, workdir, case["params"])

    async def go() -> tuple[list[Any], list[Any]]:
        conn = await asyncpg.connect(dsn)
        try:
            await stage_readings(conn, case["readings"])
            meters = sorted({r["meter_id"] for r in case["readings"]})
            async with conn.transaction():
                await compute_energy(conn, settings, [MeterWindow(m, EPOCH, EPOCH) for m in meters])
            return await actual_intervals(conn), await actual_gaps(conn)
        finally:
            await conn.close()

    intervals, gaps = run(go())
    assert intervals == expected_intervals(case)
    assert gaps == expected_gaps(case)
