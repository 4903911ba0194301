"""Start-up: a current schema is recognised with one query (no Alembic, no lock), anything else
is migrated as before, and commands import only what their flags need."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import asyncpg

from app.datasets import load_registry
from app.db import Database
from app.migrate import ensure_schema, head_revision
from app.schema import MIGRATION_LOCK_KEY, staging_mark
from app.settings import Settings
from models.datasets import DatasetRegistry
from tests.conftest import ROOT, cli_env, make_settings, run_cli
from tests.pg import Server, execute, fetch, fetchval

HEAVY = (
    "alembic",
    "sqlalchemy",
    "pandas",
    "numpy",
    "matplotlib",
    "watchdog",
    "pyodbc",
    "prometheus_client",
    "requests",
    "apprise",
)

# Runs main.main as `python main.py ARGS` would, then lists the heavy modules it imported.
PROBE = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
import main
try:
    code = main.main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(code, sorted(m for m in {HEAVY!r} if m in sys.modules))
"""


def imported_by(dsn: str, workdir: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=workdir,
        env=cli_env(dsn, workdir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.stdout.splitlines()[-1]


def ensure(settings: Settings, registry: DatasetRegistry) -> None:
    async def go() -> None:
        db = Database(settings.database_url.get_secret_value())
        try:
            # A guard against hanging on the lock, not a speed limit.
            await asyncio.wait_for(ensure_schema(db, settings, registry), timeout=60)
        finally:
            await db.close()

    asyncio.run(go())


def test_status_on_a_migrated_database_imports_no_heavy_module(dsn: str, workdir: Path) -> None:
    assert imported_by(dsn, workdir, "--status") == "0 []"


def test_help_imports_nothing_heavy_and_never_touches_the_database(workdir: Path) -> None:
    unreachable = "postgresql://nobody@no-such-host.invalid/nothing"
    assert imported_by(unreachable, workdir, "--help") == "0 []"
    done = run_cli(unreachable, workdir, "--help")
    assert done.returncode == 0
    assert done.stdout.startswith("usage: main.py")
    assert done.stderr == ""


def test_a_current_schema_is_used_without_taking_the_migration_lock(settings: Settings, dsn: str) -> None:
    async def go() -> None:
        holder = await asyncpg.connect(dsn)
        try:
            await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
            # `migrate` would wait for this lock; the check alone must not.
            await asyncio.to_thread(ensure, settings, DatasetRegistry.from_toml({}))
        finally:
            await holder.close()

    asyncio.run(go())


def test_a_dropped_staging_table_is_created_again(settings: Settings, dsn: str) -> None:
    execute(dsn, "DROP TABLE staging.meter_readings")
    ensure(settings, DatasetRegistry.from_toml({}))
    assert fetchval(dsn, "SELECT count(*) FROM staging.meter_readings") == 0
    assert fetchval(dsn, "SELECT obj_description('staging.meter_readings'::regclass)") == staging_mark(
        "staging", DatasetRegistry.from_toml({}).get("meter_readings")
    )


def test_a_changed_declaration_is_synchronised_at_start(settings: Settings, dsn: str) -> None:
    settings.datasets_file.write_text(
        '[datasets.deliveries]\npatterns = ["deliver*"]\nkey = ["delivery_id"]\n\n'
        '[datasets.deliveries.columns.delivery_id]\nsource = "Delivery No"\nrequired = true\n',
        encoding="utf-8",
    )
    ensure(settings, load_registry(settings))
    rows = fetch(
        dsn,
        "SELECT column_name, is_nullable FROM information_schema.columns "
        "WHERE table_schema = 'staging' AND table_name = 'deliveries' AND column_name = 'delivery_id'",
    )
    assert [tuple(r) for r in rows] == [("delivery_id", "NO")]


def test_a_new_database_is_migrated_to_the_head(pg: Server, workdir: Path) -> None:
    with pg.database() as dsn:
        ensure(make_settings(dsn, workdir), DatasetRegistry.from_toml({}))
        assert fetchval(dsn, "SELECT version_num FROM ingest.alembic_version") == head_revision()
        assert fetchval(dsn, "SELECT count(*) FROM staging.shipments") == 0
