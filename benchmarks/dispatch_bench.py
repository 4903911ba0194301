"""Dispatch benchmark: 1,000 shipments to the DeTrack stand-in at 100 ms a request, 60 a minute.

    .venv/bin/python -m benchmarks.dispatch_bench [--shipments 1000] [--latency 0.1]

Runs against a throw-away embedded PostgreSQL and the test suite's DeTrack stand-in (a real HTTP
server on 127.0.0.1). The warehouse is filled through loadbay (not timed); what is timed is one
`run_dispatch`: planning, bulk creates, status sync. Target (DESIGN §10): <= 15 s, no job twice.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import warnings
from pathlib import Path

from app.db import Database
from benchmarks.throwaway import throwaway_loadbay
from models.datasets import DatasetRegistry
from models.outbox import OutboxStatus
from services.dispatch import run_dispatch
from services.ingest import run_ingest
from services.pipeline import run_pipeline
from tests.detrack_standin import DetrackStandin

KEY = "bench-key"
VEHICLES = [{"id": n, "name": f"Van {n}", "detrack_id": f"V{n}"} for n in range(1, 6)]


def shipments_csv(path: Path, count: int) -> None:
    with path.open("w") as out:
        out.write(
            "JobNumber,ShipmentNumber,ShipAddress1,ShipCity,ShipZip,ShipCountry,ShipVia,IsPartial,"
            "ScheduledShipDate\n"
        )
        for n in range(count):
            job = f"J{n // 2:05d}"  # two shipments a job: every other one gets the (2) suffix
            out.write(
                f"{job},S{n:06d},Unit {n} Example Park,Leeds,LS1 4AP,United Kingdom,10005,1,"
                f"2024-06-{3 + n % 5:02d}\n"
            )


def main() -> None:
    warnings.simplefilter("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shipments", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.1)
    args = parser.parse_args()
    with (
        DetrackStandin(KEY, vehicles=VEHICLES, rate_limit_per_minute=60, send_retry_after=True) as api,
        throwaway_loadbay("dispatch-bench", detrack_api_key=KEY, detrack_base_url=api.base_url) as settings,
    ):
        api.latency(args.latency)
        shipments_csv(settings.imports_dir / "shipments_bench.csv", args.shipments)

        async def go() -> tuple[float, int, int]:
            db = Database(settings.database_url.get_secret_value())
            try:
                await run_ingest(settings, db, DatasetRegistry.from_toml({}), [settings.imports_dir])
                await run_pipeline(settings, db)
                started = time.monotonic()
                result = await run_dispatch(settings, db)
                sent = result.by_status.get(OutboxStatus.SENT, 0)
                return time.monotonic() - started, result.counts.sent, sent
            finally:
                await db.close()

        seconds, created, sent = asyncio.run(go())
        twice = sum(1 for key in api.jobs if api.created_count(*key) != 1)
        print(
            f"dispatch of {args.shipments} shipments, {args.latency * 1000:.0f} ms a request, "
            "60 requests a minute"
        )
        print(
            f"  {seconds:.2f} s, {len(api.requests)} requests, {created} jobs created, {sent} sent, "
            f"{twice} created twice   target <= 15 s: {'OK' if seconds <= 15 and not twice else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
