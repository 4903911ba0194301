"""`main.py` as a user runs it: --help, --status, and exit codes 0 / 1 / 2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli
from tests.integration.helpers import METER_HEADER, meter_rows
from tests.pg import fetch

NO_DATABASE = "postgresql://nobody@127.0.0.1:9/none"  # --help must not need one
FLAGS = [
    "-h",
    "--help",
    "--watch",
    "--pull",
    "--ingest",
    "--pipeline",
    "--dispatch",
    "--dry-run",
    "--analysis",
    "--status",
    "--demo",
]
LONG_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
SETTINGS_FIX = "Fix the variable in the environment or .env (see .env.example)."


def help_text(tmp_path: Path) -> str:
    proc = run_cli(NO_DATABASE, tmp_path, "--help", COLUMNS="200")
    assert (proc.returncode, proc.stderr) == (0, "")
    return proc.stdout


# --- --help ---------------------------------------------------------------------------------------


def help_options(out: str) -> dict[str, str]:
    """Each option of the help's "options:" section → its description, on one line."""
    section = out.split("\noptions:\n", 1)[1].split("\n\n", 1)[0]
    described: dict[str, str] = {}
    for entry in re.split(r"\n(?=  -)", section):
        invocation, _, text = re.split(r"( {2,}|\n)", entry.strip(), maxsplit=1)
        for flag in re.findall(r"(?<![\w-])-{1,2}[a-z][a-z0-9-]*", invocation):
            described[flag] = " ".join(text.split())
    return described


def test_help_exits_0_and_documents_every_flag(tmp_path: Path) -> None:
    out = help_text(tmp_path)

    assert out.startswith(
        "usage: main.py [-h] [--watch [DIR]] [--pull] [--ingest PATH [PATH ...]] [--pipeline] [--dispatch]"
    )
    described = help_options(out)
    assert sorted(described) == sorted(FLAGS)
    assert described["--help"] == "show this help message and exit"
    assert "IMPORTS_DIR" in described["--watch"] and "SIGTERM" in described["--watch"]
    assert "every pending file of a given folder" in described["--ingest"]
    assert "ERP over ODBC (EPMS_ODBC_DSN)" in described["--pull"] and "watch mode" in described["--pull"]
    assert "status" in described["--status"]
    assert "warehouse" in described["--pipeline"] and "incremental" in described["--pipeline"]
    assert "examples/drops/" in described["--demo"]
    prose = " ".join(out.split())
    assert "Exit codes: 0 all done, 1 some work failed, 2 bad usage or configuration." in prose
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing created, no database needed


