"""Alembic environment: applies migrations under a PostgreSQL advisory lock.

Several loadbay processes may start at once; the lock makes the first one migrate while the
others wait, then find nothing to do. The caller passes `dsn`, `settings` and `registry` in
`config.attributes` (see app/migrate.py).
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from app.schema import MIGRATION_LOCK_KEY, sqlalchemy_url, sync_staging_tables

config = context.config


def _run(connection: Connection) -> None:
    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    connection.execute(text("CREATE SCHEMA IF NOT EXISTS ingest"))
    connection.commit()
    try:
        context.configure(
            connection=connection, version_table_schema="ingest", transaction_per_migration=True
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
        sync_staging_tables(connection, config.attributes["settings"], config.attributes["registry"])
        connection.commit()
    finally:
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
        connection.commit()


async def _main() -> None:
    engine = create_async_engine(sqlalchemy_url(config.attributes["dsn"]), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


asyncio.run(_main())
