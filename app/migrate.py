"""Apply Alembic migrations and synchronise staging tables; safe when many processes start.

Every command starts by making sure the schema is current, so that check is cheap: one query
compares the stored Alembic revision with the newest migration file, and each staging table's
sync mark (app.schema.staging_mark) with the declarations in hand. Only when something differs
are Alembic and SQLAlchemy imported (about 0.25 s) and the migrations run under their lock.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import asyncpg

from app.db import Database, database_problem
from app.schema import staging_mark, table_name
from app.settings import Settings
from models.datasets import DatasetRegistry

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSIONS_DIR = MIGRATIONS_DIR / "versions"
# Migration files are named after their revision: 0007_file_attempts.py holds revision "0007"
# (tests/unit/test_migrate.py checks this against Alembic's own view of the head).
_REVISION_FILE = re.compile(r"^(\d{4})_\w+\.py$")

_CURRENT_STATE = """
SELECT (SELECT version_num FROM ingest.alembic_version) AS revision,
       array_agg(coalesce(obj_description(to_regclass(t), 'pg_class'), '') ORDER BY n) AS marks
FROM unnest($1::text[]) WITH ORDINALITY AS u (t, n)
"""


def head_revision() -> str:
    """The newest migration's revision, known without importing Alembic."""
    revisions = [m.group(1) for p in VERSIONS_DIR.iterdir() if (m := _REVISION_FILE.match(p.name))]
    return max(revisions)


async def schema_is_current(conn: asyncpg.Connection, settings: Settings, registry: DatasetRegistry) -> bool:
    """One query: the stored revision is the newest migration and every staging table carries
    its declaration's mark."""
    tables = [table_name(settings.staging_schema, d.table) for d in registry.datasets]
    try:
        row = await conn.fetchrow(_CURRENT_STATE, tables)
    except asyncpg.UndefinedTableError:  # a new database: no ingest.alembic_version yet
        return False
    assert row is not None  # an aggregate without GROUP BY always returns one row
    wanted = [staging_mark(settings.staging_schema, d) for d in registry.datasets]
    return bool(row["revision"] == head_revision() and list(row["marks"] or []) == wanted)


async def ensure_schema(db: Database, settings: Settings, registry: DatasetRegistry) -> None:
    """Migrate only if the schema is not current. The check takes no lock: a schema that is
    current stays so (nothing is ever dropped), and anything else goes through `migrate`, which
    serialises concurrent starts."""
    async with db.connection() as conn:
        if await schema_is_current(conn, settings, registry):
            log.debug("database schema is current")
            return
    await asyncio.to_thread(migrate, db.dsn, settings, registry)


def migrate(dsn: str, settings: Settings, registry: DatasetRegistry) -> None:
    """Bring the database to the newest schema. Blocking: call it outside the event loop.

    This is the first work on a new database, so a wrong DATABASE_URL or a server that is away
    surfaces here: as ConfigError or DatabaseUnavailable, never as a driver's traceback.
    """
    # Imported here: Alembic and SQLAlchemy cost more than the rest of a start-up together.
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes.update(dsn=dsn, settings=settings, registry=registry)
    try:
        command.upgrade(config, "head")
    except Exception as exc:
        problem = database_problem(exc, dsn)
        if problem is None:
            raise
        raise problem from exc
    log.debug("database schema migrated")
