"""The file-format targets of DESIGN §10, measured in one run on one embedded PostgreSQL:

- a `;`-separated 1M-row meter CSV, and the same with decimal commas (`decimal = ","` declared),
  against `psql \\copy` of the comma file;
- the same rows as Parquet against the same `psql \\copy`;
- a 100,000-row shipments workbook (.xlsx) against `pandas.read_excel` + `DataFrame.to_sql`.

    .venv/bin/python -m benchmarks.formats_bench [--rows 1000000] [--xlsx-rows 100000] [--repeat 1]

Every loadbay run is `main.py --ingest FILE` from process start to exit, checked against what it
should have loaded (the meter files: the same rows and sums as `psql \\copy` loaded).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.datagen import ensure_meter_csv
from benchmarks.pg import BenchServer, execute, fetch
from benchmarks.procs import load_average, machine, run_timed
from benchmarks.scenarios import PYTHON, ROOT, CheckFailed, Run, Scenarios, _checked, _fresh_dir, loadbay_env

WORK = Path(__file__).resolve().parent / "work"
DECIMAL_COMMA = '[datasets.meter_readings]\ndecimal = ","\n'
SHIPMENT_HEADER = [
    "JobNumber", "ShipmentNumber", "ShipName", "ShipAddress1", "ShipCity", "ShipState", "ShipZip",
    "ShipCountry", "ShipVia", "IsPartial", "Shipped", "ScheduledShipDate", "ScheduledShipQuantity",
]  # fmt: skip


def log(message: str) -> None:
    print(f"[formats_bench] {message}", file=sys.stderr, flush=True)


def semicolon_copies(comma: Path) -> tuple[Path, Path]:
    """The comma file with `;` between fields, and again with decimal commas too."""
    plain = comma.with_name(comma.stem + "_semicolon.csv")
    continental = comma.with_name(comma.stem + "_decimal_comma.csv")
    if not (plain.exists() and continental.exists()):
        with (
            open(comma, encoding="utf-8") as source,
            open(plain, "w", encoding="utf-8") as a,
            open(continental, "w", encoding="utf-8") as b,
        ):
            for line in source:
                semi = line.replace(",", ";")
                a.write(semi)
                b.write(semi.replace(".", ","))
    return plain, continental


def parquet_copy(comma: Path) -> Path:
    """The same rows as Parquet, written by pyarrow as a data platform writes them: exact
    decimals, UTC timestamps, one row group per million rows (pyarrow's default)."""
    target = comma.with_suffix(".parquet")
    if not target.exists():
        import pyarrow as pa
        import pyarrow.csv as pa_csv
        import pyarrow.parquet as pq

        types = {
            "meter_id": pa.string(),
            "reading_at": pa.timestamp("s", "UTC"),
            "register_kwh": pa.decimal128(14, 3),
            "power_w": pa.decimal128(10, 1),
        }
        table = pa_csv.read_csv(comma, convert_options=pa_csv.ConvertOptions(column_types=types))
        pq.write_table(table, target)
    return target


def shipments_workbook(rows: int) -> Path:
    """A shipments workbook as Excel writes one: shared strings, date-formatted cells, booleans."""
    target = WORK / "data" / f"shipments_{rows}.xlsx"
    if not target.exists():
        from datetime import date, timedelta

        sys.path.insert(0, str(ROOT))
        from tests.integration.workbooks import xlsx  # the test suite's Excel-like writer

        first = date(2024, 6, 1)
        body = [
            [f"J{i:06d}", f"S{i:07d}", f"Customer {i}", f"{i} Main Street", "Springfield", "IL",
             f"{i % 99999:05d}", "US", "10005", i % 2 == 0, False, first + timedelta(days=i % 30), i % 50]
            for i in range(rows)
        ]  # fmt: skip
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(xlsx({"Shipments": [SHIPMENT_HEADER, *body]}))
    return target


class FormatScenarios(Scenarios):
    def loadbay_workbook(self, path: Path, rows: int) -> Run:
        name, dsn = self._database("bench_lb")
        run_dir = _fresh_dir(self.work / "runs" / "loadbay_xlsx")
        drop = run_dir / "imports" / path.name
        os.link(path, drop)
        try:
            before = load_average()
            run = _checked(
                run_timed(
                    [PYTHON, "main.py", "--ingest", drop],
                    env=loadbay_env(dsn, run_dir, self.code_dir),
                    cwd=self.code_dir,
                    log_path=run_dir / "output.log",
                ),
                "loadbay xlsx",
            )
            ledger = fetch(dsn, "SELECT status, rows_loaded, rows_rejected FROM ingest.files")
            if [tuple(r) for r in ledger] != [("loaded", rows, 0)]:
                raise CheckFailed(f"loadbay xlsx: ledger {[tuple(r) for r in ledger]}")
            check = _shipments_summary(dsn, "staging.shipments")
            return Run("loadbay_xlsx", run.seconds, run.peak_rss_mb, before, check)
        finally:
            self.server.drop_database(name)

    def pandas_excel(self, path: Path, rows: int) -> Run:
        name, dsn = self._database("bench_pandas")
        table = "public.shipments_copy"
        try:
            execute(
                dsn,
                f"CREATE TABLE {table} (LIKE staging.shipments)",
                f"ALTER TABLE {table} ALTER COLUMN _file_id DROP NOT NULL, "
                "ALTER COLUMN _record_no DROP NOT NULL",
            )
            self.server.checkpoint()
            before = load_average()
            run = _checked(
                run_timed(
                    [PYTHON, "-m", "benchmarks.pandas_excel", dsn, table, path],
                    cwd=ROOT,
                    log_path=self.work / "runs" / "pandas_excel.log",
                ),
                "pandas read_excel + to_sql",
            )
            phases = json.loads(run.output.strip().splitlines()[-1])
            if fetch(dsn, f"SELECT count(*) FROM {table}")[0][0] != rows:
                raise CheckFailed("pandas loaded another number of rows")
            return Run("pandas_excel", run.seconds, run.peak_rss_mb, before, phases)
        finally:
            self.server.drop_database(name)


def _shipments_summary(dsn: str, table: str) -> dict[str, object]:
    row = fetch(
        dsn,
        "SELECT count(*) AS rows, count(DISTINCT ship_zip) AS zips, "
        "sum(scheduled_ship_quantity) AS quantity, count(*) FILTER (WHERE is_partial) AS partial, "
        f"min(scheduled_ship_date)::text AS first FROM {table}",
    )[0]
    return dict(row)


def median(runs: list[Run]) -> Run:
    ordered = sorted(runs, key=lambda r: r.seconds)
    return ordered[len(ordered) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--xlsx-rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)

    comma = ensure_meter_csv(WORK / "data" / f"meter_{args.rows}.csv", args.rows).path
    semicolon, continental = semicolon_copies(comma)
    parquet = parquet_copy(comma)
    workbook = shipments_workbook(args.xlsx_rows)
    log(f"files ready in {WORK / 'data'}")

    server = BenchServer()
    results: dict[str, list[Run]] = {}
    started = time.monotonic()
    try:
        bench = FormatScenarios(server, WORK, ROOT)
        bench.migrate_template()
        plan: list[tuple[str, Callable[[], Run]]] = [
            ("psql_copy", lambda: bench.psql_copy(comma, args.rows)),
            ("psql_copy_staging", lambda: bench.psql_copy(comma, args.rows, into_staging=True)),
            ("loadbay_startup", bench.loadbay_startup),
            ("loadbay_comma", lambda: bench.loadbay_ingest(comma, args.rows, 0, "loadbay_comma")),
            ("loadbay_semicolon", lambda: bench.loadbay_ingest(semicolon, args.rows, 0, "loadbay_semicolon")),
            (
                "loadbay_decimal_comma",
                lambda: bench.loadbay_ingest(
                    continental, args.rows, 0, "loadbay_decimal_comma", datasets_toml=DECIMAL_COMMA
                ),
            ),
            ("loadbay_parquet", lambda: bench.loadbay_ingest(parquet, args.rows, 0, "loadbay_parquet")),
            ("loadbay_xlsx", lambda: bench.loadbay_workbook(workbook, args.xlsx_rows)),
            ("pandas_excel", lambda: bench.pandas_excel(workbook, args.xlsx_rows)),
        ]
        for _ in range(args.repeat):
            for name, scenario in plan:
                run = scenario()
                results.setdefault(name, []).append(run)
                log(f"{name}: {run.seconds:.2f} s, peak {run.peak_rss_mb:.0f} MB {run.detail}")
    finally:
        server.stop()
    lines = render(results, args, time.monotonic() - started)
    print("\n".join(lines))
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    (WORK / f"formats-{stamp}.md").write_text("\n".join(lines) + "\n")
    return 0


def render(results: dict[str, list[Run]], args: argparse.Namespace, elapsed: float) -> list[str]:
    m = {name: median(runs) for name, runs in results.items()}
    psql, pandas, startup = m["psql_copy"].seconds, m["pandas_excel"].seconds, m["loadbay_startup"].seconds
    info = machine()
    lines = [
        f"Formats, {args.rows:,} meter rows and {args.xlsx_rows:,} workbook rows, median of {args.repeat}; "
        f"load average {load_average()[0]:.2f} at the end; {elapsed:.0f} s; {info.get('cpus', '?')} CPUs. "
        f"Ratios to psql \\copy of the comma file as a whole process, and net of loadbay's start-up "
        f"({startup:.2f} s, measured in the same run).",
        "",
        "| scenario | seconds | ratio (whole) | ratio (net of start-up) | peak MB | target | verdict (net) |",
        "|---|---:|---:|---:|---:|---|---|",
        f"| psql \\copy of the comma file (baseline) | {psql:.2f} | 1.00× | 1.00× | "
        f"{m['psql_copy'].peak_rss_mb:.0f} | | |",
    ]

    def row(name: str, what: str, limit: float, memory: float | None = None) -> None:
        r = m[name]
        net = (r.seconds - startup) / psql
        ok = net <= limit and (memory is None or r.peak_rss_mb <= memory)
        target = f"≤ {limit:g}×" + (f", ≤ {memory:g} MB" if memory else "")
        lines.append(
            f"| {what} | {r.seconds:.2f} | {r.seconds / psql:.2f}× | {net:.2f}× | {r.peak_rss_mb:.0f} | "
            f"{target} | {'met' if ok else 'NOT met'} |"
        )

    staging = m["psql_copy_staging"].seconds
    lines.append(
        f"| psql \\copy of the comma file into the staging table itself (for information) | {staging:.2f} | "
        f"{staging / psql:.2f}× | {staging / psql:.2f}× | {m['psql_copy_staging'].peak_rss_mb:.0f} | | |"
    )
    row("loadbay_comma", "loadbay, the comma file (for comparison)", 1.2)
    row("loadbay_semicolon", "loadbay, `;` file", 1.3)
    row("loadbay_decimal_comma", "loadbay, `;` file with decimal commas declared", 3)
    row("loadbay_parquet", "loadbay, Parquet (same rows)", 2, 150)
    xlsx = m["loadbay_xlsx"]
    ok = xlsx.seconds < pandas and xlsx.peak_rss_mb <= 150
    lines += [
        "",
        "| workbook, 100,000 shipments | seconds | peak MB | target | verdict |",
        "|---|---:|---:|---|---|",
        f"| pandas read_excel + to_sql | {pandas:.2f} | {m['pandas_excel'].peak_rss_mb:.0f} | | |",
        f"| loadbay --ingest (whole process) | {xlsx.seconds:.2f} | {xlsx.peak_rss_mb:.0f} | "
        f"faster, ≤ 150 MB | {'met' if ok else 'NOT met'} |",
        "",
        "Details: " + json.dumps({k: v.detail for k, v in m.items()}, default=str),
    ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
