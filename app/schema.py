"""Schema plumbing shared by the migrations: identifiers, URLs and the staging tables.

Alembic owns `ingest` and the warehouse. Staging tables follow the dataset declarations (built-in
and `datasets.toml`), so they are synchronised at start, under the same lock as the migrations:
missing tables and columns are added, the row rules (required values, "at least one of") are kept
as constraints. Nothing is ever dropped or narrowed.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

from app.settings import Settings
from models.datasets import SQL_TYPES, DatasetRegistry, DatasetSpec

if TYPE_CHECKING:
    from sqlalchemy import Connection

log = logging.getLogger(__name__)

MIGRATION_LOCK_KEY = 0x6C6F616462617901  # "loadbay" + 1: one lock for every schema change
_RULE_PREFIX = "lb_rule_"


def quote_ident(name: str) -> str:
    """A configured identifier, validated, in double quotes."""
    return '"' + name.replace('"', '""') + '"'


def table_name(schema: str, table: str) -> str:
    """`"schema"."table"`, both validated and quoted."""
    return f"{quote_ident(schema)}.{quote_ident(table)}"


def sqlalchemy_url(dsn: str) -> str:
    """The DSN in the form SQLAlchemy (Alembic) takes, with its asyncpg driver."""
    return "postgresql+asyncpg://" + dsn.split("://", 1)[1]


def record_sequence(schema: str, dataset: DatasetSpec) -> str:
    """The sequence that numbered a staging table's records before the CSV fast path wrote the
    numbers itself; the sync drops it where it is left."""
    return table_name(schema, f"{dataset.table}__record_no")


def row_rules(dataset: DatasetSpec) -> dict[str, str]:
    """CHECK constraints that encode the dataset's row rules, by constraint name."""
    rules: dict[str, str] = {}
    for column in dataset.columns:
        if column.required and column.type == "text":
            name = quote_ident(column.column)
            # btrim(x) <> '' alone, but btrim copies every value: a first character above the
            # space settles almost every row without it (a tenth of COPY's time, measured).
            rules[f"{_RULE_PREFIX}{column.column}_present"] = f"ascii({name}) > 32 OR btrim({name}) <> ''"
    for group in dataset.require_any:
        name = f"{_RULE_PREFIX}any_{'_'.join(group)}"
        rules[name] = " OR ".join(f"{quote_ident(c)} IS NOT NULL" for c in group)
    # A rule's name carries a digest of its expression, so that the sync replaces a changed one.
    return {f"{name[:54]}_{_digest(check)}": check for name, check in rules.items()}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def staging_ddl(schema: str, dataset: DatasetSpec) -> list[str]:
    """CREATE TABLE for one dataset's staging table, from its declaration."""
    table = table_name(schema, dataset.table)
    data_columns = ", ".join(f"{quote_ident(c.column)} {SQL_TYPES[c.type]}" for c in dataset.columns)
    statements = [
        # Every load writes `_file_id` and `_record_no` itself. (They used to be the table's
        # defaults, evaluated for every row: about 0.3 s of server time a million rows.)
        f"""CREATE TABLE IF NOT EXISTS {table} (
            _file_id bigint NOT NULL,
            _record_no bigint NOT NULL,
            {data_columns},
            _extra jsonb
        )""",
        f"ALTER TABLE {table} ALTER COLUMN _file_id DROP DEFAULT, ALTER COLUMN _record_no DROP DEFAULT",
        f"DROP SEQUENCE IF EXISTS {record_sequence(schema, dataset)}",
        f"CREATE INDEX IF NOT EXISTS {quote_ident(dataset.table + '__file')} "
        f"ON {table} USING brin (_file_id)",
    ]
    for column in dataset.columns:
        statements.append(
            f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS "
            f"{quote_ident(column.column)} {SQL_TYPES[column.type]}"
        )
        nullability = "SET NOT NULL" if column.required else "DROP NOT NULL"
        statements.append(f"ALTER TABLE {table} ALTER COLUMN {quote_ident(column.column)} {nullability}")
    if any(c.column == "reading_at" for c in dataset.columns):
        # The energy step reads only readings from its window on: with this, a new day skips
        # the history instead of scanning the whole table (BRIN: next to nothing for COPY). Small
        # ranges, because a file sorted by meter puts every meter's newest readings in its own pages.
        statements.append(
            f"CREATE INDEX IF NOT EXISTS {quote_ident(dataset.table + '__reading_at')} "
            f"ON {table} USING brin (reading_at) WITH (pages_per_range = 4)"
        )
        # The energy step summarises the new ranges itself before it reads (services/energy):
        # autosummarize asked autovacuum to, once every 4 pages COPY filled.
        statements.append(
            f"ALTER INDEX {quote_ident(schema)}.{quote_ident(dataset.table + '__reading_at')} "
            "RESET (autosummarize)"
        )
    return statements


def staging_mark(schema: str, dataset: DatasetSpec) -> str:
    """What a staging table's comment says once it is in sync with `dataset`: a digest of its DDL
    and row rules. Start-up compares the marks instead of running the sync (app/migrate.py)."""
    digest = hashlib.sha256(repr((staging_ddl(schema, dataset), sorted(row_rules(dataset).items()))).encode())
    return f"loadbay staging table, in sync with declaration {digest.hexdigest()[:16]}"


def sync_staging_tables(conn: Connection, settings: Settings, registry: DatasetRegistry) -> None:
    """Create missing staging tables and add columns a dataset declares since; never drops."""
    # SQLAlchemy is imported only by the migrations, which start-up skips when nothing changed.
    from sqlalchemy import text

    schema = settings.staging_schema
    conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}"))
    for dataset in registry.datasets:
        for statement in staging_ddl(schema, dataset):
            conn.execute(text(statement))
        wanted = row_rules(dataset)
        existing = set(
            conn.execute(
                text(
                    "SELECT conname FROM pg_constraint WHERE conrelid = CAST(:t AS regclass) "
                    "AND conname LIKE :prefix"
                ),
                {"t": table_name(schema, dataset.table), "prefix": _RULE_PREFIX + "%"},
            ).scalars()
        )
        table = table_name(schema, dataset.table)
        for name in existing - set(wanted):
            conn.execute(text(f"ALTER TABLE {table} DROP CONSTRAINT {quote_ident(name)}"))
        for name in set(wanted) - existing:
            conn.execute(
                text(f"ALTER TABLE {table} ADD CONSTRAINT {quote_ident(name)} CHECK ({wanted[name]})")
            )
        # COMMENT takes no bound parameters; the mark is made of letters, digits and spaces only.
        conn.execute(text(f"COMMENT ON TABLE {table} IS '{staging_mark(schema, dataset)}'"))
    log.debug("staging tables in sync for %d datasets", len(registry.datasets))
