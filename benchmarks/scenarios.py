"""One timed run of each way to load the meter CSV, each checked against what it should have loaded.

Every run gets a fresh database (a copy of a template migrated by loadbay itself) and starts after a
CHECKPOINT, so that no run pays for the previous run's writes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.datagen import with_lineage
from benchmarks.pg import BenchServer, execute, fetch
from benchmarks.procs import ProcessRun, load_average, run_timed
from benchmarks.source import compiled

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
IN_PROCESS_DRIVER = Path(__file__).resolve().parent / "loadbay_inprocess.py"
DATA_COLUMNS = "meter_id,reading_at,register_kwh,power_w"
BASELINE_TABLE = "public.meter_readings_copy"
# e.g. "loaded meter_readings_1000000.csv (#1) into staging.meter_readings: 1000000 rows, 0 rejected,
# 1.36 s (fast path)"
_LOADED_LINE = re.compile(r"into \S+: (\d+) rows, (\d+) rejected, ([\d.]+) s \((\w+) path\)")
_LOADBAY_SETTINGS = (
    "DATABASE_URL",
    "EMBEDDED_DB_DIR",
    "IMPORTS_DIR",
    "EXPORTS_DIR",
    "LOGS_DIR",
    "DATASETS_FILE",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "WATCH_POLLING",
    "WATCH_SETTLE_SECONDS",
    "WATCH_RESCAN_SECONDS",
    "INGEST_WORKERS",
    "MAX_REJECT_RATIO",
    "SOURCE_TIMEZONE",
    "STAGING_SCHEMA",
    "PIPELINE_ON_INGEST",
)


class CheckFailed(RuntimeError):
    """A scenario loaded something other than what it should have: its timing is meaningless."""


@dataclass
class Run:
    """One timed run of one scenario."""

    scenario: str
    seconds: float
    peak_rss_mb: float
    load_avg_before: tuple[float, float, float]
    detail: dict[str, Any] = field(default_factory=dict)


def loadbay_env(dsn: str, run_dir: Path, code_dir: Path, **extra: str) -> dict[str, str]:
    """The benchmark's settings, whatever the caller's environment or a stray .env says."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in _LOADBAY_SETTINGS}
    env.update(
        PYTHONPATH=str(code_dir.resolve()),  # the in-process driver imports loadbay from there
        DATABASE_URL=dsn,
        IMPORTS_DIR=str(run_dir / "imports"),
        EXPORTS_DIR=str(run_dir / "exports"),
        LOGS_DIR=str(run_dir / "logs"),
        DATASETS_FILE=str(run_dir / "datasets.toml"),  # absent: the built-in datasets only
        LOG_LEVEL="INFO",
        LOG_FORMAT="text",
        SOURCE_TIMEZONE="UTC",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    (path / "imports").mkdir(parents=True)
    return path


def _checked(run: ProcessRun, what: str) -> ProcessRun:
    if run.exit_code != 0:
        raise CheckFailed(f"{what} exited with {run.exit_code}:\n{run.output[-3000:]}")
    return run


class Scenarios:
    """The benchmark's scenarios on one server; `template` is a database loadbay has migrated."""

    def __init__(self, server: BenchServer, work: Path, code_dir: Path = ROOT) -> None:
        self.server = server
        self.work = work
        # the loadbay source tree that runs (the working tree or a snapshot), compiled as in the image
        self.code_dir = compiled(code_dir)
        self.template = ""
        self.reference: dict[int, dict[str, Any]] = {}  # rows → what psql \copy loaded

    # -- set-up ------------------------------------------------------------------------------

    def migrate_template(self) -> ProcessRun:
        """Let loadbay create its schema (as it does at every start) in the template database."""
        name, dsn = self.server.create_database("lb_template")
        run = self._ingest_nothing(dsn, "template", "loadbay migration")
        self.template = name
        return run

    def _ingest_nothing(self, dsn: str, run_name: str, what: str) -> ProcessRun:
        """`main.py --ingest` of an empty folder: start-up, migrations, exit."""
        run_dir = _fresh_dir(self.work / "runs" / run_name)
        return _checked(
            run_timed(
                [PYTHON, "main.py", "--ingest", run_dir / "imports"],
                env=loadbay_env(dsn, run_dir, self.code_dir),
                cwd=self.code_dir,
                log_path=run_dir / "output.log",
            ),
            what,
        )

    def _database(self, prefix: str) -> tuple[str, str]:
        name, dsn = self.server.create_database(prefix, template=self.template)
        self.server.checkpoint()
        return name, dsn

    # -- baselines ---------------------------------------------------------------------------

    def psql_copy(self, csv_path: Path, rows: int, *, into_staging: bool = False) -> Run:
        """`psql \\copy` into a table like the staging table (no defaults, no CHECK, no index),
        or, with `into_staging`, the file with its lineage columns into the staging table itself,
        with its CHECKs and BRIN indexes."""
        name, dsn = self._database("bench_psql")
        try:
            env = dict(os.environ)
            columns, source = DATA_COLUMNS, csv_path
            if into_staging:
                # The lines loadbay's fast path sends: each record behind its file id and number.
                table, columns = "staging.meter_readings", "_file_id,_record_no," + DATA_COLUMNS
                source = with_lineage(csv_path, csv_path.with_name(csv_path.stem + "_lineage.csv"))
            else:
                table = BASELINE_TABLE
                # LIKE copies the column types and NOT NULLs but no defaults. COPY names only the
                # file's four columns, so the lineage columns must accept NULL here.
                execute(
                    dsn,
                    f"CREATE TABLE {table} (LIKE staging.meter_readings)",
                    f"ALTER TABLE {table} ALTER COLUMN _file_id DROP NOT NULL, "
                    "ALTER COLUMN _record_no DROP NOT NULL",
                )
            self.server.checkpoint()
            command = f"\\copy {table} ({columns}) FROM '{source}' WITH (FORMAT csv, HEADER true)"
            before = load_average()
            run = _checked(
                run_timed(
                    [self.server.psql, dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", command],
                    env=env,
                    log_path=self.work / "runs" / "psql.log",
                ),
                "psql \\copy",
            )
            summary = _summary(dsn, table)
            if summary["rows"] != rows:
                raise CheckFailed(f"psql \\copy loaded {summary['rows']} rows, expected {rows}")
            if not into_staging:
                self.reference.setdefault(rows, summary)
            scenario = "psql_copy_staging" if into_staging else "psql_copy"
            return Run(scenario, run.seconds, run.peak_rss_mb, before, {"rows": rows})
        finally:
            self.server.drop_database(name)

    def pandas_to_sql(self, csv_path: Path, rows: int, driver: str) -> Run:
        name, dsn = self._database("bench_pandas")
        try:
            execute(
                dsn,
                f"CREATE TABLE {BASELINE_TABLE} (LIKE staging.meter_readings)",
                f"ALTER TABLE {BASELINE_TABLE} ALTER COLUMN _file_id DROP NOT NULL, "
                "ALTER COLUMN _record_no DROP NOT NULL",
            )
            self.server.checkpoint()
            before = load_average()
            run = _checked(
                run_timed(
                    [PYTHON, "-m", "benchmarks.pandas_load", dsn, BASELINE_TABLE, csv_path, driver],
                    cwd=ROOT,
                    log_path=self.work / "runs" / "pandas.log",
                ),
                "pandas",
            )
            phases = json.loads(run.output.strip().splitlines()[-1])
            summary = _summary(dsn, BASELINE_TABLE)
            self._same_as_reference(summary, rows, "pandas")
            return Run("pandas", run.seconds, run.peak_rss_mb, before, phases)
        finally:
            self.server.drop_database(name)

    # -- loadbay -----------------------------------------------------------------------------

    def loadbay_startup(self) -> Run:
        """`main.py --ingest` of an empty folder: interpreter, imports, migration check, exit."""
        name, dsn = self._database("bench_lb")
        try:
            before = load_average()
            run = self._ingest_nothing(dsn, "startup", "loadbay start-up")
            return Run("loadbay_startup", run.seconds, run.peak_rss_mb, before)
        finally:
            self.server.drop_database(name)

    def loadbay_ingest(
        self,
        csv_path: Path,
        rows: int,
        bad_rows: int,
        scenario: str,
        *,
        warm: bool = False,
        datasets_toml: str | None = None,
    ) -> Run:
        """Cold: `main.py --ingest FILE`, timed from process start to exit (start-up, hash, ledger,
        typed rows, commit, move, exit). Warm: `benchmarks/loadbay_inprocess.py FILE`, the same
        code path timed inside a process that is already up with a connected pool, as the watcher
        runs it."""
        name, dsn = self._database("bench_lb")
        run_dir = _fresh_dir(self.work / "runs" / scenario)
        if datasets_toml is not None:  # e.g. the decimal comma a dataset declares
            (run_dir / "datasets.toml").write_text(datasets_toml, encoding="utf-8")
        drop = run_dir / "imports" / csv_path.name
        os.link(csv_path, drop)  # the loader moves the file; the generated one stays
        command: list[str | Path] = (
            [PYTHON, IN_PROCESS_DRIVER, drop] if warm else [PYTHON, "main.py", "--ingest", drop]
        )
        try:
            before = load_average()
            run = _checked(
                run_timed(
                    command,
                    env=loadbay_env(dsn, run_dir, self.code_dir),
                    cwd=self.code_dir,
                    log_path=run_dir / "output.log",
                ),
                f"loadbay {scenario}",
            )
            detail = self._check_loadbay(dsn, drop, rows, bad_rows, run.output)
            seconds = run.seconds
            if warm:
                detail["process_s"] = run.seconds
                seconds = json.loads(run.output.strip().splitlines()[-1])["ingest_s"]
            return Run(scenario, seconds, run.peak_rss_mb, before, detail)
        finally:
            self.server.drop_database(name)
            shutil.rmtree(run_dir, ignore_errors=True)

    def _check_loadbay(self, dsn: str, drop: Path, rows: int, bad_rows: int, output: str) -> dict[str, Any]:
        ledger = fetch(
            dsn,
            "SELECT id, status, rows_loaded, rows_rejected, moved_to FROM ingest.files WHERE name = $1",
            drop.name,
        )
        if len(ledger) != 1:
            raise CheckFailed(f"ledger has {len(ledger)} rows for {drop.name}")
        entry = ledger[0]
        expected_status = "loaded_with_rejects" if bad_rows else "loaded"
        good = rows - bad_rows
        if (entry["status"], entry["rows_loaded"], entry["rows_rejected"]) != (
            expected_status,
            good,
            bad_rows,
        ):
            raise CheckFailed(
                f"ledger says {dict(entry)}; expected {expected_status}, {good} rows, {bad_rows} rejects"
            )
        if entry["moved_to"] is None or drop.exists() or not Path(entry["moved_to"]).exists():
            raise CheckFailed(f"{drop.name} was not moved to processed/ ({entry['moved_to']})")
        summary = _summary(dsn, "staging.meter_readings")
        if bad_rows:
            if summary["rows"] != good:
                raise CheckFailed(f"staging has {summary['rows']} rows, expected {good}")
            _check_rejects(dsn, entry["id"], bad_rows)
        else:
            self._same_as_reference(summary, rows, "loadbay")
            lineage = fetch(
                dsn,
                "SELECT min(_record_no), max(_record_no), min(_file_id), max(_file_id) "
                "FROM staging.meter_readings",
            )[0]
            if tuple(lineage) != (1, rows, entry["id"], entry["id"]):
                raise CheckFailed(f"lineage columns look wrong: {tuple(lineage)}")
        detail: dict[str, Any] = {"status": entry["status"], "rows_loaded": good, "rows_rejected": bad_rows}
        if match := _LOADED_LINE.search(output):
            detail["load_phase_s"] = float(match.group(3))
            detail["path"] = match.group(4)
        return detail

    def _same_as_reference(self, summary: dict[str, Any], rows: int, what: str) -> None:
        reference = self.reference.get(rows)
        if reference is None:
            if summary["rows"] != rows:
                raise CheckFailed(f"{what} loaded {summary['rows']} rows, expected {rows}")
            return
        if summary != reference:
            raise CheckFailed(f"{what} loaded {summary}, psql \\copy loaded {reference}")


def _summary(dsn: str, table: str) -> dict[str, Any]:
    """Enough of the typed content to tell that two loads put the same values in."""
    row = fetch(
        dsn,
        f"SELECT count(*) AS rows, count(DISTINCT meter_id) AS meters, sum(register_kwh) AS register_sum, "
        f"sum(power_w) AS power_sum, min(reading_at) AS first, max(reading_at) AS last FROM {table}",
    )[0]
    return dict(row)


def _check_rejects(dsn: str, file_id: int, bad_rows: int) -> None:
    """Every planted bad row (record numbers ≡ 50 mod 100) is recorded, with its physical line."""
    counts = fetch(
        dsn,
        "SELECT count(*) AS all_rejects, "
        "count(*) FILTER (WHERE record_no % 100 = 50 AND line_no = record_no + 1) AS where_planted "
        "FROM ingest.rejected_rows WHERE file_id = $1",
        file_id,
    )[0]
    if (counts["all_rejects"], counts["where_planted"]) != (bad_rows, bad_rows):
        raise CheckFailed(f"rejected_rows: {dict(counts)}, expected {bad_rows} at the planted records")
