"""Alembic migrations: every table is created by them, and they run on databases migrated by an
older loadbay, including ones where `--analysis` created `analysis.parameters` itself."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from app.migrate import MIGRATIONS_DIR, migrate
from app.settings import Settings
from models.datasets import DatasetRegistry
from tests.pg import Server, execute, fetch, fetchval

PARAMETERS_COLUMNS = [("id", "boolean"), ("ship_via", "ARRAY"), ("settlement_tz", "text")]


def columns(dsn: str, schema: str, table: str) -> list[tuple[str, str]]:
    rows = fetch(
        dsn,
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
        schema,
        table,
    )
    return [(r["column_name"], r["data_type"]) for r in rows]


def upgrade_to(dsn: str, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes.update(
        dsn=dsn, settings=Settings(_env_file=None), registry=DatasetRegistry.from_toml({})
    )
    command.upgrade(config, revision)


def test_analysis_parameters_comes_from_a_migration(dsn: str) -> None:
    # the test database is migrated and nothing has run --analysis on it
    assert fetchval(dsn, "SELECT version_num FROM ingest.alembic_version") == "0009"
    assert columns(dsn, "analysis", "parameters") == PARAMETERS_COLUMNS
    assert fetchval(dsn, "SELECT count(*) FROM analysis.parameters") == 0


def test_a_database_where_analysis_created_the_table_migrates(pg: Server) -> None:
    with pg.database() as dsn:
        upgrade_to(dsn, "0005")
        # what --analysis did before 0006, with a row in it
        execute(
            dsn,
            "CREATE SCHEMA IF NOT EXISTS analysis; CREATE TABLE IF NOT EXISTS analysis.parameters ("
            "id boolean PRIMARY KEY DEFAULT true CHECK (id), ship_via text[] NOT NULL, "
            "settlement_tz text NOT NULL); INSERT INTO analysis.parameters VALUES (true, '{10005}', 'UTC')",
        )

        migrate(dsn, Settings(_env_file=None), DatasetRegistry.from_toml({}))
        migrate(dsn, Settings(_env_file=None), DatasetRegistry.from_toml({}))  # and again: nothing to do

        assert fetchval(dsn, "SELECT version_num FROM ingest.alembic_version") == "0009"
        assert columns(dsn, "analysis", "parameters") == PARAMETERS_COLUMNS
        rows = fetch(dsn, "SELECT ship_via, settlement_tz FROM analysis.parameters")
        assert [tuple(r) for r in rows] == [(["10005"], "UTC")]


def test_a_staging_table_of_the_sequence_era_is_brought_up_to_date(dsn: str) -> None:
    """Tables made while `_file_id` and `_record_no` came from defaults (a session setting, a
    sequence), with rules by their old names and autosummarize on: the sync drops the defaults and
    the sequence, renames the rules by their expression and resets autosummarize, keeping the rows."""
    for statement in (
        "CREATE SEQUENCE staging.meter_readings__record_no",
        "ALTER TABLE staging.meter_readings ALTER COLUMN _record_no "
        "SET DEFAULT nextval('staging.meter_readings__record_no')",
        "ALTER TABLE staging.meter_readings ALTER COLUMN _file_id "
        "SET DEFAULT current_setting('loadbay.file_id')::bigint",
        "INSERT INTO staging.meter_readings (_file_id, meter_id, reading_at, power_w) "
        "VALUES (1, 'M1', '2024-01-15T00:00Z', 5)",
        "ALTER TABLE staging.meter_readings "
        "ADD CONSTRAINT lb_rule_meter_id_present CHECK (btrim(meter_id) <> '')",
        "ALTER INDEX staging.meter_readings__reading_at SET (autosummarize = on)",
        "COMMENT ON TABLE staging.meter_readings IS 'an older declaration'",
    ):
        execute(dsn, statement)

    migrate(dsn, Settings(_env_file=None), DatasetRegistry.from_toml({}))

    assert fetchval(dsn, "SELECT to_regclass('staging.meter_readings__record_no')") is None
    defaults = fetch(
        dsn,
        "SELECT column_name, column_default FROM information_schema.columns "
        "WHERE table_schema = 'staging' AND table_name = 'meter_readings' AND column_name LIKE '\\_%' "
        "ORDER BY 1",
    )
    assert [tuple(r) for r in defaults] == [("_extra", None), ("_file_id", None), ("_record_no", None)]
    rules = fetch(
        dsn,
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = 'staging.meter_readings'::regclass AND contype = 'c' ORDER BY 1",
    )
    assert [(r[0][:-9], r[1]) for r in rules] == [
        ("lb_rule_any_register_kwh_power_w", "CHECK (((register_kwh IS NOT NULL) OR (power_w IS NOT NULL)))"),
        ("lb_rule_meter_id_present", "CHECK (((ascii(meter_id) > 32) OR (btrim(meter_id) <> ''::text)))"),
    ]
    assert fetchval(
        dsn, "SELECT reloptions FROM pg_class WHERE oid = 'staging.meter_readings__reading_at'::regclass"
    ) == ["pages_per_range=4"]
    assert fetchval(dsn, "SELECT count(*) FROM staging.meter_readings") == 1
