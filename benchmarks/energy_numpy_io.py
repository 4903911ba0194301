"""What the numpy route for energy would cost in I/O alone, measured to choose between it and SQL.

    .venv/bin/python -m benchmarks.energy_numpy_io [--readings 1000000] [--meters 200]

Loads the energy benchmark's readings with loadbay, then times, on one connection: the readings
out by binary COPY in (meter, instant) order and parsed into numpy arrays; a stand-in computation
(steps, running total, one value a half-hour: not the energy rules); the half-hours back by binary
COPY into a temporary table. Prints wall time and CPU time of the client and of the PostgreSQL
backend (from /proc), so that a busy machine shows up as wall time only.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import resource
import time
import warnings
from pathlib import Path

import asyncpg
import numpy as np

from app.db import Database
from benchmarks.energy_bench import write_readings
from benchmarks.throwaway import throwaway_loadbay
from models.datasets import DatasetRegistry
from services.ingest import run_ingest

# One binary COPY row of (int4, timestamptz, float8): field count, then length + value each.
ROW = np.dtype(
    [("n", ">i2"), ("l1", ">i4"), ("m", ">i4"), ("l2", ">i4"), ("ts", ">i8"), ("l3", ">i4"), ("v", ">f8")]
)
HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
HALF_HOUR_US = 1_800_000_000  # binary timestamps count microseconds from 2000-01-01, a boundary


class Clock:
    def __init__(self, backend_pid: int) -> None:
        self._stat = f"/proc/{backend_pid}/stat"
        self.mark()

    def _server(self) -> float:
        fields = Path(self._stat).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _client() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def mark(self) -> None:
        self._at = (time.monotonic(), self._server(), self._client())

    def lap(self, what: str) -> None:
        wall, server, client = time.monotonic(), self._server(), self._client()
        print(
            f"{what:<44} wall {wall - self._at[0]:5.2f} s   server CPU {server - self._at[1]:5.2f} s   "
            f"client CPU {client - self._at[2]:5.2f} s"
        )
        self.mark()


async def measure(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        clock = Clock(await conn.fetchval("SELECT pg_backend_pid()"))
        out = io.BytesIO()
        await conn.copy_from_query(
            "SELECT substr(meter_id, 5)::int4, reading_at, register_kwh::float8 "
            "FROM staging.meter_readings ORDER BY meter_id, reading_at",
            output=out,
            format="binary",
        )
        raw = out.getvalue()
        rows = np.frombuffer(
            raw, dtype=ROW, offset=len(HEADER), count=(len(raw) - len(HEADER) - 2) // ROW.itemsize
        )
        meter, ts, v = rows["m"].astype(np.int32), rows["ts"].astype(np.int64), rows["v"].astype(np.float64)
        clock.lap(f"{len(rows):,} readings out, parsed ({len(raw) / 1e6:.0f} MB)")

        first_of_meter = np.r_[True, meter[1:] != meter[:-1]]
        step = np.diff(v, prepend=v[0])
        step[first_of_meter] = 0
        running = np.cumsum(step)
        boundary = ts // HALF_HOUR_US * HALF_HOUR_US
        starts = np.r_[True, (boundary[1:] != boundary[:-1]) | (meter[1:] != meter[:-1])]
        kwh = np.diff(np.r_[running[starts], running[-1]])
        clock.lap(f"stand-in computation ({int(starts.sum()):,} half-hours)")

        back = np.empty(int(starts.sum()), dtype=ROW)
        back["n"], back["l1"], back["l2"], back["l3"] = 3, 4, 8, 8
        back["m"], back["ts"], back["v"] = meter[starts], boundary[starts], kwh
        await conn.execute(
            "CREATE TEMP TABLE half_hours (meter int4, interval_start timestamptz, kwh float8)"
        )
        clock.mark()
        await conn.copy_to_table(
            "half_hours", source=io.BytesIO(HEADER + back.tobytes() + b"\xff\xff"), format="binary"
        )
        clock.lap(f"{len(back):,} half-hours in")
    finally:
        await conn.close()


def main() -> None:
    warnings.simplefilter("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--meters", type=int, default=200)
    args = parser.parse_args()
    with throwaway_loadbay("energy-numpy") as settings:
        history = settings.imports_dir / "meter_history.csv"
        write_readings(history, args.meters, 0, args.readings // args.meters, seed=0)
        dsn = settings.database_url.get_secret_value()

        async def load() -> None:
            db = Database(dsn)
            try:
                await run_ingest(settings, db, DatasetRegistry.from_toml({}), [history])
            finally:
                await db.close()

        asyncio.run(load())
        asyncio.run(measure(dsn))


if __name__ == "__main__":
    main()
