"""`--pipeline` end to end: files in, warehouse out; incremental, idempotent, order-proof."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from app.db import Database, asyncpg_dsn
from app.settings import Settings
from services.pipeline import PipelineResult, run_pipeline
from tests.conftest import make_settings, run_cli
from tests.integration.energy_helpers import VECTORS, expected_gaps, expected_intervals, vector_settings
from tests.integration.helpers import drop, ingest
from tests.pg import fetch, run

INTERVALS = """
    SELECT meter_id, to_char(interval_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS start,
           kwh, quality, source, settlement_date::text, settlement_period
    FROM warehouse.fact_energy_interval ORDER BY meter_id, interval_start
"""
GAPS = """
    SELECT meter_id, to_char(gap_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
           to_char(gap_end AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), kwh, reason
    FROM warehouse.energy_gaps ORDER BY meter_id, gap_start
"""


def pipeline(settings: Settings) -> PipelineResult:
    async def go() -> PipelineResult:
        db = Database(asyncpg_dsn(settings.database_url.get_secret_value()))
        try:
            return await run_pipeline(settings, db)
        finally:
            await db.close()

    return run(go())


def meter_csv(readings: list[dict[str, Any]]) -> str:
    lines = ["meter_id,reading_at,register_kwh,power_w"]
    for r in readings:
        register = "" if r["register_kwh"] is None else repr(r["register_kwh"])
        power = "" if r["power_w"] is None else repr(r["power_w"])
        lines.append(f"{r['meter_id']},{r['ts']},{register},{power}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("case", VECTORS, ids=[c["name"] for c in VECTORS])
def test_vector_dropped_as_a_file_then_pipeline(case: dict[str, Any], dsn: str, workdir: Path) -> None:
    settings = vector_settings(dsn, workdir, case["params"])
    readings = sorted(case["readings"], key=lambda r: r["ingest_seq"])
    path = drop(settings.imports_dir, "meter_vector.csv", meter_csv(readings))

    assert ingest(settings, path).outcomes[0].status == "loaded"
    result = pipeline(settings)

    assert [tuple(r) for r in fetch(dsn, INTERVALS)] == expected_intervals(case)
    assert [tuple(r) for r in fetch(dsn, GAPS)] == expected_gaps(case)
    energy = next(s for s in result.steps if s.step == "energy")
    assert (energy.files, energy.rows) == (1, len(case["expected"]))


def _snapshot(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    tables = [
        "fact_shipment",
        "fact_package",
        "fact_energy_interval",
        "energy_gaps",
        "reading_anomalies",
        "energy_checkpoints",
        "pipeline_files",
    ]
    return {
        t: [tuple(r) for r in fetch(dsn, f"SELECT * FROM warehouse.{t} ORDER BY 1, 2, 3")] for t in tables
    }


def _day_of_readings(meter: str, day: int, start_kwh: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    kwh, rows = start_kwh, []
    for i in range(144):
        kwh += rng.uniform(0, 0.4)
        value = kwh
        if i == 70:
            value = kwh - 0.004  # a noise dip
        if i == 100 and meter == "M2":
            value = 0.0  # a one-sample dropout: an isolated outlier
        rows.append(f"{meter},2024-03-{day:02d}T{i // 6:02d}:{i % 6 * 10:02d}:00Z,{value:.3f},")
    return rows


def test_second_run_changes_nothing_and_tables_are_identical(settings: Settings, dsn: str) -> None:
    header = "meter_id,reading_at,register_kwh,power_w\n"
    drop(settings.imports_dir, "meter_day1.csv", header + "\n".join(_day_of_readings("M1", 1, 100, 1)) + "\n")
    drop(settings.imports_dir, "shipments_1.csv", "JobNumber,ShipmentNumber,ShipCity\nJ1,S1,Leeds\n")
    ingest(settings, settings.imports_dir)

    first = pipeline(settings)
    before = _snapshot(dsn)
    second = pipeline(settings)

    assert [(s.step, s.files) for s in first.steps] == [("shipments", 1), ("packages", 0), ("energy", 1)]
    assert [(s.step, s.files, s.rows) for s in second.steps] == [
        ("shipments", 0, 0),
        ("packages", 0, 0),
        ("energy", 0, 0),
    ]
    assert _snapshot(dsn) == before
    assert len(before["fact_energy_interval"]) == 48


@pytest.mark.parametrize("order", ["morning_first", "afternoon_first"])
def test_a_day_split_in_two_files_in_either_order_equals_one_file(
    pg: Any, workdir: Path, tmp_path: Path, order: str
) -> None:
    header = "meter_id,reading_at,register_kwh,power_w\n"
    rows = _day_of_readings("M1", 5, 500, 7) + _day_of_readings("M2", 5, 80, 8)
    morning = [r for r in rows if "T0" in r or "T10" in r or "T11" in r]
    afternoon = [r for r in rows if r not in morning]
    parts = [morning, afternoon] if order == "morning_first" else [afternoon, morning]

    results = []
    with pg.database(template=_template()) as whole_dsn, pg.database(template=_template()) as split_dsn:
        whole = make_settings(whole_dsn, _fresh(tmp_path / "whole"))
        drop(whole.imports_dir, "meter_all.csv", header + "\n".join(rows) + "\n")
        ingest(whole, whole.imports_dir)
        pipeline(whole)
        split = make_settings(split_dsn, _fresh(tmp_path / "split"))
        for n, part in enumerate(parts):
            ingest(split, drop(split.imports_dir, f"meter_part{n}.csv", header + "\n".join(part) + "\n"))
            pipeline(split)
        for url in (whole_dsn, split_dsn):
            results.append(([tuple(r) for r in fetch(url, INTERVALS)], [tuple(r) for r in fetch(url, GAPS)]))
    assert results[0] == results[1]
    assert len(results[0][0]) == 2 * 48
    # Readings every 10 minutes up to 23:50: the last half-hour of each meter waits for more.
    missing = [(r[0], r[1]) for r in results[0][0] if r[3] == "MISSING"]
    assert missing == [("M1", "2024-03-05T23:30:00Z"), ("M2", "2024-03-05T23:30:00Z")]


def test_incremental_days_equal_a_full_build(pg: Any, tmp_path: Path) -> None:
    header = "meter_id,reading_at,register_kwh,power_w\n"
    days = {
        d: _day_of_readings("M1", d, 1000 + 60 * d, d) + _day_of_readings("M2", d, 50 + 60 * d, 100 + d)
        for d in range(1, 6)
    }
    with pg.database(template=_template()) as full_dsn, pg.database(template=_template()) as inc_dsn:
        full = make_settings(full_dsn, _fresh(tmp_path / "full"))
        drop(
            full.imports_dir, "meter_all.csv", header + "\n".join(r for d in days.values() for r in d) + "\n"
        )
        ingest(full, full.imports_dir)
        pipeline(full)
        incremental = make_settings(inc_dsn, _fresh(tmp_path / "inc"))
        for day, rows in days.items():
            ingest(
                incremental,
                drop(incremental.imports_dir, f"meter_{day}.csv", header + "\n".join(rows) + "\n"),
            )
            pipeline(incremental)
        assert [tuple(r) for r in fetch(inc_dsn, INTERVALS)] == [tuple(r) for r in fetch(full_dsn, INTERVALS)]
        assert [tuple(r) for r in fetch(inc_dsn, GAPS)] == [tuple(r) for r in fetch(full_dsn, GAPS)]
        anomalies = "SELECT meter_id, ts, reason FROM warehouse.reading_anomalies ORDER BY 1, 2"
        assert [tuple(r) for r in fetch(inc_dsn, anomalies)] == [tuple(r) for r in fetch(full_dsn, anomalies)]
        assert len(fetch(full_dsn, anomalies)) == 5  # M2's dropout, once a day
        checkpoints = fetch(inc_dsn, "SELECT count(*) AS n FROM warehouse.energy_checkpoints")[0]["n"]
        assert checkpoints == 2 * 5


def test_shipment_changed_in_three_files_ends_as_one_row_with_the_latest_values(
    settings: Settings, dsn: str
) -> None:
    header = "JobNumber,ShipmentNumber,ShipCity,ScheduledShipQuantity\n"
    versions = ["J1,S1,Leeds,10\nJ2,S2,York,5\n", "J1,S1,Bradford,10\n", "J1,S1,Bradford,12\nJ1,S1,Hull,12\n"]
    for n, body in enumerate(versions):
        ingest(settings, drop(settings.imports_dir, f"shipments_{n}.csv", header + body))
        pipeline(settings)
    pkg_header = "PackageID,ShipmentNumber,JobNumber,TotalQtyShipped\n"
    ingest(settings, drop(settings.imports_dir, "packages_a.csv", pkg_header + "P1,S1,J1,3\nP2,S1,J1,4\n"))
    ingest(settings, drop(settings.imports_dir, "packages_b.csv", pkg_header + "P1,S1,J1,0\n"))
    pipeline(settings)

    rows = fetch(
        dsn,
        "SELECT shipment_number, ship_city, scheduled_ship_quantity, source_record_no "
        "FROM warehouse.fact_shipment ORDER BY 1",
    )
    assert [tuple(r) for r in rows] == [("S1", "Hull", 12, 2), ("S2", "York", 5, 2)]
    packages = fetch(dsn, "SELECT package_id, total_qty_shipped FROM warehouse.fact_package ORDER BY 1")
    assert [tuple(p) for p in packages] == [("P1", 0), ("P2", 4)]


def test_an_older_file_applied_later_does_not_overwrite_a_newer_version(settings: Settings, dsn: str) -> None:
    header = "JobNumber,ShipmentNumber,ShipCity\n"
    ingest(settings, drop(settings.imports_dir, "shipments_old.csv", header + "J1,S1,Leeds\n"))
    ingest(settings, drop(settings.imports_dir, "shipments_new.csv", header + "J1,S1,York\n"))
    # The newer file is applied first, as if the older one had committed late.
    newer = fetch(dsn, "SELECT max(id) AS id FROM ingest.files")[0]["id"]
    run(_apply_only(settings, newer))
    pipeline(settings)

    assert [tuple(r) for r in fetch(dsn, "SELECT ship_city FROM warehouse.fact_shipment")] == [("York",)]


async def _apply_only(settings: Settings, file_id: int) -> None:
    import asyncpg

    from app.sqlfiles import sql

    conn = await asyncpg.connect(asyncpg_dsn(settings.database_url.get_secret_value()))
    try:
        await conn.execute(sql("pipeline/shipments.sql", settings), [file_id])
        await conn.execute(
            "INSERT INTO warehouse.pipeline_files (step, file_id) VALUES ('shipments', $1)", file_id
        )
    finally:
        await conn.close()


def test_pipeline_flag_prints_a_summary_and_exits_0(dsn: str, workdir: Path) -> None:
    drop(workdir / "imports", "shipments_cli.csv", "JobNumber,ShipmentNumber\nJ1,S1\n")

    result = run_cli(dsn, workdir, "--ingest", "imports", "--pipeline")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "step       files      rows  seconds  detail" in result.stdout
    assert "shipments      1         1" in result.stdout
    assert "pipeline shipments: 1 new files, 1 rows inserted or changed" in result.stdout


def _template() -> str:
    from tests.conftest import TEMPLATE

    return TEMPLATE


def _fresh(folder: Path) -> Path:
    for name in ("imports", "exports", "logs"):
        (folder / name).mkdir(parents=True)
    return folder


def error_log(dsn: str) -> list[tuple[Any, ...]]:
    rows = fetch(dsn, "SELECT component, message, detail, file_id FROM ingest.error_log ORDER BY id")
    return [(r["component"], r["message"], json.loads(r["detail"]), r["file_id"]) for r in rows]


def test_packages_without_package_id_are_counted_in_the_summary_and_the_error_log(
    settings: Settings, dsn: str
) -> None:
    header = "PackageID,ShipmentNumber,JobNumber,TotalQtyShipped\n"
    body = "P1,S1,J1,3\n,S1,J1,4\nP2,S1,J1,1\n,S2,J2,5\nP1,S1,J1,6\n"
    loaded = ingest(settings, drop(settings.imports_dir, "packages_gaps.csv", header + body))
    assert loaded.outcomes[0].status == "loaded"
    file_id = fetch(dsn, "SELECT id FROM ingest.files")[0]["id"]

    result = pipeline(settings)

    packages = next(s for s in result.steps if s.step == "packages")
    assert (packages.files, packages.rows, packages.detail) == (
        1,
        2,
        "2 rows inserted or changed; left out: 2 without package_id, 1 superseded by a later version",
    )
    assert "packages       1         2" in result.summary()
    facts = fetch(dsn, "SELECT package_id, total_qty_shipped FROM warehouse.fact_package ORDER BY 1")
    assert [tuple(r) for r in facts] == [("P1", 6), ("P2", 1)]
    assert error_log(dsn) == [
        (
            "pipeline",
            f"packages: 3 rows of file {file_id} not applied to the warehouse: 2 without package_id, "
            "1 superseded by a later version",
            {"step": "packages", "key": "package_id", "without_key": 2, "superseded": 1, "older": 0},
            file_id,
        )
    ]
    # applied once: a second run neither counts nor logs them again
    again = next(s for s in pipeline(settings).steps if s.step == "packages")
    assert (again.files, again.rows, again.detail) == (0, 0, "nothing new")
    assert len(error_log(dsn)) == 1


def test_a_file_older_than_the_warehouse_version_is_counted_and_logged(settings: Settings, dsn: str) -> None:
    header = "JobNumber,ShipmentNumber,ShipCity\n"
    ingest(settings, drop(settings.imports_dir, "shipments_old.csv", header + "J1,S1,Leeds\nJ2,S2,Hull\n"))
    ingest(settings, drop(settings.imports_dir, "shipments_new.csv", header + "J1,S1,York\n"))
    older, newer = (r["id"] for r in fetch(dsn, "SELECT id FROM ingest.files ORDER BY id"))
    run(_apply_only(settings, newer))  # as if the older file had committed late

    shipments = next(s for s in pipeline(settings).steps if s.step == "shipments")

    assert (shipments.files, shipments.rows, shipments.detail) == (
        1,
        1,
        "1 rows inserted or changed; left out: 1 older than the warehouse's version",
    )
    assert error_log(dsn) == [
        (
            "pipeline",
            f"shipments: 1 rows of file {older} not applied to the warehouse: 1 older than the "
            "warehouse's version",
            {"step": "shipments", "key": "shipment_number", "without_key": 0, "superseded": 0, "older": 1},
            older,
        )
    ]
