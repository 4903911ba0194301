"""`--dispatch` against the DeTrack stand-in (a real HTTP server on 127.0.0.1) and real PostgreSQL."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from app.db import Database, asyncpg_dsn
from app.settings import Settings
from services.dispatch import DispatchResult, run_dispatch
from services.dispatch.client import DetrackClient
from tests.conftest import make_settings, run_cli
from tests.detrack_standin import DetrackStandin
from tests.integration.helpers import drop, ingest, pipeline
from tests.pg import fetch, fetchval, run

KEY = "test-key-3f9c2a"
VEHICLES = [
    {"id": 1, "name": "Van Alpha", "detrack_id": "VA"},
    {"id": 2, "name": "Van Bravo", "detrack_id": "VB"},
    {"id": 3, "name": "Van Charlie", "detrack_id": "VC"},
]
SHIPMENT_HEADER = (
    "JobNumber,ShipmentNumber,ShipName,ShipAddress1,ShipCity,ShipState,ShipZip,ShipCountry,ShipContact,"
    "ShipPhone,Email,ShipVia,IsPartial,ScheduledShipDate\n"
)


@pytest.fixture
def api() -> Iterator[DetrackStandin]:
    with DetrackStandin(KEY, vehicles=VEHICLES, rate_limit_per_minute=60, send_retry_after=True) as standin:
        yield standin


@pytest.fixture
def dispatch_settings(dsn: str, workdir: Path, api: DetrackStandin) -> Settings:
    return make_settings(
        dsn,
        workdir,
        detrack_api_key=KEY,
        detrack_base_url=api.base_url,
        dispatch_rules=workdir / "dispatch_rules.toml",
        detrack_timeout_seconds=2,
    )


def shipment(
    n: int,
    *,
    job: str | None = None,
    via: str = "10005",
    partial: str = "1",
    date: str = "2024-06-03",
    city: str = "Leeds",
    zip_code: str = "LS1 4AP",
) -> str:
    return (
        f"{job or f'J{n:04d}'},S{n:05d},Customer {n},Unit {n} Example Park,{city},West Yorkshire,{zip_code},"
        f"United Kingdom,Goods In,+44 0000 000000,orders@example.com,{via},{partial},{date}\n"
    )


def load_warehouse(settings: Settings, shipments: str, packages: str = "") -> None:
    drop(settings.imports_dir, "shipments_d.csv", SHIPMENT_HEADER + shipments)
    if packages:
        drop(
            settings.imports_dir,
            "packages_d.csv",
            "PackageID,ShipmentNumber,JobNumber,TotalQtyShipped,Description\n" + packages,
        )
    ingest(settings, settings.imports_dir)
    pipeline(settings)


def dispatch(settings: Settings, dry_run: bool = False) -> DispatchResult:
    async def go() -> DispatchResult:
        db = Database(asyncpg_dsn(settings.database_url.get_secret_value()))
        try:
            return await run_dispatch(settings, db, dry_run=dry_run)
        finally:
            await db.close()

    return run(go())


def outbox(dsn: str) -> list[dict[str, Any]]:
    return [dict(r) for r in fetch(dsn, "SELECT * FROM warehouse.detrack_jobs ORDER BY date, do_number")]


def test_only_eligible_shipments_become_jobs_in_bulk_with_address_items_and_vehicle(
    dispatch_settings: Settings, dsn: str, api: DetrackStandin
) -> None:
    eligible = "".join(shipment(n) for n in range(1, 251))
    others = shipment(900, via="20001") + shipment(901, partial="0")
    packages = "".join(f"P{n}-1,S{n:05d},J{n:04d},{n % 3},Box\n" for n in range(1, 251))
    load_warehouse(dispatch_settings, eligible + others, packages)

    result = dispatch(dispatch_settings)

    posts = [r for r in api.requests if r.method == "POST"]
    assert [r.path for r in posts] == ["/api/v2/dn/jobs/bulk"] * 3
    assert (result.counts.sent, result.by_status) == (250, {"sent": 250})
    assert result.failed is False
    jobs = api.jobs
    assert sorted(k[0] for k in jobs) == sorted(f"J{n:04d}" for n in range(1, 251))
    rows = outbox(dsn)
    assert len(rows) == 250
    for row in rows:
        job = jobs[(row["do_number"], row["date"].isoformat())]
        assert str(job["id"]) == row["detrack_id"]
        assert job["type"] == "Delivery"
        assert (
            job["address"] == f"Unit {int(row['shipment_number'][1:])} Example Park, Leeds, West Yorkshire, "
            "LS1 4AP, United Kingdom"
        )
        assert job["assign_to"] == row["assign_to"] and job["assign_to"] in {v["name"] for v in VEHICLES}
        assert all(item["quantity"] > 0 for item in job.get("items", []))
        assert api.created_count(row["do_number"], row["date"].isoformat()) == 1
    # least_loaded over three vans: 250 jobs on one day split 84/83/83, ties by name
    loads = sorted((sum(1 for r in rows if r["assign_to"] == v["name"]) for v in VEHICLES), reverse=True)
    assert loads == [84, 83, 83]
    assert [i["quantity"] for i in jobs[("J0001", "2024-06-03")]["items"]] == [1]
    assert "items" not in jobs[("J0003", "2024-06-03")] or jobs[("J0003", "2024-06-03")]["items"] == []


def test_second_and_third_shipment_of_a_job_on_a_date_get_suffixes(
    dispatch_settings: Settings, dsn: str, api: DetrackStandin
) -> None:
    load_warehouse(
        dispatch_settings,
        shipment(1, job="J77")
        + shipment(2, job="J77")
        + shipment(3, job="J77")
        + shipment(4, job="J77", date="2024-06-04"),
    )

    dispatch(dispatch_settings)

    assert sorted(api.jobs) == [
        ("J77", "2024-06-03"),
        ("J77", "2024-06-04"),
        ("J77(2)", "2024-06-03"),
        ("J77(3)", "2024-06-03"),
    ]
    assert [(r["do_number"], r["shipment_number"]) for r in outbox(dsn)] == [
        ("J77", "S00001"),
        ("J77(2)", "S00002"),
        ("J77(3)", "S00003"),
        ("J77", "S00004"),
    ]


def test_assignment_rules_come_first_and_name_the_vehicle(
    dispatch_settings: Settings, dsn: str, api: DetrackStandin
) -> None:
    dispatch_settings.dispatch_rules.write_text(
        '[[rules]]\npostal_code_prefix = "ls1"\nvehicle = "Van Charlie"\n'
        '[[rules]]\ncity = "york"\nvehicle = "Van Bravo"\n'
    )
    load_warehouse(
        dispatch_settings,
        shipment(1)
        + shipment(2, city="York", zip_code="YO1 7HH")
        + shipment(3, city="Hull", zip_code="HU1 1AA"),
    )

    dispatch(dispatch_settings)

    assert {r["shipment_number"]: r["assign_to"] for r in outbox(dsn)} == {
        "S00001": "Van Charlie",
        "S00002": "Van Bravo",
        "S00003": "Van Alpha",
    }


def test_a_partial_422_fails_only_the_rejected_jobs_with_field_and_codes(
    dispatch_settings: Settings, dsn: str, api: DetrackStandin
) -> None:
    load_warehouse(dispatch_settings, shipment(1) + shipment(2) + shipment(3))
    api.add_job({"do_number": "J0002", "date": "2024-06-03", "address": "elsewhere"})  # exists already
    api.duplicate_code = "is already taken"

    result = dispatch(dispatch_settings)

    assert (result.counts.sent, result.counts.duplicate_confirmed) == (2, 1)
    assert {r["do_number"]: r["status"] for r in outbox(dsn)} == {
        "J0001": "sent",
        "J0002": "sent",
        "J0003": "sent",
    }
    assert api.created_count("J0002", "2024-06-03") == 1


def test_a_refused_job_is_failed_with_the_api_field_and_codes(
    dispatch_settings: Settings, dsn: str, api: DetrackStandin
) -> None:
    load_warehouse(dispatch_settings, shipment(1) + shipment(2, date="2024-06-03"))
    # A job DeTrack refuses: an item without description or sku.
    fetchval(dsn, "UPDATE warehouse.fact_shipment SET job_number = job_number WHERE false")
    original = DetrackClient.create_jobs

    def sabotage(self: DetrackClient, jobs: list[dict[str, object]]) -> Any:
        jobs = [dict(j, items=[{"quantity": 1}]) if j["do_number"] == "J0002" else j for j in jobs]
        return original(self, jobs)

    DetrackClient.create_jobs = sabotage  # type: ignore[method-assign]
    try:
        result = dispatch(dispatch_settings)
    finally:
        DetrackClient.create_jobs = original  # type: ignore[method-assign]

    assert result.failed is True
    rows = {r["do_number"]: r for r in outbox(dsn)}
    assert (rows["J0001"]["status"], rows["J0002"]["status"]) == ("sent", "failed")
    assert rows["J0002"]["last_error"] == "items[0].description: can't be blank"
    log = fetch(dsn, "SELECT message, detail, do_number FROM ingest.error_log WHERE component = 'dispatch'")
    assert [(r["message"], r["do_number"]) for r in log] == [
        ("DeTrack refused job J0002: items[0].description: can't be blank", "J0002")
    ]
    assert json.loads(log[0]["detail"])["errors"] == [
        {"field": "items[0].description", "codes": ["can't be blank"]}
    ]


@pytest.mark.slow
def test_a_flaky_api_ends_with_everything_sent_once_and_the_waits_follow_the_backoff(
    dispatch_settings: Settings, dsn: str, api: DetrackStandin
) -> None:
    load_warehouse(
        dispatch_settings, "".join(shipment(n, date=f"2024-06-0{1 + n % 3}") for n in range(1, 151))
    )
    api.fail_every(3)
    api.timeout_next(1, seconds=3, mode="processed")
    api.rate_limit_next(1, retry_after=2)

    result = dispatch(dispatch_settings)

    assert result.by_status == {"sent": 150}
    assert all(api.created_count(*key) == 1 for key in api.jobs)
    assert len(api.jobs) == 150
    log = api.requests
    refused = [i for i, r in enumerate(log) if r.status in (429, 503) or r.status is None]
    assert refused, "the faults were not exercised"
    for i in refused:
        if i + 1 < len(log):
            gap = (log[i + 1].at - log[i].at).total_seconds()
            minimum = 2 if log[i].status == 429 else 0.9
            assert gap >= minimum, f"request {i + 1} came {gap:.2f} s after a {log[i].status}"


def test_a_crash_after_the_bulk_create_creates_nothing_new_and_marks_the_jobs_sent(
    dispatch_settings: Settings, dsn: str, api: DetrackStandin
) -> None:
    load_warehouse(dispatch_settings, shipment(1) + shipment(2))
    dispatch(dispatch_settings, dry_run=True)  # plans nothing durable
    assert outbox(dsn) == []
    # The state a crash leaves: rows claimed as sending, the bulk create accepted by DeTrack,
    # the database never told.
    run(_plan_only(dispatch_settings))
    fetchval(dsn, "UPDATE warehouse.detrack_jobs SET status = 'sending'")
    payloads = [
        json.loads(r["payload"]) for r in fetch(dsn, "SELECT payload::text FROM warehouse.detrack_jobs")
    ]
    DetrackClient(api.base_url, dispatch_settings.detrack_api_key, 60).create_jobs(payloads)

    result = dispatch(dispatch_settings)

    assert (result.counts.recovered, result.counts.sent) == (2, 0)
    assert result.by_status == {"sent": 2}
    assert [r.method for r in api.requests if r.path.endswith("/bulk")] == ["POST"]
    assert [r.method for r in api.requests if "/dn/jobs/J000" in r.path] == ["GET", "GET"]
    assert all(api.created_count(*key) == 1 for key in api.jobs)
    assert {r["do_number"]: r["detrack_id"] for r in outbox(dsn)} == {
        do: str(job["id"]) for (do, _), job in api.jobs.items()
    }


async def _plan_only(settings: Settings) -> None:
    import asyncpg

    from models.detrack import AssignmentRules
    from services.dispatch.plan import Assigner, plan_jobs

    conn = await asyncpg.connect(asyncpg_dsn(settings.database_url.get_secret_value()))
    try:
        await plan_jobs(conn, settings, lambda load: Assigner(AssignmentRules(fallback="none"), list, load))
    finally:
        await conn.close()


def test_completed_jobs_mark_the_shipment_delivered(
    dispatch_settings: Settings, dsn: str, api: DetrackStandin
) -> None:
    load_warehouse(dispatch_settings, shipment(1) + shipment(2) + shipment(3))
    dispatch(dispatch_settings)
    api.set_status("J0001", "2024-06-03", "completed")
    api.set_status("J0002", "2024-06-03", "completed_partial")
    api.set_status("J0003", "2024-06-03", "failed")

    result = dispatch(dispatch_settings)

    assert result.counts.delivered == 2
    rows = fetch(
        dsn,
        "SELECT shipment_number, delivered, delivered_at IS NOT NULL AS has_time "
        "FROM warehouse.fact_shipment ORDER BY 1",
    )
    assert [tuple(r) for r in rows] == [
        ("S00001", True, True),
        ("S00002", True, True),
        ("S00003", False, False),
    ]
    assert {r["do_number"]: r["detrack_status"] for r in outbox(dsn)} == {
        "J0001": "completed",
        "J0002": "completed_partial",
        "J0003": "failed",
    }


def test_a_changed_shipment_with_an_unfinished_job_is_updated_not_created(
    dispatch_settings: Settings, dsn: str, api: DetrackStandin
) -> None:
    load_warehouse(dispatch_settings, shipment(1) + shipment(2))
    dispatch(dispatch_settings)
    api.set_status("J0002", "2024-06-03", "completed")
    dispatch(dispatch_settings)
    drop(
        dispatch_settings.imports_dir,
        "shipments_changed.csv",
        SHIPMENT_HEADER + shipment(1, city="Bradford") + shipment(2, city="Bradford"),
    )
    ingest(dispatch_settings, dispatch_settings.imports_dir)
    pipeline(dispatch_settings)

    result = dispatch(dispatch_settings)

    assert (result.changed, result.counts.updated, result.counts.sent) == (1, 1, 0)
    assert api.jobs[("J0001", "2024-06-03")]["city"] == "Bradford"
    assert api.jobs[("J0002", "2024-06-03")]["city"] == "Leeds"  # finished: left alone
    assert [r.method for r in api.requests if "/dn/jobs/J0001" in r.path] == ["PUT"]


@pytest.mark.slow
def test_the_api_key_never_appears_in_logs_errors_or_exceptions(
    dispatch_settings: Settings, dsn: str, api: DetrackStandin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dispatch_settings.dispatch_rules.write_text('[[rules]]\ncity = "Leeds"\nvehicle = "Van Alpha"\n')
    dispatch_settings.detrack_max_retries = 2
    load_warehouse(dispatch_settings, shipment(1))
    api.fail_next(3, status=503)

    result = dispatch(dispatch_settings)

    assert result.by_status == {"retry": 1}
    row = outbox(dsn)[0]
    assert row["last_error"] == "DeTrack answered 503 to POST /dn/jobs/bulk after retries"
    assert row["next_attempt_at"] > row["updated_at"]
    texts = [
        caplog.text,
        json.dumps([dict(r) for r in fetch(dsn, "SELECT * FROM ingest.error_log")], default=str),
        json.dumps(outbox(dsn), default=str),
    ]
    assert all(KEY not in text for text in texts)
    fetchval(dsn, "UPDATE warehouse.detrack_jobs SET next_attempt_at = now()")
    bad = make_settings(
        dsn,
        dispatch_settings.imports_dir.parent,
        detrack_api_key="wrong-" + KEY,
        detrack_base_url=api.base_url,
    )
    with pytest.raises(Exception) as caught:
        dispatch(bad)
    assert (
        str(caught.value) == "DeTrack refused the API key (401). Check DETRACK_API_KEY and DETRACK_BASE_URL"
    )
    assert KEY not in repr(caught.value)


def test_dispatch_dry_run_masks_personal_data_and_sends_nothing(
    dsn: str, workdir: Path, api: DetrackStandin
) -> None:
    settings = make_settings(dsn, workdir)
    load_warehouse(settings, shipment(1))

    result = run_cli(dsn, workdir, "--dispatch", "--dry-run", DETRACK_BASE_URL=api.base_url)

    assert result.returncode == 0, result.stdout + result.stderr
    payload = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("{")))
    assert (
        payload["do_number"] == "J0001" and payload["address"] == "***" and payload["phone_number"] == "***"
    )
    assert "orders@example.com" not in result.stdout and "Example Park" not in result.stdout
    assert "dry run: 1 jobs would be sent or updated; nothing was sent" in result.stdout
    assert api.requests == []
    assert fetchval(dsn, "SELECT count(*) FROM warehouse.detrack_jobs") == 0


def test_a_shipment_without_any_address_is_failed_once_and_never_sent(
    dispatch_settings: Settings, dsn: str, api: DetrackStandin
) -> None:
    no_address = (
        "J0009,S00009,Customer 9,,,,,,Goods In,+44 0000 000000,orders@example.com,10005,1,2024-06-03\n"
    )
    load_warehouse(dispatch_settings, shipment(1) + no_address)

    first = dispatch(dispatch_settings)
    second = dispatch(dispatch_settings)

    assert (first.failed, second.failed) == (True, True)
    rows = {r["do_number"]: (r["status"], r["last_error"]) for r in outbox(dsn)}
    assert rows == {
        "J0001": ("sent", None),
        "J0009": (
            "failed",
            "the shipment has no address (address lines, city, state, zip and country are all empty)",
        ),
    }
    assert ("J0009", "2024-06-03") not in api.jobs
    logged = fetch(dsn, "SELECT do_number FROM ingest.error_log WHERE component = 'dispatch'")
    assert [r["do_number"] for r in logged] == ["J0009"]


def test_a_job_number_that_looks_like_a_suffix_gets_its_own_do_numbers_across_runs(
    dispatch_settings: Settings, dsn: str, api: DetrackStandin
) -> None:
    # "A(3)" in the outbox reads like job A's third shipment; the next run must still see that
    # the do_number is taken and give job A(3)'s second shipment "A(3)(2)".
    load_warehouse(dispatch_settings, shipment(1, job="A(3)"))
    dispatch(dispatch_settings)
    drop(dispatch_settings.imports_dir, "shipments_more.csv", SHIPMENT_HEADER + shipment(2, job="A(3)"))
    ingest(dispatch_settings, dispatch_settings.imports_dir)
    pipeline(dispatch_settings)

    result = dispatch(dispatch_settings)

    assert (result.new, result.counts.sent) == (1, 1)
    assert [(r["do_number"], r["shipment_number"], r["status"]) for r in outbox(dsn)] == [
        ("A(3)", "S00001", "sent"),
        ("A(3)(2)", "S00002", "sent"),
    ]
    assert sorted(api.jobs) == [("A(3)", "2024-06-03"), ("A(3)(2)", "2024-06-03")]


def test_the_status_sync_fills_proof_of_delivery_as_the_webhook_does(
    dispatch_settings: Settings, dsn: str, api: DetrackStandin
) -> None:
    load_warehouse(dispatch_settings, shipment(1) + shipment(2))
    dispatch(dispatch_settings)
    done_at = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1)  # after the job's creation
    api.set_status(
        "J0001",
        "2024-06-03",
        "completed",
        at=done_at,
        pod={"received_by_sent_by": "front desk", "signature_file_url": "https://pod.example/s/1.png"},
    )
    api.set_status("J0002", "2024-06-03", "failed", pod={"reason": "closed"})

    first = dispatch(dispatch_settings)
    again = dispatch(dispatch_settings)  # the same news twice changes nothing

    assert (first.counts.delivered, again.counts.delivered) == (1, 0)
    rows = fetch(
        dsn,
        "SELECT do_number, detrack_status, pod_at, received_by, signature_url, failure_reason "
        "FROM warehouse.detrack_jobs ORDER BY do_number",
    )
    assert [tuple(r) for r in rows] == [
        ("J0001", "completed", done_at, "front desk", "https://pod.example/s/1.png", None),
        ("J0002", "failed", None, None, None, "closed"),
    ]
    [delivered] = fetch(dsn, "SELECT delivered, delivered_at FROM warehouse.fact_shipment WHERE delivered")
    assert tuple(delivered) == (True, done_at)
