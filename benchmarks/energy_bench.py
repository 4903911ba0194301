"""Energy benchmark: full build of 1,000,000 register readings (200 meters), then one new day.

    .venv/bin/python -m benchmarks.energy_bench [--readings 1000000] [--meters 200] [--runs 3]

Runs against a throw-away embedded PostgreSQL. Readings are loaded with loadbay itself (not
timed); what is timed is `run_pipeline`'s energy step: the full build from nothing, and the
incremental run after a file with the next day for every meter. Targets (DESIGN §10): full
build <= 4 s, a new day for all meters <= 0.6 s.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

from app.db import Database
from app.settings import Settings
from benchmarks.throwaway import throwaway_loadbay
from models.datasets import DatasetRegistry
from services.ingest import run_ingest
from services.pipeline import run_pipeline

START = datetime(2024, 1, 1, tzinfo=UTC)
STEP = timedelta(minutes=10)


def write_readings(path: Path, meters: int, first: int, count: int, seed: int) -> None:
    """`count` 10-minute register readings per meter, starting at reading number `first`."""
    rng = random.Random(seed)
    with path.open("w") as out:
        out.write("meter_id,reading_at,register_kwh,power_w\n")
        for m in range(meters):
            kwh = 1000.0 * (m + 1) + first * 0.2
            for i in range(first, first + count):
                kwh += rng.uniform(0, 0.4)
                at = START + STEP * i
                out.write(f"MTR-{m:04d},{at:%Y-%m-%dT%H:%M:%SZ},{kwh:.3f},\n")


async def _ingest_and_pipeline(settings: Settings, db: Database, path: Path) -> float:
    result = await run_ingest(settings, db, DatasetRegistry.from_toml({}), [path])
    assert result.outcomes[0].status == "loaded", result.outcomes
    pipeline = await run_pipeline(settings, db)
    return next(s.seconds for s in pipeline.steps if s.step == "energy")


def one_run(readings: int, meters: int, seed: int) -> tuple[float, float, int]:
    with throwaway_loadbay("energy-bench") as settings:
        per_meter = readings // meters
        history = settings.imports_dir / "meter_history.csv"
        write_readings(history, meters, 0, per_meter, seed)
        next_day = settings.imports_dir / "meter_next_day.csv"
        write_readings(next_day, meters, per_meter, 144, seed + 1)

        async def go() -> tuple[float, float, int]:
            db = Database(settings.database_url.get_secret_value())
            try:
                full = await _ingest_and_pipeline(settings, db, history)
                day = await _ingest_and_pipeline(settings, db, next_day)
                async with db.connection() as conn:
                    intervals = await conn.fetchval("SELECT count(*) FROM warehouse.fact_energy_interval")
                return full, day, intervals
            finally:
                await db.close()

        return asyncio.run(go())


def main() -> None:
    warnings.simplefilter("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--meters", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    fulls, days = [], []
    for run in range(args.runs):
        started = time.monotonic()
        full, day, intervals = one_run(args.readings, args.meters, seed=run)
        fulls.append(full)
        days.append(day)
        print(
            f"run {run + 1}: full build {full:.2f} s, new day {day:.2f} s, {intervals} half-hours "
            f"({time.monotonic() - started:.0f} s with loading)",
            flush=True,
        )
    full_median, day_median = statistics.median(fulls), statistics.median(days)
    print(f"\nenergy, {args.readings} readings of {args.meters} meters (median of {args.runs} runs)")
    print(f"  full build   {full_median:6.2f} s   target <= 4 s     {'OK' if full_median <= 4 else 'MISSED'}")
    print(f"  one new day  {day_median:6.2f} s   target <= 0.6 s   {'OK' if day_median <= 0.6 else 'MISSED'}")


if __name__ == "__main__":
    main()