def test_readme_mentions_every_flag_that_help_prints(tmp_path: Path) -> None:
    flags = sorted(set(LONG_FLAG.findall(help_text(tmp_path))))
    assert {"--help", "--watch", "--ingest", "--status", "--demo"} <= set(flags)  # the parse found them
    readme = (ROOT / "README.md").read_text(encoding="utf-8")

    missing = [f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", readme)]
    assert missing == [], f"README.md does not mention {missing}"


def test_unknown_flag_is_bad_usage(tmp_path: Path) -> None:
    proc = run_cli(NO_DATABASE, tmp_path, "--bogus")

    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == "main.py: error: unrecognized arguments: --bogus"


# --- --status -------------------------------------------------------------------------------------


def utc_received(dsn: str) -> dict[str, str]:
    rows = fetch(dsn, "SELECT name, received_at AT TIME ZONE 'UTC' AS at FROM ingest.files")
    return {r["name"]: r["at"].strftime("%Y-%m-%d %H:%M:%S") for r in rows}


def test_status_after_one_good_and_one_failed_file(dsn: str, workdir: Path) -> None:
    (workdir / "imports" / "meter_good.csv").write_text(METER_HEADER + meter_rows(3))
    (workdir / "imports" / "meter_empty.csv").write_bytes(b"")
    ingest = run_cli(dsn, workdir, "--ingest", "imports/meter_good.csv", "imports/meter_empty.csv")
    assert ingest.returncode == 1, ingest.stdout + ingest.stderr

    proc = run_cli(dsn, workdir, "--status")

    at = utc_received(dsn)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == (
        "id  received (UTC)       file             dataset         status  rows  rejected  note\n"
        "--  -------------------  ---------------  --------------  ------  ----  --------  ----\n"
        f"2   {at['meter_empty.csv']}  meter_empty.csv  -               failed     0         0  "
        "the file is empty (0 bytes). Drop it again once it has data\n"
        f"1   {at['meter_good.csv']}  meter_good.csv   meter_readings  loaded     3         0\n"
        "\n"
        "All files: 1 failed, 1 loaded\n"
    )


def test_status_lists_the_first_rejected_rows(dsn: str, workdir: Path) -> None:
    content = METER_HEADER + meter_rows(10) + "M1,not-a-time,1,\n"  # record 11, line 12
    (workdir / "imports" / "meter_some_bad.csv").write_text(content)
    assert run_cli(dsn, workdir, "--ingest", "imports").returncode == 0

    proc = run_cli(dsn, workdir, "--status")

    at = utc_received(dsn)["meter_some_bad.csv"]
    assert proc.returncode == 0
    assert proc.stdout == (
        "id  received (UTC)       file                dataset         status               rows  rejected"
        "  note\n"
        "--  -------------------  ------------------  --------------  -------------------  ----  --------"
        "  ----\n"
        f"1   {at}  meter_some_bad.csv  meter_readings  loaded_with_rejects    10         1\n"
        "\n"
        "All files: 1 loaded_with_rejects\n"
        "\n"
        "First rejected rows of #1 meter_some_bad.csv (see ingest.rejected_rows):\n"
        "  record 11, line 12, column reading_at: not a timestamp (ISO 8601, e.g. 2024-01-15T00:30:00Z)\n"
    )


def test_status_with_no_files(dsn: str, workdir: Path) -> None:
    proc = run_cli(dsn, workdir, "--status")

    assert (proc.returncode, proc.stdout) == (
        0,
        "No files yet. Drop a CSV into the imports folder, or run: python main.py --demo\n",
    )


# --- exit codes -----------------------------------------------------------------------------------


def test_ingest_of_good_files_exits_0(dsn: str, workdir: Path) -> None:
    (workdir / "imports" / "meter_good.csv").write_text(METER_HEADER + meter_rows(3))

    proc = run_cli(dsn, workdir, "--ingest", "imports/meter_good.csv")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [tuple(r) for r in fetch(dsn, "SELECT name, status FROM ingest.files")] == [
        ("meter_good.csv", "loaded")
    ]


def test_ingest_of_a_failing_file_exits_1(dsn: str, workdir: Path) -> None:
    (workdir / "imports" / "meter_good.csv").write_text(METER_HEADER + meter_rows(3))
    (workdir / "imports" / "meter_nots.csv").write_text("meter_id,register_kwh\nM1,2\n")

    proc = run_cli(dsn, workdir, "--ingest", "imports")

    assert proc.returncode == 1, proc.stdout + proc.stderr
    files = fetch(dsn, "SELECT name, status FROM ingest.files ORDER BY name")
    assert [tuple(r) for r in files] == [("meter_good.csv", "loaded"), ("meter_nots.csv", "failed")]
    assert (workdir / "imports" / "failed" / "meter_nots.csv").exists()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("INGEST_WORKERS", "abc", "Input should be a valid integer, unable to parse string as an integer"),
        ("INGEST_WORKERS", "0", "Input should be greater than or equal to 1"),
        ("MAX_REJECT_RATIO", "1.5", "Input should be less than or equal to 1"),
        (
            "SOURCE_TIMEZONE",
            "Mars/Olympus",
            "Value error, 'Mars/Olympus' is not an IANA time zone name (e.g. UTC, Europe/London)",
        ),
        (
            "STAGING_SCHEMA",
            "staging; DROP",
            "Value error, 'staging; DROP' is not a plain SQL identifier: use "
            "lower-case letters, digits and underscores, starting with a letter or underscore",
        ),
        ("LOG_FORMAT", "xml", "Input should be 'text' or 'json'"),
    ],
)
def test_a_bad_setting_exits_2_naming_the_variable_on_stderr(
    dsn: str, workdir: Path, variable: str, value: str, message: str
) -> None:
    (workdir / "imports" / "meter_good.csv").write_text(METER_HEADER + meter_rows(3))

    proc = run_cli(dsn, workdir, "--ingest", "imports", **{variable: value})  # type: ignore[arg-type]

    assert proc.returncode == 2
    assert proc.stderr == f"configuration error: {variable}: {message}\n{SETTINGS_FIX}\n"
    assert (workdir / "imports" / "meter_good.csv").exists()


