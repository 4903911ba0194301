from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.migrate import migrate
from app.settings import Settings
from models.datasets import DatasetRegistry
from tests.erp import READER, Erp, ensure_reader, require_odbc
from tests.pg import Server, start_server, with_database

ROOT = Path(__file__).resolve().parent.parent
CASES = Path(__file__).resolve().parent / "cases"
TEMPLATE = f"lb_template_{os.getpid()}"


@pytest.fixture(scope="session")
def pg() -> Iterator[Server]:
    # Not under pytest's tmp root: pytest keeps that 0700, and the server runs as another user.
    base = Path(tempfile.mkdtemp(prefix="loadbay-test-pg-"))
    dsn, handle = start_server(base / "data")
    server = Server(dsn)
    server.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}"')
    server.execute(f'CREATE DATABASE "{TEMPLATE}"')
    migrate(with_database(dsn, TEMPLATE), Settings(_env_file=None), DatasetRegistry.from_toml({}))
    yield server
    server.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
    if handle is not None:
        handle.cleanup()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def dsn(pg: Server) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    with pg.database(template=TEMPLATE) as url:
        yield url


@pytest.fixture(scope="session")
def erp_reader(pg: Server) -> Iterator[str]:
    """The ERP's read-only login, made once; dropped when every ERP database is gone."""
    require_odbc()
    ensure_reader(pg.admin_dsn)
    yield READER
    pg.execute(f'DROP ROLE IF EXISTS "{READER}"')


@pytest.fixture
def erp(pg: Server, erp_reader: str) -> Iterator[Erp]:
    """A fresh ERP-like database (dbo.Shipment, dbo.Package) on the test server."""
    with pg.database() as url:
        yield Erp(url)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    for name in ("imports", "exports", "logs"):
        (tmp_path / name).mkdir()
    return tmp_path


@pytest.fixture
def settings(dsn: str, workdir: Path) -> Settings:
    return make_settings(dsn, workdir)


def make_settings(dsn: str, workdir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": dsn,
        "imports_dir": workdir / "imports",
        "exports_dir": workdir / "exports",
        "logs_dir": workdir / "logs",
        "datasets_file": workdir / "datasets.toml",
        "watch_settle_seconds": 0.5,
        "health_port": 0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def cli_env(dsn: str, workdir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOADBAY_", "DATABASE_URL"))}
    env.update(
        DATABASE_URL=dsn,
        IMPORTS_DIR=str(workdir / "imports"),
        EXPORTS_DIR=str(workdir / "exports"),
        LOGS_DIR=str(workdir / "logs"),
        DATASETS_FILE=str(workdir / "datasets.toml"),
        WATCH_SETTLE_SECONDS="0.5",
        HEALTH_PORT="0",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run_cli(
    dsn: str, workdir: Path, *args: str, timeout: float = 120, **extra: str
) -> subprocess.CompletedProcess[str]:
    """`python main.py ARGS` in `workdir`, as a user runs it."""
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args],
        cwd=workdir,
        env=cli_env(dsn, workdir, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_cli(dsn: str, workdir: Path, *args: str, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), *args],
        cwd=workdir,
        env=cli_env(dsn, workdir, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
