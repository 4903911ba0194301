"""Drop → committed latency of small files with `main.py --watch` running.

    .venv/bin/python -m benchmarks.latency [--files 60] [--drops rename,write] [--gaps 0.2,1.0]

Two ways to drop a file, one series per way and gap:

- `rename` (DESIGN §10's target): the file is written in a folder beside the watched one (same
  file system) and renamed into it, as uploaders publish a finished file; the clock starts when
  rename() returns. A rename into the folder is taken at once (DESIGN §3.2).
- `write`: the file is written by open/write/close straight into the watched folder (as a local
  copy would appear); the clock starts when close() returns.

One file at a time, `gap` seconds after the previous one was seen committed. The clock stops when
this process first sees the file's ledger row, which becomes visible only when the load
transaction commits. The ledger's own `loaded_at` is not used: see README, "Findings".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import asyncpg

from benchmarks.datagen import METERS, meter_csv_text
from benchmarks.pg import BenchServer
from benchmarks.procs import Measured, load_average
from benchmarks.scenarios import PYTHON, ROOT, CheckFailed, Scenarios, loadbay_env

POLL_SECONDS = 0.002
TIMEOUT_SECONDS = 60.0
Drop = Literal["rename", "write"]
DROPS: tuple[Drop, ...] = ("rename", "write")
DROP_LABELS: dict[str, str] = {
    "rename": "renamed in",
    "write": "written in place (open/write/close)",
}


@dataclass
class LatencyResult:
    """One series of drops, each `gap_seconds` after the previous file was seen committed."""

    files: int
    rows_per_file: int
    settle_seconds: float
    gap_seconds: float
    drop: Drop = "write"  # the default reads results saved before the rename series existed
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


async def _drop_and_wait(conn: asyncpg.Connection, folder: Path, index: int, rows: int, drop: Drop) -> float:
    name = f"meter_readings_drop_{index:04d}.csv"
    # Distinct readings per file, so that no drop is a duplicate of another.
    text = meter_csv_text(rows, first_step=100_000 + index * (rows // METERS + 1), seed=index)
    # Written beside the watched folder for a rename, so that the watcher sees only the rename.
    written = folder.parent / "outgoing" / name if drop == "rename" else folder / name
    with open(written, "w", encoding="utf-8", newline="") as out:
        out.write(text)
    if drop == "rename":
        os.rename(written, folder / name)
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
            result.first_file_s = await _drop_and_wait(conn, folder, index, result.rows_per_file, result.drop)
            index += 1
            for _ in range(result.files):
                await asyncio.sleep(result.gap_seconds)
                result.latencies_s.append(
                    await _drop_and_wait(conn, folder, index, result.rows_per_file, result.drop)
                )
                index += 1
        total = await conn.fetchval("SELECT count(*) FROM staging.meter_readings")
        expected = sum((r.files + 1) * r.rows_per_file for r in results)
        if total != expected:
            raise CheckFailed(f"staging has {total} rows after the drops, expected {expected}")
    finally:
        await conn.close()


def wait_for_line(log_path: Path, needle: str, child: Measured, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in log_path.read_text(encoding="utf-8", errors="replace"):
            return
        if not child.running():
            raise CheckFailed(f"the watcher exited early:\n{child.output()[-3000:]}")
        time.sleep(0.05)
    raise CheckFailed(f"the watcher did not log {needle!r} within {timeout:.0f} s")


def measure_latency(
    scenarios: Scenarios,
    files: int,
    rows: int,
    settle_seconds: float,
    gaps: list[float],
    drops: tuple[Drop, ...] = DROPS,
) -> list[LatencyResult]:
    """Start one watcher; for each way of dropping and each gap, drop a first file and then
    `files` timed ones."""
    name, dsn = scenarios.server.create_database("bench_watch", template=scenarios.template)
    run_dir = scenarios.work / "runs" / "latency"
    shutil.rmtree(run_dir, ignore_errors=True)
    folder = run_dir / "imports"
    folder.mkdir(parents=True)
    (run_dir / "outgoing").mkdir()
    log_path = run_dir / "watcher.log"
    env = loadbay_env(dsn, run_dir, scenarios.code_dir, WATCH_SETTLE_SECONDS=str(settle_seconds))
    results = [LatencyResult(files, rows, settle_seconds, gap, drop) for drop in drops for gap in gaps]
    child = Measured([PYTHON, "main.py", "--watch"], env=env, cwd=scenarios.code_dir, log_path=log_path)
    try:
        wait_for_line(log_path, "watching ", child)
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


def parse_drops(text: str) -> tuple[Drop, ...]:
    drops = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [d for d in drops if d not in DROPS]
    if unknown or not drops:
        raise argparse.ArgumentTypeError(f"drops are {', '.join(DROPS)}; got {text!r}")
    return drops  # type: ignore[return-value]  # checked against DROPS just above


def main(argv: list[str] | None = None) -> int:
    """The latency series alone, on a fresh embedded server, with verdicts."""
    from benchmarks import report  # report imports this module

    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=60, help="timed drops per series (60)")
    parser.add_argument("--rows", type=int, default=1_000, help="rows of each drop (1,000)")
    parser.add_argument(
        "--gaps", default="0.2,1.0", help="seconds between a commit and the next drop (0.2,1.0)"
    )
    parser.add_argument("--drops", type=parse_drops, default=DROPS, help="rename,write (both)")
    parser.add_argument("--settle", type=float, default=2.0, help="WATCH_SETTLE_SECONDS of the watcher (2)")
    args = parser.parse_args(argv)
    gaps = [float(g) for g in args.gaps.split(",")]
    work = Path(__file__).resolve().parent / "work"
    server = BenchServer()
    try:
        scenarios = Scenarios(server, work, ROOT)
        scenarios.migrate_template()
        results = measure_latency(scenarios, args.files, args.rows, args.settle, gaps, args.drops)
    finally:
        server.stop()
    print("\n".join([*report.latency_targets(results), "", *report.latency_table(results)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
