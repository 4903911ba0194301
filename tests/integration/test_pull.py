"""`--pull` over a real ODBC connection: pyodbc, unixODBC and psqlODBC reading an ERP-like
database on the test server as a login that may only SELECT."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime
from pathlib import Path

import asyncpg
import pytest

from app.db import Database, asyncpg_dsn
from app.settings import Settings
from models.datasets import DatasetRegistry
from services.pull import _PULL_LOCK_KEY, Puller, PullResult, run_pull, tables
from services.pull.erp import Erp as ErpConnection
from services.pull.erp import Fetched
from services.status import run_status
from tests.conftest import make_settings
from tests.e2e.helpers import wait_until
from tests.erp import READER_PASSWORD, Erp
from tests.integration.helpers import pipeline, with_db
from tests.pg import execute, fetch, fetchval, run

LEDGER = "SELECT id, dataset, source, status, rows_loaded, rows_rejected FROM ingest.files ORDER BY id"
WATERMARKS = (
    "SELECT dataset, source, kind, value, file_id, rows_pulled FROM ingest.pull_watermarks ORDER BY 1"
)


def pull(settings: Settings) -> PullResult:
    return with_db(settings, lambda db: run_pull(settings, DatasetRegistry.from_toml({}), db))


def leftovers(settings: Settings) -> list[str]:
    spool = settings.imports_dir / ".pull"
    return sorted(p.name for p in spool.iterdir()) if spool.exists() else []


@pytest.fixture
def pulling(dsn: str, workdir: Path, erp: Erp) -> Settings:
    return make_settings(dsn, workdir, epms_odbc_dsn=erp.odbc())


def test_new_rows_arrive_in_staging_once_typed_as_the_erp_had_them(
    pulling: Settings, erp: Erp, dsn: str
) -> None:
    erp.add_shipment("S1", ScheduledShipDate=datetime(2026, 11, 27), ScheduledShipQuantity=3)
    erp.add_shipment("S2", ShipName="", ShipAddress1=None, IsPartial=False)
    erp.add_package("P1", "S1", TotalQtyShipped=2)
    erp.add_package("P2", "S2", Description="")

    first = pull(pulling)

    assert first.summary() == "ERP pull: shipments: 2 rows (#1); packages: 2 rows (#2)"
    assert not first.failed
    assert [tuple(r) for r in fetch(dsn, LEDGER)] == [
        (1, "shipments", "odbc", "loaded", 2, 0),
        (2, "packages", "odbc", "loaded", 2, 0),
    ]
    shipments = fetch(
        dsn,
        """SELECT _file_id, _record_no, job_number, shipment_number, ship_name, ship_address1, is_partial,
                  shipped, scheduled_ship_date, scheduled_ship_quantity, ship_via, _extra
           FROM staging.shipments ORDER BY shipment_number""",
    )
    assert [tuple(r) for r in shipments] == [
        (
            1,
            1,
            "J100",
            "S1",
            "Print Customer Ltd",
            "1 Test Street",
            True,
            False,
            date(2026, 11, 27),
            3,
            "10005",
            None,
        ),
        # '' stays an empty string and NULL stays NULL: the ERP's own values, not a CSV's.
        (1, 2, "J100", "S2", "", None, False, False, None, 1, "10005", None),
    ]
    packages = fetch(
        dsn, "SELECT package_id, shipment_number, total_qty_shipped, description FROM staging.packages"
    )
    assert sorted(tuple(r) for r in packages) == [("P1", "S1", 2, "Box"), ("P2", "S2", 1, "")]
    last_shipment = erp.row_version("Shipment", "ShipmentNumber", "S2")
    last_package = erp.row_version("Package", "PackageID", "P2")
    assert [tuple(r) for r in fetch(dsn, WATERMARKS)] == [
        ("packages", "dbo.Package by RowVersion", "int", str(last_package), 2, 2),
        ("shipments", "dbo.Shipment by RowVersion", "int", str(last_shipment), 1, 2),
    ]
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    processed = sorted(p.name for p in (pulling.imports_dir / "processed" / day).iterdir())
    assert [name.split("-odbc-")[0] for name in processed] == ["packages", "shipments"]
    assert leftovers(pulling) == []

    second = pull(pulling)

    assert second.summary() == "ERP pull: shipments: nothing new; packages: nothing new"
    assert fetchval(dsn, "SELECT count(*) FROM ingest.files") == 2
    assert fetchval(dsn, "SELECT count(*) FROM staging.shipments") == 2
    assert fetchval(dsn, "SELECT count(*) FROM staging.packages") == 2


def test_changed_rows_arrive_again_and_win_in_the_warehouse_unchanged_rows_do_not(
    pulling: Settings, erp: Erp, dsn: str
) -> None:
    erp.add_shipment("S1", ShipName="First Customer")
    erp.add_shipment("S2", ShipName="Second Customer", ScheduledShipQuantity=2)
    erp.add_package("P1", "S1", TotalQtyShipped=2)
    erp.add_package("P2", "S2")
    pull(pulling)
    pipeline(pulling)

    erp.update("Shipment", "ShipmentNumber", "S2", ShipName="Renamed Customer", ScheduledShipQuantity=5)
    erp.update("Package", "PackageID", "P1", TotalQtyShipped=7)
    changed = pull(pulling)

    assert changed.summary() == "ERP pull: shipments: 1 row (#3); packages: 1 row (#4)"
    versions = fetch(dsn, "SELECT shipment_number, _file_id FROM staging.shipments ORDER BY 1, 2")
    assert [tuple(r) for r in versions] == [("S1", 1), ("S2", 1), ("S2", 3)]
    pipeline(pulling)
    current = fetch(
        dsn,
        "SELECT shipment_number, ship_name, scheduled_ship_quantity, source_file_id "
        "FROM warehouse.fact_shipment ORDER BY 1",
    )
    assert [tuple(r) for r in current] == [
        ("S1", "First Customer", 1, 1),
        ("S2", "Renamed Customer", 5, 3),
    ]
    packages = fetch(
        dsn, "SELECT package_id, total_qty_shipped, source_file_id FROM warehouse.fact_package ORDER BY 1"
    )
    assert [tuple(r) for r in packages] == [("P1", 7, 4), ("P2", 1, 2)]


def test_a_row_changed_and_changed_back_is_loaded_again_not_called_a_duplicate(
    pulling: Settings, erp: Erp, dsn: str
) -> None:
    erp.add_shipment("S1", ShipName="Original Name")
    pull(pulling)
    erp.update("Shipment", "ShipmentNumber", "S1", ShipName="Typo Name")
    pull(pulling)
    erp.update("Shipment", "ShipmentNumber", "S1", ShipName="Original Name")

    back = pull(pulling)

    # The third pull's file has the first one's bytes; it is loaded all the same.
    assert back.summary() == "ERP pull: shipments: 1 row (#3); packages: nothing new"
    sha = fetch(dsn, "SELECT id, sha256 FROM ingest.files ORDER BY id")
    assert sha[0]["sha256"] == sha[2]["sha256"]
    pipeline(pulling)
    assert fetchval(dsn, "SELECT ship_name FROM warehouse.fact_shipment") == "Original Name"


def test_a_pull_failing_halfway_through_the_read_leaves_the_watermark_where_it_was(
    dsn: str, workdir: Path, erp: Erp
) -> None:
    # The ERP fails on one row in the middle of the result: the read has already written 400
    # rows by then (cursor fetches of 100 through an index scan).
    execute(
        erp.dsn,
        """
        CREATE INDEX shipment_version ON dbo."Shipment" ("RowVersion");
        CREATE FUNCTION dbo.readable(number text) RETURNS boolean LANGUAGE plpgsql AS $$
        BEGIN
            IF number = 'S0450' AND NOT EXISTS (SELECT FROM dbo."Package" WHERE "PackageID" = 'fixed')
            THEN RAISE EXCEPTION 'could not read block 12 of Shipment';
            END IF;
            RETURN true;
        END $$;
        GRANT EXECUTE ON FUNCTION dbo.readable(text) TO PUBLIC;
        """,
    )
    settings = make_settings(
        dsn,
        workdir,
        epms_odbc_dsn=erp.odbc(UseDeclareFetch="1", Fetch="100"),
        epms_shipment_query='SELECT * FROM dbo."Shipment" WHERE dbo.readable("ShipmentNumber")',
    )
    erp.add_shipment("S0000")
    pull(settings)
    before = [tuple(r) for r in fetch(dsn, WATERMARKS)]
    execute(
        erp.dsn,
        """INSERT INTO dbo."Shipment" ("JobNumber", "ShipmentNumber")
           SELECT 'J2', 'S' || lpad(n::text, 4, '0') FROM generate_series(1, 1000) n;
           ANALYZE dbo."Shipment";""",
    )

    failed = pull(settings)

    assert failed.failed
    assert failed.error == (
        "reading EPMS_SHIPMENT_QUERY failed: [P0001] ERROR: could not read block 12 of Shipment; "
        "Error while fetching the next result (1) (SQLFetch)"
    )
    assert [tuple(r) for r in fetch(dsn, WATERMARKS)] == before
    assert fetchval(dsn, "SELECT count(*) FROM ingest.files") == 1
    assert fetchval(dsn, "SELECT count(*) FROM staging.shipments") == 1
    assert leftovers(settings) == []
    logged = fetch(dsn, "SELECT component, message FROM ingest.error_log")
    assert [tuple(r) for r in logged] == [("pull", failed.error)]

    erp.add_package("fixed", "S0000")
    again = pull(settings)

    assert again.summary() == "ERP pull: shipments: 1000 rows (#2); packages: 1 row (#3)"
    counts = fetch(dsn, "SELECT count(*), count(DISTINCT shipment_number) FROM staging.shipments")
    assert tuple(counts[0]) == (1001, 1001)


def test_a_binary_rowversion_watermark_is_kept_as_bytes_and_compared_as_bytes(
    dsn: str, workdir: Path, erp: Erp
) -> None:
    settings = make_settings(dsn, workdir, epms_odbc_dsn=erp.odbc(), epms_watermark_column="RowStamp")
    erp.add_shipment("S1")
    erp.add_shipment("S2")
    pull(settings)
    erp.update("Shipment", "ShipmentNumber", "S1", ShipName="Changed")

    changed = pull(settings)

    assert changed.summary() == "ERP pull: shipments: 1 row (#2); packages: nothing new"
    version = erp.row_version("Shipment", "ShipmentNumber", "S1")
    stored = fetch(dsn, "SELECT kind, value FROM ingest.pull_watermarks WHERE dataset = 'shipments'")
    assert tuple(stored[0]) == ("binary", f"{version:016x}")

    async def status() -> str:
        db = Database(asyncpg_dsn(dsn))
        try:
            return (await run_status(db)).render()
        finally:
            await db.close()

    assert f"  shipments: up to 0x{version:016X} from dbo.Shipment by RowStamp, last moved " in run(status())


def test_a_custom_query_chooses_rows_and_columns(dsn: str, workdir: Path, erp: Erp) -> None:
    settings = make_settings(
        dsn,
        workdir,
        epms_odbc_dsn=erp.odbc(),
        epms_shipment_query="""
            SELECT "JobNumber", "ShipmentNumber", upper("ShipName") AS "Ship Name", "ShipVia",
                   "CreatedBy", "RowVersion"
            FROM dbo."Shipment" WHERE "ShipVia" = '10005'
        """,
    )
    erp.add_shipment("S1", ShipName="Van Customer")
    erp.add_shipment("S2", ShipVia="20001")

    result = pull(settings)

    assert result.summary() == "ERP pull: shipments: 1 row (#1); packages: nothing new"
    rows = fetch(dsn, "SELECT shipment_number, ship_name, ship_via, ship_city, _extra FROM staging.shipments")
    # CreatedBy is no field of the dataset: it is not pulled (the ERP keeps it).
    assert [tuple(r) for r in rows] == [("S1", "VAN CUSTOMER", "10005", None, None)]
    assert fetchval(dsn, "SELECT source FROM ingest.pull_watermarks") == "EPMS_SHIPMENT_QUERY by RowVersion"


def test_a_table_without_the_datasets_required_columns_is_named_with_what_it_has(
    dsn: str, workdir: Path, erp: Erp
) -> None:
    settings = make_settings(
        dsn,
        workdir,
        epms_odbc_dsn=erp.odbc(),
        epms_shipment_query='SELECT "ShipName", "RowVersion" FROM dbo."Shipment"',
    )

    result = pull(settings)

    assert result.error == (
        "EPMS_SHIPMENT_QUERY cannot feed dataset shipments: required column(s) missing for dataset "
        "shipments: JobNumber, ShipmentNumber. Found: ShipName, RowVersion. Expected: JobNumber, "
        "ShipmentNumber, ShipName, ShipAddress1, ShipAddress2, ShipAddress3, ShipCity, ShipState, "
        "ShipZip, ShipCountry, ShipContact, Instructions, ShipPhone, Email, ShipVia, IsPartial, "
        "Shipped, ShipViaService, ScheduledShipDate, ScheduledShipQuantity"
    )
    assert fetchval(dsn, "SELECT count(*) FROM ingest.files") == 0


def test_a_missing_watermark_column_lists_the_columns_there_are(dsn: str, workdir: Path, erp: Erp) -> None:
    settings = make_settings(dsn, workdir, epms_odbc_dsn=erp.odbc(), epms_watermark_column="Version")

    result = pull(settings)

    assert result.error == (
        "dbo.Shipment has no column Version (EPMS_WATERMARK_COLUMN). Its columns: JobNumber, "
        "ShipmentNumber, ShipName, ShipAddress1, ShipCity, ShipCountry, ShipVia, IsPartial, Shipped, "
        "ScheduledShipDate, ScheduledShipQuantity, CreatedBy, RowVersion, RowStamp"
    )


def test_the_erp_login_loadbay_uses_can_only_read(erp: Erp) -> None:
    import pyodbc  # needs unixODBC: imported by the tests that use it, after the erp fixture's check

    # The pulls above succeed as this login, so they only read: a write is refused.
    connection = pyodbc.connect(erp.odbc())
    try:
        with pytest.raises(pyodbc.Error, match="permission denied for table Shipment"):
            connection.cursor().execute('UPDATE dbo."Shipment" SET "ShipName" = \'x\'')
    finally:
        connection.close()


def test_an_unreachable_erp_is_one_error_log_row_per_streak_and_no_password_anywhere(
    dsn: str, workdir: Path, erp: Erp, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "Sup3r-Secret-Pw"
    odbc = erp.odbc(Database="no_such_erp", Pwd=secret)
    settings = make_settings(dsn, workdir, epms_odbc_dsn=odbc)

    async def twice() -> list[PullResult]:
        db = Database(asyncpg_dsn(dsn))
        try:
            puller = Puller(settings, DatasetRegistry.from_toml({}), db)
            return [await puller.pull(), await puller.pull()]
        finally:
            await db.close()

    results = run(twice())

    for result in results:
        assert result.error is not None
        assert result.error.startswith("could not connect to the ERP: [08001] connection to server ")
        assert 'database "no_such_erp" does not exist' in result.error
    logged = fetch(dsn, "SELECT component, message, detail::text FROM ingest.error_log")
    assert [(r["component"], r["message"]) for r in logged] == [("pull", results[0].error)]
    assert logged[0]["detail"] == '{"tables": ["dbo.Shipment", "dbo.Package"]}'
    assert secret not in caplog.text and secret not in str(results[0].error)
    assert READER_PASSWORD not in caplog.text


def test_a_second_puller_skips_its_turn_while_one_pulls(pulling: Settings, erp: Erp, dsn: str) -> None:
    erp.add_shipment("S1")

    async def while_locked() -> PullResult:
        holder = await asyncpg.connect(dsn)
        try:
            await holder.execute("SELECT pg_advisory_lock($1)", _PULL_LOCK_KEY)
            db = Database(asyncpg_dsn(dsn))
            try:
                return await Puller(pulling, DatasetRegistry.from_toml({}), db).pull()
            finally:
                await db.close()
        finally:
            await holder.close()

    busy = run(while_locked())

    assert busy.summary() == "ERP pull skipped: another loadbay process is pulling right now."
    assert not busy.failed
    assert fetchval(dsn, "SELECT count(*) FROM ingest.files") == 0
    assert pull(pulling).summary() == "ERP pull: shipments: 1 row (#1); packages: nothing new"


def test_a_close_asked_for_during_a_read_happens_when_the_read_ends(erp: Erp, tmp_path: Path) -> None:
    # A cancelled pull closes its connection while the read may still run on its thread; the
    # read must finish on a live handle and close it after, never two threads on one handle.
    import pyodbc

    execute(
        erp.dsn,
        """INSERT INTO dbo."Shipment" ("JobNumber", "ShipmentNumber")
           SELECT 'J4', 'S' || lpad(n::text, 5, '0') FROM generate_series(1, 20000) n""",
    )
    settings = Settings(_env_file=None, epms_odbc_dsn=erp.odbc(UseDeclareFetch="1", Fetch="20"))
    shipments = tables(settings, DatasetRegistry.from_toml({}))[0]
    connection = ErpConnection(settings.epms_odbc_dsn.get_secret_value())
    spool = tmp_path / "shipments.ndjson"
    fetched: list[Fetched] = []
    reading = threading.Thread(
        target=lambda: fetched.append(connection.fetch(shipments, None, spool, threading.Event()))
    )
    reading.start()
    wait_until(lambda: spool.exists() and spool.stat().st_size > 0, 30, "the read to be under way")

    connection.close()  # returns at once: the read still owns the connection

    reading.join(60)
    assert fetched[0].rows == 20000
    assert len(spool.read_text().splitlines()) == 20000
    with pytest.raises(pyodbc.ProgrammingError, match="closed connection"):
        connection.connection.cursor()