def test_a_database_url_of_another_kind_exits_2(dsn: str, workdir: Path) -> None:
    proc = run_cli("mysql://root@localhost/loadbay", workdir, "--status")

    assert proc.returncode == 2
    assert (
        "configuration error: DATABASE_URL must start with postgresql:// (a driver suffix such as "
        "postgresql+asyncpg:// is accepted). Fix DATABASE_URL in the environment or .env, or leave it empty "
        "for the embedded server" in proc.stdout + proc.stderr
    )


def test_invalid_toml_in_datasets_file_exits_2(dsn: str, workdir: Path) -> None:
    toml = workdir / "datasets.toml"
    toml.write_text("[datasets.meter_readings\nencoding = 'latin-1'\n", encoding="utf-8")

    proc = run_cli(dsn, workdir, "--status")

    assert proc.returncode == 2
    assert (
        f"configuration error: {toml} is not valid TOML: Expected ']' at the end of a table declaration "
        "(at line 1, column 25). Fix the file or remove it" in proc.stdout + proc.stderr
    )
    assert "Traceback" not in proc.stdout + proc.stderr


def test_an_invalid_dataset_in_datasets_file_exits_2(dsn: str, workdir: Path) -> None:
    toml = workdir / "datasets.toml"
    toml.write_text("[datasets.meter_readings]\nencoding = 'cp037'\n", encoding="utf-8")  # EBCDIC

    proc = run_cli(dsn, workdir, "--status")

    out = proc.stdout + proc.stderr
    assert proc.returncode == 2
    assert f"configuration error: {toml} declares an invalid dataset: " in out
    assert "encoding 'cp037' is not ASCII-compatible (use utf-8, latin-1, cp1252…)" in out
    assert "See the README section 'Datasets' for the format" in out
    assert "Traceback" not in out


def test_a_column_that_is_not_a_table_in_datasets_file_exits_2(dsn: str, workdir: Path) -> None:
    toml = workdir / "datasets.toml"
    toml.write_text("[datasets.things]\npatterns = ['thing*']\n[datasets.things.columns]\na = 'text'\n")

    proc = run_cli(dsn, workdir, "--status")

    out = proc.stdout + proc.stderr
    assert (proc.returncode, "Traceback" in out) == (2, False), out
    assert f"configuration error: {toml} declares an invalid dataset: " in out


def test_an_unusable_folder_is_named_and_exits_2(dsn: str, workdir: Path) -> None:
    blocker = workdir / "not-a-folder"
    blocker.write_text("a file where LOGS_DIR should be")

    result = run_cli(dsn, workdir, "--status", LOGS_DIR=str(blocker))

    assert result.returncode == 2
    assert result.stderr.startswith(
        f"cannot use {blocker}: File exists. The folders IMPORTS_DIR, EXPORTS_DIR"
    )
    assert "Traceback" not in result.stderr
