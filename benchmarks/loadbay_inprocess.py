"""loadbay's ingest timed inside a process that is already up, as the watcher would run it.

    PYTHONPATH=LOADBAY_SOURCE python benchmarks/loadbay_inprocess.py FILE   (cwd: LOADBAY_SOURCE)

Does what `main.py --ingest FILE` does (settings from the environment, logging, migrations, a
connection pool, `services.ingest.run_ingest`) but starts the clock only once the process is up
and the pool holds a connection, and stops it when `run_ingest` returns (after commit and move).
Prints one JSON line: seconds and the outcome.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from app.datasets import load_registry
from app.db import Database, resolve_dsn
from app.logging import setup_logging
from app.migrate import migrate
from app.settings import Settings
from services.ingest import run_ingest


async def ingest(path: Path) -> dict[str, object]:
    settings = Settings()
    settings.ensure_folders()
    setup_logging(settings)
    registry = load_registry(settings)
    dsn = await asyncio.to_thread(resolve_dsn, settings)
    await asyncio.to_thread(migrate, dsn, settings, registry)  # as main.py: it runs its own loop
    db = Database(dsn, max_size=settings.ingest_workers + 2)
    try:
        async with db.connection() as conn:  # open the pool before the clock starts
            await conn.fetchval("SELECT 1")
        started = time.perf_counter()
        result = await run_ingest(settings, db, registry, [path])
        seconds = time.perf_counter() - started
    finally:
        await db.close()
    outcome = result.outcomes[0]
    return {
        "ingest_s": seconds,
        "status": outcome.status,
        "rows_loaded": outcome.rows_loaded,
        "rows_rejected": outcome.rows_rejected,
    }


def main(argv: list[str]) -> int:
    print(json.dumps(asyncio.run(ingest(Path(argv[0])))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
