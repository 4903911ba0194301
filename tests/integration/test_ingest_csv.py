"""Loading CSV drops into staging: types, lineage, rejects, duplicates, the ledger, the moves."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from app.settings import Settings
from tests.integration.helpers import METER_HEADER, drop, ingest, meter_rows
from tests.pg import fetch, fetchval


def test_clean_meter_file_loads_typed_rows_and_moves_to_processed(settings: Settings, dsn: str) -> None:
    content = METER_HEADER + meter_rows(3)
    path = drop(settings.imports_dir, "meter_readings_1.csv", content)

    result = ingest(settings, path)

    assert [o.status for o in result.outcomes] == ["loaded"]
    rows = fetch(dsn, "SELECT * FROM staging.meter_readings ORDER BY _record_no")
    assert [
        (r["_record_no"], r["meter_id"], r["reading_at"], r["register_kwh"], r["power_w"]) for r in rows
    ] == [
        (1, "M1", datetime(2024, 1, 15, 0, 0, tzinfo=UTC), Decimal("100.000"), Decimal("0")),
        (2, "M1", datetime(2024, 1, 15, 0, 10, tzinfo=UTC), Decimal("100.500"), Decimal("10")),
        (3, "M1", datetime(2024, 1, 15, 0, 20, tzinfo=UTC), Decimal("101.000"), Decimal("20")),
    ]
    file = fetch(dsn, "SELECT * FROM ingest.files")[0]
    assert rows[0]["_file_id"] == file["id"]
    assert (file["name"], file["dataset"], file["status"], file["rows_loaded"], file["rows_rejected"]) == (
        "meter_readings_1.csv",
        "meter_readings",
        "loaded",
        3,
        0,
    )
    assert file["size_bytes"] == len(content)
    assert file["sha256"] == hashlib.sha256(content.encode()).hexdigest()
    assert not path.exists()
    moved = Path(file["moved_to"])
    assert moved.parent.parent == settings.imports_dir / "processed"
    assert moved.name == "meter_readings_1.csv" and moved.exists()


def test_header_matching_ignores_case_spaces_underscores_and_order(settings: Settings, dsn: str) -> None:
    content = "Power W, Register_KWh ,Reading At,METER ID\n5,1.25,2024-01-15 00:00:00+01,A\n"
    ingest(settings, drop(settings.imports_dir, "meter_x.csv", content))

    row = fetch(dsn, "SELECT meter_id, reading_at, register_kwh, power_w FROM staging.meter_readings")[0]
    assert tuple(row) == (
        "A",
        datetime(2024, 1, 14, 23, 0, tzinfo=UTC),
        Decimal("1.25"),
        Decimal("5"),
    )


def test_bom_crlf_and_quoted_newlines(settings: Settings, dsn: str) -> None:
    content = (
        "\ufeffJobNumber,ShipmentNumber,Instructions,IsPartial\r\n"
        'J1,S1,"ring twice\r\nthen wait",1\r\n'
        "J2,S2,,no\r\n"
    ).encode()
    ingest(settings, drop(settings.imports_dir, "shipments_crlf.csv", content))

    rows = fetch(
        dsn, "SELECT _record_no, job_number, instructions, is_partial FROM staging.shipments ORDER BY 1"
    )
    assert [tuple(r) for r in rows] == [(1, "J1", "ring twice\r\nthen wait", True), (2, "J2", None, False)]


def test_bad_rows_are_rejected_with_record_line_column_and_reason(settings: Settings, dsn: str) -> None:
    settings.max_reject_ratio = 0.9
    content = (
        METER_HEADER
        + "M1,2024-01-15T00:00:00Z,1.5,\n"  # record 1, line 2: good
        + "M1,not-a-time,2,\n"  # record 2, line 3: bad timestamp
        + "M1,2024-01-15T00:20:00Z,12a,\n"  # record 3, line 4: bad number
        + "M1,2024-01-15T00:30:00Z\n"  # record 4, line 5: wrong column count
        + ",2024-01-15T00:40:00Z,3,\n"  # record 5, line 6: missing required value
        + '"M\n2",2024-01-15T00:50:00Z,4,\n'  # record 6, lines 7-8: good, quoted newline
        + "M1,2024-01-15T01:00:00Z,,\n"  # record 7, line 9: neither register nor power
        + "M1,2024-01-15T01:10:00Z,5,\n"  # record 8, line 10: good
    )
    result = ingest(settings, drop(settings.imports_dir, "meter_bad.csv", content))

    assert [(o.status, o.rows_loaded, o.rows_rejected) for o in result.outcomes] == [
        ("loaded_with_rejects", 3, 5)
    ]
    rejects = fetch(
        dsn,
        "SELECT record_no, line_no, column_name, value, reason FROM ingest.rejected_rows ORDER BY record_no",
    )
    assert [tuple(r) for r in rejects] == [
        (2, 3, "reading_at", "not-a-time", "not a timestamp (ISO 8601, e.g. 2024-01-15T00:30:00Z)"),
        (3, 4, "register_kwh", "12a", "not a number"),
        (4, 5, None, "M1,2024-01-15T00:30:00Z", "has 2 fields; the header has 4"),
        (5, 6, "meter_id", None, "a required value is missing"),
        (7, 9, None, None, "needs a value in register_kwh or power_w"),
    ]
    loaded = fetch(dsn, "SELECT _record_no, meter_id FROM staging.meter_readings ORDER BY 1")
    assert [tuple(r) for r in loaded] == [(1, "M1"), (6, "M\n2"), (8, "M1")]
    assert fetchval(dsn, "SELECT status FROM ingest.files") == "loaded_with_rejects"


def test_too_many_bad_rows_fail_the_file_with_error_json_and_no_rows(settings: Settings, dsn: str) -> None:
    content = METER_HEADER + "M1,2024-01-15T00:00:00Z,1,\n" + "M1,bad,1,\n" * 2
    path = drop(settings.imports_dir, "meter_mostly_bad.csv", content)

    result = ingest(settings, path)

    assert result.outcomes[0].status == "failed"
    assert fetchval(dsn, "SELECT count(*) FROM staging.meter_readings") == 0
    assert fetchval(dsn, "SELECT count(*) FROM ingest.rejected_rows") == 0
    file = fetch(dsn, "SELECT status, error, moved_to FROM ingest.files")[0]
    assert file["status"] == "failed"
    assert file["error"].startswith(
        "2 of 3 rows are bad (66.7%, above the 10.0% allowed). First problems: "
        "record 2 (line 3), column reading_at: not a timestamp"
    )
    failed = settings.imports_dir / "failed" / "meter_mostly_bad.csv"
    assert Path(file["moved_to"]) == failed and failed.read_bytes() == content.encode()
    error = json.loads((settings.imports_dir / "failed" / "meter_mostly_bad.csv.error.json").read_text())
    assert error["error"] == "TooManyRejects" and error["file"] == "meter_mostly_bad.csv"
    assert "MAX_REJECT_RATIO" in error["hint"]
    assert fetchval(dsn, "SELECT component FROM ingest.error_log") == "ingest"


def test_same_bytes_under_another_name_is_a_duplicate(settings: Settings, dsn: str) -> None:
    content = METER_HEADER + meter_rows(5)
    ingest(settings, drop(settings.imports_dir, "meter_a.csv", content))
    result = ingest(settings, drop(settings.imports_dir, "meter_b.csv", content))

    assert result.outcomes[0].status == "duplicate"
    assert fetchval(dsn, "SELECT count(*) FROM staging.meter_readings") == 5
    files = fetch(dsn, "SELECT id, name, status, rows_loaded, duplicate_of FROM ingest.files ORDER BY id")
    assert [tuple(f)[1:] for f in files] == [
        ("meter_a.csv", "loaded", 5, None),
        ("meter_b.csv", "duplicate", 0, files[0]["id"]),
    ]
    assert len(list((settings.imports_dir / "processed").glob("*/meter_b.csv"))) == 1


def test_changed_content_under_the_same_name_is_new(settings: Settings, dsn: str) -> None:
    ingest(settings, drop(settings.imports_dir, "meter_a.csv", METER_HEADER + meter_rows(2)))
    ingest(settings, drop(settings.imports_dir, "meter_a.csv", METER_HEADER + meter_rows(3, meter="M2")))

    assert fetchval(dsn, "SELECT count(*) FROM staging.meter_readings") == 5
    moved = sorted(p.name for p in (settings.imports_dir / "processed").glob("*/*"))
    assert len(moved) == 2 and "meter_a.csv" in moved


def test_missing_required_column_lists_found_and_expected(settings: Settings, dsn: str) -> None:
    result = ingest(settings, drop(settings.imports_dir, "meter_nots.csv", "meter_id,register_kwh\nM1,2\n"))

    assert result.outcomes[0].status == "failed"
    assert fetchval(dsn, "SELECT error FROM ingest.files") == (
        "required column(s) missing for dataset meter_readings: reading_at. Found: meter_id, register_kwh. "
        "Expected: meter_id, reading_at, register_kwh, power_w. Header names ignore case, spaces and "
        "underscores; add aliases in datasets.toml"
    )


def test_dataset_chosen_by_header_when_the_name_does_not_match(settings: Settings, dsn: str) -> None:
    ingest(
        settings,
        drop(settings.imports_dir, "export 2024.csv", "PackageID,JobNumber,TotalQtyShipped\nP1,J1,3\n"),
    )

    assert fetchval(dsn, "SELECT dataset FROM ingest.files") == "packages"
    assert tuple(fetch(dsn, "SELECT package_id, job_number, total_qty_shipped FROM staging.packages")[0]) == (
        "P1",
        "J1",
        3,
    )


def test_no_matching_dataset_fails_listing_the_datasets(settings: Settings, dsn: str) -> None:
    ingest(settings, drop(settings.imports_dir, "weather.csv", "city,temp\nLeeds,4\n"))

    assert fetchval(dsn, "SELECT error FROM ingest.files") == (
        "no dataset matches this file's name or header. Name it after a dataset pattern or declare one in "
        "datasets.toml. Datasets: shipments (shipment*); packages (package*); meter_readings (meter*); "
        "sensor_readings (sensor*, iot*)"
    )
