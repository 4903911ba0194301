"""Four files of one dataset with the watcher at INGEST_WORKERS=1 and at 2 (DESIGN §10: ≥ 1.5×).

    .venv/bin/python -m benchmarks.parallel_bench [--rows 250000] [--files 4] [--rounds 3]

`main.py --ingest` loads its files one after another; the workers are watch mode's. So each run
starts `main.py --watch` on a fresh database (a copy of a template loadbay migrated), copies the
files (distinct content, one dataset: `staging.meter_readings`) into a folder beside the drop
folder, renames them all into it, and times from the first rename to the moment this process
first sees the last of their ledger rows committed (polling every 5 ms). Rounds alternate the
worker counts (1, 2, then 2, 1, ...) so that both see the same machine load; the medians and
their ratio are printed as Markdown. Every run is checked: each file `loaded` with its row count,
`_record_no` 1…N within each file, the staging total.

Two modes, each its own watcher runs: `cold` times the files as the first loads of a fresh watcher;
`warm` first drops one small file per worker at once and waits for them, so that every worker's
connection has loaded into the table before the clock starts (a watcher that has been running).
They once differed by seconds, when each session's first load drew a block of a per-table record
sequence (see README, "2026-12-04 (issue 16)"); the loader now writes the record numbers itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from benchmarks import source
from benchmarks.datagen import METERS, Generated, ensure_meter_csv, meter_csv_text, write_meter_csv
from benchmarks.latency import wait_for_line
from benchmarks.pg import BenchServer
from benchmarks.procs import Measured, load_average, machine
from benchmarks.scenarios import PYTHON, ROOT, CheckFailed, Scenarios, loadbay_env

WORK = Path(__file__).resolve().parent / "work"
POLL_SECONDS = 0.005
TIMEOUT_SECONDS = 300.0
SPEED_UP_TARGET = 1.5
# e.g. "2026-12-04 16:44:36,428 INFO    services.ingest.loader: loading NAME (#1) as meter_readings"
_LOADER_LINE = re.compile(
    r"(?P<when>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO +services\.ingest\.loader: "
    r"(?P<what>loading|loaded) (?P<name>\S+) \(#"
)
WARM_UP_ROWS = 1_000
MODES = ("warm", "cold")


@dataclass
class ParallelRun:
    """One watcher run: `files` renamed in at once, first rename → last commit."""

    workers: int
    mode: str
    round_no: int
    seconds: float
    overlapping_pairs: int  # pairs of loads that overlapped in time (the loader's log lines)
    load_spans_s: list[float] = field(default_factory=list)  # each file's "loading" → "loaded" line
    watcher_peak_rss_mb: float = 0.0
    load_avg_before: tuple[float, float, float] = (0.0, 0.0, 0.0)


def generate(rows: int, files: int) -> list[Generated]:
    """`files` meter CSVs of `rows` rows, each a later stretch of time: same dataset, distinct content."""
    folder = WORK / "data" / "parallel"
    steps = -(-rows // METERS)
    made = []
    for index in range(files):
        path = folder / f"meter_readings_part{index + 1}_{rows}.csv"
        if index == 0:
            made.append(ensure_meter_csv(path, rows))  # the same rows as the ingest bench's file
            continue
        if path.exists() and path.stat().st_size > 0:
            made.append(Generated(path, rows, 0, path.stat().st_size))
            continue
        tmp = path.with_name("." + path.name + ".tmp")
        write_meter_csv(tmp, rows, first_step=index * steps, seed=7 + index)
        tmp.replace(path)
        made.append(Generated(path, rows, 0, path.stat().st_size))
    return made


async def _wait_for_commits(
    dsn: str, names: list[str], rows: int, started: float
) -> tuple[float, list[asyncpg.Record]]:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = started + TIMEOUT_SECONDS
        while time.perf_counter() < deadline:
            done = await conn.fetchval("SELECT count(*) FROM ingest.files WHERE name = ANY($1)", names)
            if done == len(names):
                seen = time.perf_counter() - started
                ledger = await conn.fetch(
                    "SELECT id, name, status, rows_loaded, received_at, loaded_at FROM ingest.files"
                    " WHERE name = ANY($1) ORDER BY id",
                    names,
                )
                return seen, ledger
            await asyncio.sleep(POLL_SECONDS)
        raise CheckFailed(f"not all of {names} were committed within {TIMEOUT_SECONDS:.0f} s")
    finally:
        await conn.close()


async def _check_staging(dsn: str, rows: int, file_ids: list[int]) -> None:
    files = len(file_ids)
    conn = await asyncpg.connect(dsn)
    try:
        per_file = await conn.fetch(
            "SELECT _file_id, count(*) AS n, min(_record_no) AS lo, max(_record_no) AS hi,"
            " count(DISTINCT _record_no) AS distinct_no FROM staging.meter_readings"
            " WHERE _file_id = ANY($1) GROUP BY _file_id",
            file_ids,
        )
    finally:
        await conn.close()
    if len(per_file) != files:
        raise CheckFailed(f"staging holds rows of {len(per_file)} files, expected {files}")
    for r in per_file:
        if (r["n"], r["lo"], r["hi"], r["distinct_no"]) != (rows, 1, rows, rows):
            raise CheckFailed(f"file #{r['_file_id']}: _record_no is not 1…{rows}: {dict(r)}")


def load_spans(log_text: str, names: list[str]) -> list[tuple[datetime, datetime]]:
    """(start, end) of each file's load from the loader's "loading NAME" and "loaded NAME" lines.

    The ledger's received_at is when the watcher first saw the file, not when its load began."""
    starts: dict[str, datetime] = {}
    ends: dict[str, datetime] = {}
    for line in log_text.splitlines():
        match = _LOADER_LINE.match(line)
        if match and match["name"] in names:
            when = datetime.strptime(match["when"], "%Y-%m-%d %H:%M:%S,%f")
            (starts if match["what"] == "loading" else ends)[match["name"]] = when
    if set(starts) != set(names) or set(ends) != set(names):
        raise CheckFailed(f"the watcher log lacks 'loading'/'loaded' lines of some of {names}")
    return [(starts[n], ends[n]) for n in names]


