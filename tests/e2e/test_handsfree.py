"""The whole flow with nobody involved: drops → pipeline → dispatch to the DeTrack stand-in →
a pushed completion with proof of delivery → the analysis on its schedule."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.detrack_standin import DetrackStandin
from tests.e2e.helpers import Watchers, drop_atomically, wait_until
from tests.integration.test_dispatch import KEY, SHIPMENT_HEADER, VEHICLES, shipment
from tests.integration.test_webhook import free_port
from tests.pg import fetch, fetchval

USER, PASSWORD = "detrack", "e2e-hook-secret"
SIGNATURE = "https://detrack.example/signatures/J0001.png"


@pytest.mark.slow
def test_drops_reach_detrack_and_a_pushed_delivery_comes_back_with_no_command(
    dsn: str, workdir: Path, watchers: Watchers
) -> None:
    port = free_port()
    with DetrackStandin(KEY, vehicles=VEHICLES, rate_limit_per_minute=None) as api:
        watcher = watchers.start(
            dsn,
            workdir,
            DETRACK_API_KEY=KEY,
            DETRACK_BASE_URL=api.base_url,
            DISPATCH_RULES=str(workdir / "dispatch_rules.toml"),
            PIPELINE_ON_INGEST="true",
            DISPATCH_AFTER_PIPELINE="true",
            ANALYSIS_SCHEDULE="5",
            DETRACK_WEBHOOK_PORT=str(port),
            DETRACK_WEBHOOK_HOST="127.0.0.1",
            DETRACK_WEBHOOK_USER=USER,
            DETRACK_WEBHOOK_PASSWORD=PASSWORD,
        )
        imports = workdir / "imports"
        drop_atomically(
            imports, "shipments_today.csv", (SHIPMENT_HEADER + shipment(1) + shipment(2)).encode()
        )
        drop_atomically(
            imports,
            "packages_today.csv",
            b"PackageID,ShipmentNumber,JobNumber,TotalQtyShipped,Description\nP1,S00001,J0001,3,Boxes\n",
        )
        wait_until(lambda: len(api.jobs) == 2, 30, "both jobs on the stand-in")
        assert sorted(api.jobs) == [("J0001", "2024-06-03"), ("J0002", "2024-06-03")]
        wait_until(
            lambda: (
                api.jobs[("J0001", "2024-06-03")].get("items")
                == [{"sku": "P1", "description": "Boxes", "quantity": 3}]
            ),
            30,
            "the packages' items on the job (updated after the second pipeline run)",
        )

        api.webhook = (f"http://127.0.0.1:{port}/detrack/webhook", USER, PASSWORD)
        api.set_status(
            "J0001",
            "2024-06-03",
            "completed",
            pod={"signature_file_url": SIGNATURE, "received_by_sent_by": "Goods In"},
        )
        assert api.webhook_answers == [200]
        row = fetch(
            dsn,
            "SELECT j.detrack_status, j.signature_url, f.delivered FROM warehouse.detrack_jobs j "
            "JOIN warehouse.fact_shipment f USING (shipment_number) WHERE j.do_number = 'J0001'",
        )[0]
        assert tuple(row) == ("completed", SIGNATURE, True)

        report = workdir / "exports" / "report.html"
        first = wait_until(lambda: report.exists() and os.stat(report).st_mtime_ns, 30, "report.html")
        wait_until(lambda: os.stat(report).st_mtime_ns > first, 30, "report.html rewritten on the schedule")
        assert watcher.stop() == 0

    assert api.created_count("J0001", "2024-06-03") == 1 and api.created_count("J0002", "2024-06-03") == 1
    runs = fetch(dsn, "SELECT stage, trigger, outcome FROM ops.stage_runs ORDER BY id")
    triggers = {(r["stage"], r["trigger"]) for r in runs}
    assert {("pipeline", "ingest"), ("dispatch", "chain"), ("analysis", "schedule")} <= triggers
    assert {r["outcome"] for r in runs} <= {"ok", "skipped"}
    assert fetchval(dsn, "SELECT count(*) FROM ingest.error_log") == 0
    assert "Goods In" not in watcher.output  # the receiver's name is personal data


def test_the_webhook_port_without_credentials_is_a_configuration_error(dsn: str, workdir: Path) -> None:
    proc = run_cli(dsn, workdir, "--watch", DETRACK_WEBHOOK_PORT="8099", DETRACK_WEBHOOK_USER="detrack")
    assert proc.returncode == 2
    assert (
        "DETRACK_WEBHOOK_PORT is set, so DETRACK_WEBHOOK_USER and DETRACK_WEBHOOK_PASSWORD are required"
        in (proc.stderr)
    )


def test_a_bad_cron_expression_is_a_configuration_error_naming_the_variable(dsn: str, workdir: Path) -> None:
    proc = run_cli(dsn, workdir, "--watch", ANALYSIS_SCHEDULE="0 25 * * *")
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0] == (
        "configuration error: ANALYSIS_SCHEDULE: Value error, '0 25 * * *' is neither a number of seconds "
        'nor a 5-field cron expression (minute hour day-of-month month day-of-week, e.g. "*/5 * * * *" or '
        '"0 6 * * 1-5")'
    )
