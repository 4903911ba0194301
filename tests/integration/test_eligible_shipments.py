""" "Eligible for dispatch" is one view, `warehouse.eligible_shipments` (migration 0008): the
outbox planner and the analysis views read it, each with the DISPATCH_SHIP_VIA it was started
with, stored in `warehouse.dispatch_parameters`."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from app.migrate import head_revision, migrate
from app.settings import Settings
from models.datasets import DatasetRegistry
from services.analysis import create_views
from tests.conftest import make_settings
from tests.integration.helpers import drop, ingest, pipeline
from tests.integration.test_dispatch import SHIPMENT_HEADER, dispatch, shipment
from tests.integration.test_migrations import upgrade_to
from tests.pg import Server, execute, fetch, fetchval, run

MIXED = (
    shipment(1, via="10005")
    + shipment(2, via="10007")
    + shipment(3, via="10005", partial="0")  # not booked on the van
    + shipment(4, via="20001")
    + shipment(5, via="")  # no ShipVia at all
)


def eligible(dsn: str) -> list[str]:
    rows = fetch(dsn, "SELECT shipment_number FROM warehouse.eligible_shipments ORDER BY 1")
    return [r["shipment_number"] for r in rows]


def load(settings: Settings) -> None:
    drop(settings.imports_dir, "shipments_mixed.csv", SHIPMENT_HEADER + MIXED)
    ingest(settings, settings.imports_dir)
    pipeline(settings)


def test_dispatch_reads_the_view_with_its_own_ship_via_list(dsn: str, workdir: Path) -> None:
    settings = make_settings(dsn, workdir, dispatch_ship_via=" 10005, 10007 ,")
    load(settings)

    result = dispatch(settings, dry_run=True)

    assert [p["tracking_number"] for p in result.payloads] == ["S00001", "S00002"]
    assert fetchval(dsn, "SELECT count(*) FROM warehouse.dispatch_parameters") == 0  # a dry run keeps nothing
    assert eligible(dsn) == []
    other = make_settings(dsn, workdir, dispatch_ship_via="20001")
    assert [p["tracking_number"] for p in dispatch(other, dry_run=True).payloads] == ["S00004"]


def test_analysis_stores_its_list_and_the_views_count_what_dispatch_would_send(
    dsn: str, settings: Settings
) -> None:
    load(settings)
    execute(dsn, "UPDATE warehouse.fact_shipment SET delivered = true WHERE shipment_number = 'S00002'")
    wide = settings.model_copy(update={"dispatch_ship_via": "10005,10007"})

    run(_create_views(wide, dsn))

    assert fetchval(dsn, "SELECT ship_via FROM warehouse.dispatch_parameters") == ["10005", "10007"]
    assert fetch(dsn, "SELECT ship_via, settlement_tz FROM analysis.parameters")[0]["ship_via"] is None
    assert eligible(dsn) == ["S00001", "S00002"]
    daily = fetch(dsn, "SELECT shipments, on_our_vans, delivered FROM analysis.shipments_daily")
    assert [tuple(r) for r in daily] == [(5, 2, 1)]
    backlog = fetch(dsn, "SELECT shipment_number, outbox_status FROM analysis.dispatch_backlog")
    assert [tuple(r) for r in backlog] == [("S00001", "not planned")]  # S00002 is delivered
    outcomes = fetch(dsn, "SELECT outbox_status, shipments FROM analysis.dispatch_outcomes")
    assert [tuple(r) for r in outcomes] == [("not sent", 2)]

    run(_create_views(settings, dsn))  # the default list: 10005 only

    assert eligible(dsn) == ["S00001"]
    daily = fetch(dsn, "SELECT shipments, on_our_vans, delivered FROM analysis.shipments_daily")
    assert [tuple(r) for r in daily] == [(5, 1, 1)]


async def _create_views(settings: Settings, dsn: str) -> None:
    """What --analysis does before it exports (charts and CSVs are tests/e2e/test_analysis.py's)."""
    conn = await asyncpg.connect(dsn)
    try:
        await create_views(conn, settings)
    finally:
        await conn.close()


def test_a_database_migrated_before_0008_keeps_the_list_analysis_stored(pg: Server) -> None:
    with pg.database() as dsn:
        upgrade_to(dsn, "0007")
        execute(dsn, "INSERT INTO analysis.parameters VALUES (true, '{10005,10007}', 'Europe/London')")

        migrate(dsn, Settings(_env_file=None), DatasetRegistry.from_toml({}))

        assert fetchval(dsn, "SELECT version_num FROM ingest.alembic_version") == head_revision()
        assert fetchval(dsn, "SELECT ship_via FROM warehouse.dispatch_parameters") == ["10005", "10007"]
        nullable = fetchval(
            dsn,
            "SELECT is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'analysis' AND table_name = 'parameters' AND column_name = 'ship_via'",
        )
        assert nullable == "YES"
        assert eligible(dsn) == []