def overlapping_pairs(spans: list[tuple[datetime, datetime]]) -> int:
    return sum(
        1
        for i, (a_start, a_end) in enumerate(spans)
        for b_start, b_end in spans[i + 1 :]
        if a_start < b_end and b_start < a_end
    )


def _warm_up(dsn: str, imports: Path, outgoing: Path, workers: int) -> None:
    """One small file per worker, renamed in at once: each worker's connection loads once."""
    names = []
    for index in range(workers):
        name = f"meter_readings_warm_up_{index}.csv"
        text = meter_csv_text(WARM_UP_ROWS, first_step=1_000_000 + index * 10, seed=100 + index)
        (outgoing / name).write_text(text, encoding="utf-8")
        names.append(name)
    for name in names:
        os.rename(outgoing / name, imports / name)
    asyncio.run(_wait_for_commits(dsn, names, WARM_UP_ROWS, time.perf_counter()))


def one_run(
    bench: Scenarios, files: list[Generated], workers: int, mode: str, round_no: int, settle: float
) -> ParallelRun:
    name, dsn = bench.server.create_database("bench_parallel", template=bench.template)
    bench.server.checkpoint()
    run_dir = WORK / "runs" / "parallel"
    shutil.rmtree(run_dir, ignore_errors=True)
    imports, outgoing = run_dir / "imports", run_dir / "outgoing"
    imports.mkdir(parents=True)
    outgoing.mkdir()
    for generated in files:  # same file system as imports/, so the rename is atomic
        shutil.copyfile(generated.path, outgoing / generated.path.name)
    env = loadbay_env(
        dsn, run_dir, bench.code_dir, INGEST_WORKERS=str(workers), WATCH_SETTLE_SECONDS=str(settle)
    )
    log_path = run_dir / "watcher.log"
    load_before = load_average()
    child = Measured([PYTHON, "main.py", "--watch"], env=env, cwd=bench.code_dir, log_path=log_path)
    try:
        wait_for_line(log_path, f"{workers} workers)", child)
        time.sleep(1.0)  # the start-up rescan and imports are over before the clock runs
        if mode == "warm":
            _warm_up(dsn, imports, outgoing, workers)
        names = [g.path.name for g in files]
        started = time.perf_counter()
        for file_name in names:
            os.rename(outgoing / file_name, imports / file_name)
        seconds, ledger = asyncio.run(_wait_for_commits(dsn, names, files[0].rows, started))
        for row in ledger:
            if (row["status"], row["rows_loaded"]) != ("loaded", files[0].rows):
                raise CheckFailed(f"{row['name']}: ledger says {row['status']}, {row['rows_loaded']} rows")
        asyncio.run(_check_staging(dsn, files[0].rows, [row["id"] for row in ledger]))
    finally:
        child.stop()
        finished = child.finish()
        bench.server.drop_database(name)
    if finished.exit_code != 0:
        raise CheckFailed(f"the watcher exited with {finished.exit_code}:\n{finished.output[-3000:]}")
    spans = load_spans(finished.output, [g.path.name for g in files])
    return ParallelRun(
        workers,
        mode,
        round_no,
        seconds,
        overlapping_pairs(spans),
        [(end - start).total_seconds() for start, end in spans],
        finished.peak_rss_mb,
        load_before,
    )


