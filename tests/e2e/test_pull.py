"""`main.py --pull` and watch-mode pulling as real processes, against the ERP-like database."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import run_cli, start_cli
from tests.e2e.helpers import Watchers, wait_until
from tests.erp import Erp, connection_string
from tests.pg import Server, execute, fetch, fetchval, with_database

WATERMARKS = "SELECT dataset, kind, value, file_id FROM ingest.pull_watermarks ORDER BY 1"


def test_pull_then_pipeline_in_one_run(dsn: str, workdir: Path, erp: Erp) -> None:
    erp.add_shipment("S1", ShipName="Flag Order")
    erp.add_package("P1", "S1", TotalQtyShipped=4)

    result = run_cli(dsn, workdir, "--pipeline", "--pull", EPMS_ODBC_DSN=erp.odbc())

    assert result.returncode == 0, result.stderr
    assert "\nERP pull: shipments: 1 row (#1); packages: 1 row (#2)\n" in result.stdout
    rows = fetch(dsn, "SELECT shipment_number, ship_name FROM warehouse.fact_shipment")
    assert [tuple(r) for r in rows] == [("S1", "Flag Order")]
    assert fetchval(dsn, "SELECT total_qty_shipped FROM warehouse.fact_package") == 4


def test_pull_without_an_erp_connection_string_is_a_usage_error(dsn: str, workdir: Path) -> None:
    result = run_cli(dsn, workdir, "--pull")

    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "configuration error: EPMS_ODBC_DSN is empty, so there is no ERP to pull from. Set it to the "
        "ERP's ODBC connection string (see .env.example)"
    )


def test_pull_from_an_unreachable_erp_exits_1_saying_why(dsn: str, workdir: Path, erp: Erp) -> None:
    result = run_cli(dsn, workdir, "--pull", EPMS_ODBC_DSN=erp.odbc(Database="gone_erp"))

    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[-1] == "ERP pull: nothing read. It failed: see the error above (and ingest.error_log)"
    assert "ERROR   services.pull: ERP pull failed: could not connect to the ERP: [08001]" in lines[-2]
    assert 'database "gone_erp" does not exist' in lines[-2]


@pytest.mark.slow
def test_a_pull_killed_halfway_leaves_the_watermark_and_the_next_one_loads_every_row_once(
    dsn: str, workdir: Path, erp: Erp
) -> None:
    odbc = erp.odbc(UseDeclareFetch="1", Fetch="50")  # a slow read: 50 rows per round trip
    erp.add_shipment("S00000")
    assert run_cli(dsn, workdir, "--pull", EPMS_ODBC_DSN=odbc).returncode == 0
    before = [tuple(r) for r in fetch(dsn, WATERMARKS)]
    execute(
        erp.dsn,
        """INSERT INTO dbo."Shipment" ("JobNumber", "ShipmentNumber")
           SELECT 'J2', 'S' || lpad(n::text, 5, '0') FROM generate_series(1, 30000) n""",
    )
    spool = workdir / "imports" / ".pull"

    pulling = start_cli(dsn, workdir, "--pull", EPMS_ODBC_DSN=odbc)
    try:
        partial = wait_until(lambda: list(spool.glob("shipments-odbc-*.ndjson")), 60, "the pull to start")
    finally:
        pulling.kill()
        pulling.communicate(timeout=30)

    assert [tuple(r) for r in fetch(dsn, WATERMARKS)] == before
    assert fetchval(dsn, "SELECT count(*) FROM staging.shipments") == 1
    assert fetchval(dsn, "SELECT count(*) FROM ingest.files WHERE status = 'loaded'") == 1

    again = run_cli(dsn, workdir, "--pull", EPMS_ODBC_DSN=odbc)

    assert again.returncode == 0, again.stderr
    assert f"removed {partial[0].name}: its pull did not finish, so its rows are read again" in again.stdout
    counts = fetch(dsn, "SELECT count(*), count(DISTINCT shipment_number) FROM staging.shipments")
    assert tuple(counts[0]) == (30001, 30001)
    assert list(spool.iterdir()) == []


@pytest.mark.slow
def test_the_watcher_loads_drops_while_the_erp_is_away_and_pulls_once_it_is_back(
    pg: Server, dsn: str, workdir: Path, erp_reader: str, watchers: Watchers
) -> None:
    name = f"erp_later_{os.getpid()}"
    erp_url = with_database(pg.admin_dsn, name)
    try:
        watcher = watchers.start(
            dsn,
            workdir,
            EPMS_ODBC_DSN=connection_string(erp_url),
            EPMS_PULL_SECONDS="2",
            PIPELINE_ON_INGEST="true",
        )
        away = rf'ERP pull failed: could not connect to the ERP: .*database "{name}" does not exist'
        watcher.wait_for(away + r".*; trying again in 1 s")
        watcher.wait_for(away + r".*; trying again in 2 s")
        (workdir / "imports" / "shipments_drop.csv").write_text("JobNumber,ShipmentNumber\nJ7,D1\n")
        watcher.wait_for(r"loaded shipments_drop\.csv \(#1\)")
        assert watcher.alive()
        assert fetchval(dsn, "SELECT count(*) FROM ingest.error_log WHERE component = 'pull'") == 1

        pg.execute(f'CREATE DATABASE "{name}"')
        erp = Erp(erp_url)
        erp.add_shipment("S9", ShipName="Back Online")
        watcher.wait_for(r"the ERP answers again", timeout=30)
        watcher.wait_for(r"loaded shipments-odbc-\d+T\d+Z\.ndjson \(#2\)")
        wait_until(
            lambda: fetchval(
                dsn, "SELECT ship_name FROM warehouse.fact_shipment WHERE shipment_number = 'S9'"
            ),
            30,
            "the pulled shipment in the warehouse (PIPELINE_ON_INGEST)",
        )

        erp.update("Shipment", "ShipmentNumber", "S9", ShipName="Renamed While Watching")
        wait_until(
            lambda: (
                fetchval(dsn, "SELECT ship_name FROM warehouse.fact_shipment WHERE shipment_number = 'S9'")
                == "Renamed While Watching"
            ),
            30,
            "the changed row pulled and applied",
        )
        assert watcher.stop() == 0
        assert fetchval(dsn, "SELECT count(*) FROM staging.shipments WHERE shipment_number = 'S9'") == 2
    finally:
        pg.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_sigterm_in_the_middle_of_a_pull_stops_it_cleanly_and_the_watermark_stays(
    dsn: str, workdir: Path, erp: Erp, watchers: Watchers
) -> None:
    odbc = erp.odbc(UseDeclareFetch="1", Fetch="20")  # a slow read: 20 rows per round trip
    execute(
        erp.dsn,
        """INSERT INTO dbo."Shipment" ("JobNumber", "ShipmentNumber")
           SELECT 'J3', 'S' || lpad(n::text, 6, '0') FROM generate_series(1, 200000) n""",
    )
    spool = workdir / "imports" / ".pull"
    watcher = watchers.start(dsn, workdir, EPMS_ODBC_DSN=odbc)
    wait_until(lambda: list(spool.glob("shipments-odbc-*.ndjson")), 60, "the pull to start")

    assert watcher.stop() == 0

    # The read stopped at its next batch: the grace period did not have to run out.
    assert "stopping the ERP pull in hand" not in watcher.output
    assert "services.watcher: stopped watching" in watcher.output
    assert fetchval(dsn, "SELECT count(*) FROM ingest.pull_watermarks") == 0
    assert fetchval(dsn, "SELECT count(*) FROM ingest.files") == 0
    assert list(spool.iterdir()) == []
