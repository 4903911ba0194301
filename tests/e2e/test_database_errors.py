"""DATABASE_URL problems and a server that is away (issue 12, defect 8): one line each, never a
traceback or the password; configuration errors exit 2, a one-shot command against a server that
is down exits 1, and a watcher started before the server waits for it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.e2e.helpers import StoppablePostgres, Watchers, drop_atomically, ledger, meter_csv, wait_until
from tests.e2e.test_health import DB_DOWN, OK, free_port, healthz
from tests.pg import execute, with_database

USER, PASSWORD, WRONG = "lb_pw_user", "Right-Pw-7781", "Wrong-Pw-4410"
PERCENT_ENCODE = (
    "Percent-encode special characters in the user name and password of DATABASE_URL: @ as %40, "
    ": as %3A, / as %2F (e.g. postgresql://user:p%40ss@host:5432/db)"
)


@pytest.fixture(scope="module")
def password_login(stoppable_pg: StoppablePostgres) -> Iterator[str]:
    """A role that must give its password (the embedded server trusts everyone else); the DSN of
    the server without a user, to put one in."""
    execute(stoppable_pg.uri, f"CREATE ROLE {USER} LOGIN CREATEDB PASSWORD '{PASSWORD}'")
    hba = stoppable_pg.data_dir / "pg_hba.conf"
    hba.write_text(f"local all {USER} scram-sha-256\n" + hba.read_text())
    execute(stoppable_pg.uri, "SELECT pg_reload_conf()")
    yield stoppable_pg.uri


def socket_dir(stoppable_pg: StoppablePostgres) -> str:
    return stoppable_pg.uri.split("?host=", 1)[1]


def no_secret(proc_output: str, workdir: Path, secret: str) -> bool:
    log_file = workdir / "logs" / "loadbay.log"
    logged = log_file.read_text() if log_file.exists() else ""
    return secret not in proc_output and secret not in logged


def test_a_wrong_password_exits_2_with_one_line_naming_database_url(
    stoppable_pg: StoppablePostgres, password_login: str, workdir: Path
) -> None:
    dsn = f"postgresql://{USER}:{WRONG}@/postgres?host={socket_dir(stoppable_pg)}"

    proc = run_cli(dsn, workdir, "--status")

    assert proc.returncode == 2
    assert proc.stderr == (
        f"configuration error: DATABASE_URL: PostgreSQL at {socket_dir(stoppable_pg)} refused the password "
        f"of user '{USER}'. Check the user name and password in DATABASE_URL. {PERCENT_ENCODE}\n"
    )
    assert "Traceback" not in proc.stdout
    assert no_secret(proc.stdout + proc.stderr, workdir, WRONG)


def test_the_right_password_works(
    stoppable_pg: StoppablePostgres, password_login: str, workdir: Path
) -> None:
    # the wrong-password test above fails for the password, not for the way the login is set up
    dsn = f"postgresql://{USER}:{PASSWORD}@/postgres?host={socket_dir(stoppable_pg)}"
    name = f"pw_{time.time_ns()}"
    execute(dsn, f'CREATE DATABASE "{name}"')

    proc = run_cli(with_database(dsn, name), workdir, "--status")

    assert (proc.returncode, proc.stderr) == (0, "")
    assert no_secret(proc.stdout, workdir, PASSWORD)


def test_a_missing_database_exits_2_naming_it(outage_dsn: str, workdir: Path) -> None:
    dsn = with_database(outage_dsn, "no_such_db")
    server = dsn.split("?host=", 1)[1]

    proc = run_cli(dsn, workdir, "--ingest", "imports")

    assert proc.returncode == 2
    assert proc.stderr == (
        f"configuration error: DATABASE_URL: database 'no_such_db' does not exist on {server}. Create it "
        "(e.g. createdb no_such_db) or fix the database name. Fix DATABASE_URL in the environment or .env\n"
    )
    assert "Traceback" not in proc.stdout


def test_an_unencoded_at_in_the_password_exits_2_with_the_hint_to_percent_encode(workdir: Path) -> None:
    proc = run_cli("postgresql://loadbay:s3cr@t@db.example:5432/loadbay", workdir, "--status")

    assert proc.returncode == 2
    assert proc.stderr == (
        "configuration error: DATABASE_URL has more than one @ before the host: its user name or password "
        f"contains an @ that is not percent-encoded. {PERCENT_ENCODE}\n"
    )
    assert no_secret(proc.stdout + proc.stderr, workdir, "s3cr")


def test_an_unknown_host_exits_2(workdir: Path) -> None:
    proc = run_cli("postgresql://loadbay:pw@no-such-host.invalid:5432/loadbay", workdir, "--status")

    assert proc.returncode == 2
    assert proc.stderr.startswith(
        "configuration error: DATABASE_URL: the host name in no-such-host.invalid:5432 does not resolve ("
    )
    assert proc.stderr.endswith(f"). Check the host in DATABASE_URL. {PERCENT_ENCODE}\n")
    assert proc.stderr.count("\n") == 1


def test_a_one_shot_command_with_the_server_down_exits_1_with_one_line(
    stoppable_pg: StoppablePostgres, outage_dsn: str, workdir: Path
) -> None:
    stoppable_pg.stop()

    proc = run_cli(outage_dsn, workdir, "--status")

    assert proc.returncode == 1
    assert proc.stderr == (
        f"database unavailable: PostgreSQL at {socket_dir(stoppable_pg)} (DATABASE_URL) does not answer: "
        "No such file or directory. Check that the server is running and that the host and port in "
        "DATABASE_URL are right\n"
    )
    assert "Traceback" not in proc.stdout


def test_a_refused_tcp_connection_is_unavailable_too(workdir: Path) -> None:
    proc = run_cli("postgresql://loadbay:pw@127.0.0.1:9/loadbay", workdir, "--pipeline")

    assert proc.returncode == 1
    assert proc.stderr == (
        "database unavailable: PostgreSQL at 127.0.0.1:9 (DATABASE_URL) does not answer: Connect call failed "
        "('127.0.0.1', 9). Check that the server is running and that the host and port in DATABASE_URL are "
        "right\n"
    )


@pytest.mark.slow
def test_a_watcher_started_before_the_server_waits_then_loads(
    stoppable_pg: StoppablePostgres, outage_dsn: str, workdir: Path, watchers: Watchers
) -> None:
    stoppable_pg.stop()
    port = free_port()
    watcher = watchers.start(outage_dsn, workdir, ready=False, HEALTH_PORT=str(port))

    watcher.wait_for(r"does not answer: No such file or directory; waiting for it, next try in 1 s")
    watcher.wait_for(r"waiting for it, next try in 2 s")
    assert healthz(port) == (503, DB_DOWN)
    drop_atomically(workdir / "imports", "meter_readings_early.csv", meter_csv(20, meters=2))
    assert watcher.alive()

    stoppable_pg.start()
    watcher.wait_ready(timeout=90)
    wait_until(lambda: ledger(outage_dsn), 30, "the early drop loaded")
    assert ledger(outage_dsn) == [("meter_readings_early.csv", "loaded", 20, 0)]
    wait_until(lambda: healthz(port) == (200, OK), 15, "/healthz 200 once the server answers")

    assert watcher.stop() == 0
    assert "Traceback" not in watcher.output
    assert watcher.output.rstrip().endswith("stopped watching: 1 loaded, 0 duplicates, 0 failed")


def test_a_watcher_with_a_wrong_database_does_not_wait(
    outage_dsn: str, workdir: Path, watchers: Watchers
) -> None:
    watcher = watchers.start(with_database(outage_dsn, "no_such_db"), workdir, ready=False)

    assert watcher.wait(timeout=60) == 2
    assert "configuration error: DATABASE_URL: database 'no_such_db' does not exist" in watcher.output
    assert "waiting for it" not in watcher.output
