"""Energy benchmark: full build of 1,000,000 register readings (200 meters), then one new day.

    .venv/bin/python -m benchmarks.energy_bench [--readings 1000000] [--meters 200] [--runs 3]

Runs against a throw-away embedded PostgreSQL. Readings are loaded with loadbay itself (not
timed); what is timed is `run_pipeline`'s energy step: the full build from nothing, and the
incremental run after a file with the next day for every meter. Targets (DESIGN §10): full
build <= 4 s, a new day for all meters <= 0.6 s. The machine is shared, so CPU time is printed
beside wall time: this process's (user + sys) and PostgreSQL's (the postmaster and every backend,
live or ended, from /proc) over the whole `run_pipeline` call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
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


def _ticks(pid: int, children: bool) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime, stime (and cutime, cstime: the ended children's, which is where a closed backend's
    # CPU goes once the postmaster has reaped it).
    return sum(int(f) for f in fields[11 : 15 if children else 13])


def server_cpu(postmaster: int) -> float:
    """CPU seconds used so far by the PostgreSQL server: the postmaster, its ended and live children."""
    total = _ticks(postmaster, children=True)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                    total += _ticks(int(entry), children=True)
            except (OSError, ValueError):
                continue  # a process that ended meanwhile: counted in the postmaster's cutime
    return total / os.sysconf("SC_CLK_TCK")


def client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


Timing = tuple[float, float, float]  # energy step wall, pipeline client CPU, pipeline server CPU


async def _ingest_and_pipeline(settings: Settings, db: Database, path: Path, postmaster: int) -> Timing:
    result = await run_ingest(settings, db, DatasetRegistry.from_toml({}), [path])
    assert result.outcomes[0].status == "loaded", result.outcomes
    async with db.connection() as conn:
        await conn.execute("CHECKPOINT")
    client, server = client_cpu(), server_cpu(postmaster)
    pipeline = await run_pipeline(settings, db)
    client, server = client_cpu() - client, server_cpu(postmaster) - server
    return next(s.seconds for s in pipeline.steps if s.step == "energy"), client, server


def one_run(readings: int, meters: int, seed: int) -> tuple[Timing, Timing, int]:
    with throwaway_loadbay("energy-bench") as settings:
        per_meter = readings // meters
        history = settings.imports_dir / "meter_history.csv"
        write_readings(history, meters, 0, per_meter, seed)
        next_day = settings.imports_dir / "meter_next_day.csv"
        write_readings(next_day, meters, per_meter, 144, seed + 1)

        async def go() -> tuple[Timing, Timing, int]:
            db = Database(settings.database_url.get_secret_value())
            try:
                async with db.connection() as conn:
                    backend = await conn.fetchval("SELECT pg_backend_pid()")
                postmaster = int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
                full = await _ingest_and_pipeline(settings, db, history, postmaster)
                day = await _ingest_and_pipeline(settings, db, next_day, postmaster)
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
    fulls: list[Timing] = []
    days: list[Timing] = []
    for run in range(args.runs):
        started = time.monotonic()
        full, day, intervals = one_run(args.readings, args.meters, seed=run)
        fulls.append(full)
        days.append(day)
        print(
            f"run {run + 1}: full build {_show(full)}; new day {_show(day)}; {intervals} half-hours "
            f"({time.monotonic() - started:.0f} s with loading; load average {os.getloadavg()[0]:.2f})",
            flush=True,
        )
    full_median, day_median = _median(fulls), _median(days)
    print(f"\nenergy, {args.readings} readings of {args.meters} meters (median of {args.runs} runs)")
    print(
        f"  full build   {_show(full_median)}   target <= 4 s     {'OK' if full_median[0] <= 4 else 'MISSED'}"
    )
    print(
        f"  one new day  {_show(day_median)}   target <= 0.6 s   {'OK' if day_median[0] <= 0.6 else 'MISSED'}"
    )


def _median(timings: list[Timing]) -> Timing:
    wall, client, server = zip(*timings, strict=True)
    return statistics.median(wall), statistics.median(client), statistics.median(server)


def _show(timing: Timing) -> str:
    return f"wall {timing[0]:5.2f} s (CPU: loadbay {timing[1]:5.2f} s, PostgreSQL {timing[2]:5.2f} s)"


if __name__ == "__main__":
    main()