def render(runs: list[ParallelRun], files: list[Generated], info: dict[str, object]) -> list[str]:
    by_mode: dict[tuple[str, int], list[ParallelRun]] = {}
    for run in runs:
        by_mode.setdefault((run.mode, run.workers), []).append(run)
    medians = {key: statistics.median(r.seconds for r in rs) for key, rs in by_mode.items()}
    lines = [
        f"{len(files)} files × {files[0].rows:,} rows ({files[0].size_bytes / 1e6:.1f} MB each) "
        f"of one dataset renamed into the folder at once; first rename → last commit; load average (1 min) "
        f"{min(r.load_avg_before[0] for r in runs):.2f}–{max(r.load_avg_before[0] for r in runs):.2f} "
        f"before the runs; loadbay {info['loadbay']}",
        "",
        "| watcher | INGEST_WORKERS | median s | min–max s | runs | overlapping load pairs (median) | "
        "median load span per file s | watcher peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, workers in sorted(by_mode, key=lambda key: (MODES.index(key[0]), key[1])):
        rs = by_mode[(mode, workers)]
        seconds = [r.seconds for r in rs]
        lines.append(
            f"| {mode} | {workers} | {medians[(mode, workers)]:.2f} | "
            f"{min(seconds):.2f}–{max(seconds):.2f} | {len(rs)} | "
            f"{statistics.median(r.overlapping_pairs for r in rs):g} | "
            f"{statistics.median(s for r in rs for s in r.load_spans_s):.2f} | "
            f"{max(r.watcher_peak_rss_mb for r in rs):.0f} |"
        )
    targets = ["", "| DESIGN §10 target | measured | limit | verdict |", "|---|---:|---:|---|"]
    for mode in MODES:
        if (mode, 1) in medians and (mode, 2) in medians:
            ratio = medians[(mode, 1)] / medians[(mode, 2)]
            verdict = "met" if ratio >= SPEED_UP_TARGET else "**MISSED**"
            targets.append(
                f"| {len(files)} files of one dataset, INGEST_WORKERS=2 vs 1, {mode} watcher | "
                f"{ratio:.2f}× faster | ≥ {SPEED_UP_TARGET}× | {verdict} |"
            )
    return lines + targets if len(targets) > 3 else lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.parallel_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rows", type=int, default=250_000, help="rows of each file (250,000)")
    parser.add_argument("--files", type=int, default=4, help="files renamed in at once (4)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each runs 1 and 2 workers (3)")
    parser.add_argument(
        "--modes", default="warm,cold", help="warm (connections loaded once before), cold, or both"
    )
    parser.add_argument(
        "--settle", type=float, default=2.0, help="WATCH_SETTLE_SECONDS (2; a rename is taken at once anyway)"
    )
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes takes {','.join(MODES)}")
    info: dict[str, object] = {**machine(), "loadbay": source.describe(source.working_tree(ROOT))}
    source.compiled(ROOT)
    files = generate(args.rows, args.files)
    server = BenchServer()
    runs: list[ParallelRun] = []
    try:
        bench = Scenarios(server, WORK, ROOT)
        bench.migrate_template()
        for round_no in range(args.rounds):
            order = (1, 2) if round_no % 2 == 0 else (2, 1)
            for mode, workers in ((mode, workers) for mode in modes for workers in order):
                run = one_run(bench, files, workers, mode, round_no + 1, args.settle)
                runs.append(run)
                print(
                    f"round {round_no + 1}/{args.rounds}, {mode}, {workers} worker(s): {run.seconds:.2f} s, "
                    f"{run.overlapping_pairs} overlapping pairs, load {run.load_avg_before[0]:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        server.stop()
    lines = render(runs, files, info)
    print("\n".join(lines))
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = WORK / f"parallel-results-{stamp}.json"
    out.write_text(
        json.dumps({"machine": info, "arguments": vars(args), "runs": [asdict(r) for r in runs]}, indent=2)
    )
    print(f"raw figures in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
