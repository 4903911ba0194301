"""Properties of the energy rules on generated meters, computed by the real SQL.

Random meters with resets, rollovers, noise, gaps, duplicates and shuffled arrival never give a
negative half-hour; a clean monotone meter's half-hours add up to its register difference.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.energy import MeterWindow, compute_energy
from tests.conftest import make_settings
from tests.integration.energy_helpers import stage_readings
from tests.pg import run

START = datetime(2024, 1, 15, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def messy_meter(seed: int, meter: str) -> list[dict[str, Any]]:
    """Readings with every kind of trouble the rules must survive."""
    rng = random.Random(seed)
    t, kwh, out = START, rng.uniform(0, 99_000), []
    for _ in range(rng.randint(2, 60)):
        t += timedelta(seconds=rng.choice([60, 300, 600, 600, 1800, 2400, 7200, 20000]))
        event = rng.random()
        if event < 0.05:
            kwh = rng.uniform(0, 0.5)  # reset
        elif event < 0.08:
            kwh = (kwh + rng.uniform(0, 2)) % 100_000  # rollover
        elif event < 0.15:
            kwh -= rng.uniform(0, 0.01)  # noise
        elif event < 0.18:
            kwh += rng.uniform(500, 5000)  # implausible jump
        else:
            kwh += rng.uniform(0, 3)
        value: float | None = round(max(kwh, 0), 3)
        power: float | None = round(rng.uniform(-50, 120_000), 1) if rng.random() < 0.2 else None
        if rng.random() < 0.05:
            value = 0.0  # one-sample dropout
        if rng.random() < 0.1:
            value = None if power is not None else value
        out.append({"meter_id": meter, "ts": t.isoformat(), "register_kwh": value, "power_w": power})
        if rng.random() < 0.1:  # a duplicate, sometimes conflicting
            copy: dict[str, Any] = dict(out[-1])
            if rng.random() < 0.5 and value is not None:
                copy["register_kwh"] = round(value + 0.5, 3)
            out.append(copy)
    rng.shuffle(out)
    for seq, reading in enumerate(out, start=1):
        reading["ingest_seq"] = seq
    return out


def power_meter(seed: int, meter: str) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    t, out = START, []
    for seq in range(rng.randint(2, 40)):
        t += timedelta(seconds=rng.choice([120, 600, 900, 1800, 3600]))
        out.append(
            {
                "meter_id": meter,
                "ts": t.isoformat(),
                "register_kwh": None,
                "power_w": round(rng.uniform(0, 20_000), 1),
                "ingest_seq": seq + 1,
            }
        )
    return out


async def _compute(
    dsn: str, workdir: Path, readings: list[dict[str, Any]], modulus: float | None
) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "TRUNCATE staging.meter_readings, warehouse.fact_energy_interval, warehouse.energy_gaps, "
            "warehouse.reading_anomalies, warehouse.energy_checkpoints"
        )
        await stage_readings(conn, readings)
        meters = sorted({r["meter_id"] for r in readings})
        config = make_settings(dsn, workdir, energy_register_modulus_kwh=modulus)
        async with conn.transaction():
            await compute_energy(conn, config, [MeterWindow(m, EPOCH, EPOCH) for m in meters])
        return list(
            await conn.fetch(
                "SELECT meter_id, interval_start, kwh, quality FROM warehouse.fact_energy_interval "
                "ORDER BY meter_id, interval_start"
            )
        )
    finally:
        await conn.close()


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10**9), modulus=st.sampled_from([None, 100_000.0]))
def test_no_half_hour_is_ever_negative(dsn: str, workdir: Path, seed: int, modulus: float | None) -> None:
    readings = messy_meter(seed, "A") + messy_meter(seed + 1, "B") + power_meter(seed, "P")
    rows = run(_compute(dsn, workdir, readings, modulus))

    assert all(r["kwh"] is None or r["kwh"] >= 0 for r in rows)
    assert all((r["kwh"] is None) == (r["quality"] == "MISSING") for r in rows)
    keys = [(r["meter_id"], r["interval_start"]) for r in rows]
    assert len(keys) == len(set(keys))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=st.lists(st.tuples(st.integers(60, 2100), st.floats(0, 0.99)), min_size=2, max_size=80),
    offset=st.integers(0, 1799),
)
def test_clean_meter_half_hours_add_up_to_the_register_difference(
    dsn: str, workdir: Path, steps: list[tuple[int, float]], offset: int
) -> None:
    # Plausible steps only: below the default 100 kW bound, so every step is NORMAL.
    t, kwh = START + timedelta(seconds=offset), Decimal("1000")
    readings = [
        {"meter_id": "C", "ts": t.isoformat(), "register_kwh": str(kwh), "power_w": None, "ingest_seq": 1}
    ]
    for seq, (seconds, share) in enumerate(steps, start=2):
        used = (Decimal(share) * 100 * seconds / 3600).quantize(Decimal("0.001"), rounding="ROUND_DOWN")
        t, kwh = t + timedelta(seconds=seconds), kwh + used
        readings.append(
            {
                "meter_id": "C",
                "ts": t.isoformat(),
                "register_kwh": str(kwh),
                "power_w": None,
                "ingest_seq": seq,
            }
        )

    rows = run(_compute(dsn, workdir, readings, None))

    full = [r for r in rows if r["quality"] != "MISSING"]
    assert all(r["quality"] == "ACTUAL" for r in full)
    if full:
        first, last = full[0]["interval_start"], full[-1]["interval_start"] + timedelta(minutes=30)
        expected = _register_at(readings, last) - _register_at(readings, first)
        # Each half-hour is rounded to 6 decimals: the sum may differ by half a unit each.
        assert abs(sum(r["kwh"] for r in full) - expected) <= Decimal("0.0000005") * len(full)


def _register_at(readings: list[dict[str, Any]], when: datetime) -> Decimal:
    """The register linearly interpolated at `when` (which lies within the readings)."""
    points = [(datetime.fromisoformat(r["ts"]), Decimal(r["register_kwh"])) for r in readings]
    for (t0, v0), (t1, v1) in pairwise(points):
        if t0 <= when <= t1:
            return v0 + (v1 - v0) * Decimal((when - t0).total_seconds()) / Decimal((t1 - t0).total_seconds())
    raise AssertionError(f"{when} is outside the readings")
