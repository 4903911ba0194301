"""Drop → committed latency of small files with `main.py --watch` running.

Each file is written by open/write/close straight into the watched folder (as a local copy or an
upload would appear), one at a time, `gap` seconds after the previous one was seen committed. The
clock starts when close() returns and stops when this process first sees the file's ledger row,
which becomes visible only when the load transaction commits. The ledger's own `loaded_at` is not
used: see README, "Findings".
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from benchmarks.datagen import METERS, meter_csv_text
from benchmarks.procs import Measured, load_average
from benchmarks.scenarios import PYTHON, CheckFailed, Scenarios, loadbay_env

POLL_SECONDS = 0.002
TIMEOUT_SECONDS = 60.0


@dataclass
class LatencyResult:
    """One series of drops, each `gap_seconds` after the previous file was seen committed."""

    files: int
    rows_per_file: int
    settle_seconds: float
    gap_seconds: float
    latencies_s: list[float] = field(default_factory=list)
    first_file_s: float = 0.0
    watcher_peak_rss_mb: float = 0.0
    load_avg_before: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def median(self) -> float:
        return statistics.median(self.latencies_s)

    @property
    def p95(self) -> float:
        return percentile(self.latencies_s, 95)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest value at or above pct % of the values."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


async def _drop_and_wait(conn: asyncpg.Connection, folder: Path, index: int, rows: int) -> float:
    name = f"meter_readings_drop_{index:04d}.csv"
    # Distinct readings per file, so that no drop is a duplicate of another.
    text = meter_csv_text(rows, first_step=100_000 + index * (rows // METERS + 1), seed=index)
    with open(folder / name, "w", encoding="utf-8", newline="") as out:
        out.write(text)
    dropped = time.perf_counter()
    deadline = dropped + TIMEOUT_SECONDS
    while time.perf_counter() < deadline:
        row = await conn.fetchrow("SELECT status, rows_loaded FROM ingest.files WHERE name = $1", name)
        if row is not None:
            seen = time.perf_counter()
            if (row["status"], row["rows_loaded"]) != ("loaded", rows):
                raise CheckFailed(f"{name}: ledger says {dict(row)}")
            return seen - dropped
        await asyncio.sleep(POLL_SECONDS)
    raise CheckFailed(f"{name} was not committed within {TIMEOUT_SECONDS:.0f} s")


async def _series(dsn: str, folder: Path, results: list[LatencyResult]) -> None:
    conn = await asyncpg.connect(dsn)
    index = 0
    try:
        for result in results:
            result.load_avg_before = load_average()
            await asyncio.sleep(1.0)  # let the previous series' last move age out of watchdog's queue
            result.first_file_s = await _drop_and_wait(conn, folder, index, result.rows_per_file)
            index += 1
            for _ in range(result.files):
                await asyncio.sleep(result.gap_seconds)
                result.latencies_s.append(await _drop_and_wait(conn, folder, index, result.rows_per_file))
                index += 1
        total = await conn.fetchval("SELECT count(*) FROM staging.meter_readings")
        expected = sum((r.files + 1) * r.rows_per_file for r in results)
        if total != expected:
            raise CheckFailed(f"staging has {total} rows after the drops, expected {expected}")
    finally:
        await conn.close()


def _wait_for_line(log_path: Path, needle: str, child: Measured, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in log_path.read_text(encoding="utf-8", errors="replace"):
            return
        if not child.running():
            raise CheckFailed(f"the watcher exited early:\n{child.output()[-3000:]}")
        time.sleep(0.05)
    raise CheckFailed(f"the watcher did not log {needle!r} within {timeout:.0f} s")


def measure_latency(
    scenarios: Scenarios, files: int, rows: int, settle_seconds: float, gaps: list[float]
) -> list[LatencyResult]:
    """Start one watcher; for each gap, drop a first file and then `files` timed ones."""
    name, dsn = scenarios.server.create_database("bench_watch", template=scenarios.template)
    run_dir = scenarios.work / "runs" / "latency"
    shutil.rmtree(run_dir, ignore_errors=True)
    folder = run_dir / "imports"
    folder.mkdir(parents=True)
    log_path = run_dir / "watcher.log"
    env = loadbay_env(dsn, run_dir, scenarios.code_dir, WATCH_SETTLE_SECONDS=str(settle_seconds))
    results = [LatencyResult(files, rows, settle_seconds, gap) for gap in gaps]
    child = Measured([PYTHON, "main.py", "--watch"], env=env, cwd=scenarios.code_dir, log_path=log_path)
    try:
        _wait_for_line(log_path, "watching ", child)
        asyncio.run(_series(dsn, folder, results))
    finally:
        child.stop()
        run = child.finish()
        scenarios.server.drop_database(name)
    if run.exit_code != 0:
        raise CheckFailed(f"the watcher exited with {run.exit_code}:\n{run.output[-3000:]}")
    for result in results:
        result.watcher_peak_rss_mb = run.peak_rss_mb
    return results
