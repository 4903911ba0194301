"""JSON, NDJSON and gzip drops: the same rows as CSV, nesting, child rows, meaning and drift."""

from __future__ import annotations

import gzip
import json
from decimal import Decimal
from pathlib import Path

import pytest

from app.datasets import load_registry
from app.settings import Settings
from tests.conftest import run_cli
from tests.integration.helpers import drop, ingest
from tests.pg import fetch, fetchval

SHIPMENTS = [
    {
        "JobNumber": "J100",
        "ShipmentNumber": "S1",
        "ShipName": "Example Co",
        "ShipCity": "Leeds",
        "ShipVia": "10005",
        "IsPartial": True,
        "Shipped": False,
        "ScheduledShipDate": "2024-06-03",
        "ScheduledShipQuantity": 250,
        "Instructions": "Dock 2\nring twice",
    },
    {
        "JobNumber": "J100",
        "ShipmentNumber": "S2",
        "ShipName": 'The "Quoted" Ltd',
        "ShipVia": "20001",
        "IsPartial": False,
        "Shipped": True,
        "ScheduledShipDate": "2024-06-04",
        "ScheduledShipQuantity": 0,
    },
]
CSV = (
    "JobNumber,ShipmentNumber,ShipName,ShipCity,ShipVia,IsPartial,Shipped,ScheduledShipDate,"
    "ScheduledShipQuantity,Instructions\n"
    'J100,S1,Example Co,Leeds,10005,true,false,2024-06-03,250,"Dock 2\nring twice"\n'
    'J100,S2,"The ""Quoted"" Ltd",,20001,false,true,2024-06-04,0,\n'
)


def _ndjson(records: list[dict[str, object]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


FORMATS = {
    "shipments.csv": CSV.encode(),
    "shipments_array.json": json.dumps(SHIPMENTS).encode(),
    "shipments_wrapped.json": json.dumps({"meta": {"page": 1}, "data": SHIPMENTS, "links": {}}).encode(),
    "shipments.ndjson": _ndjson(SHIPMENTS).encode(),
    "shipments.jsonl.gz": gzip.compress(_ndjson(SHIPMENTS).encode()),
}


def _staging_rows(dsn: str, table: str, file_id: int) -> list[tuple[object, ...]]:
    rows = fetch(dsn, f"SELECT * FROM staging.{table} WHERE _file_id = $1 ORDER BY _record_no", file_id)
    return [tuple(v for k, v in r.items() if k != "_file_id") for r in rows]


def test_csv_json_wrapped_ndjson_and_gzip_give_identical_rows(settings: Settings, dsn: str) -> None:
    paths = [drop(settings.imports_dir, name, content) for name, content in FORMATS.items()]

    result = ingest(settings, *paths)

    assert [(o.name, o.status, o.rows_loaded) for o in result.outcomes] == [
        (name, "loaded", 2) for name in FORMATS
    ]
    ids = [o.file_id or 0 for o in result.outcomes]
    expected = _staging_rows(dsn, "shipments", ids[0])
    assert expected[0][:5] == (1, "J100", "S1", "Example Co", None)
    assert len(expected) == 2
    for file_id in ids[1:]:
        assert _staging_rows(dsn, "shipments", file_id) == expected


@pytest.mark.parametrize("wrapper", ["data", "records", "items", "results"])
def test_every_wrapper_key_and_a_single_object(settings: Settings, dsn: str, wrapper: str) -> None:
    wrapped = drop(settings.imports_dir, "shipments_w.json", json.dumps({wrapper: SHIPMENTS}))
    single = drop(settings.imports_dir, "shipments_one.json", json.dumps(SHIPMENTS[0]))

    result = ingest(settings, wrapped, single)

    assert [(o.status, o.rows_loaded) for o in result.outcomes] == [("loaded", 2), ("loaded", 1)]
    assert fetchval(dsn, "SELECT count(*) FROM staging.shipments WHERE shipment_number = 'S1'") == 2


def test_nested_object_and_packages_array_with_one_bad_package(settings: Settings, dsn: str) -> None:
    (settings.datasets_file).write_text(
        '[datasets.shipments.columns.ship_city]\naliases = ["ShipTo__City"]\n'
        '[datasets.shipments.columns.ship_zip]\naliases = ["ShipTo__Zip"]\n'
    )
    record = {
        "JobNumber": "J7",
        "ShipmentNumber": "S70",
        "ShipTo": {"City": "York", "Zip": "YO1 7HH"},
        "Packages": [
            {"PackageID": "P1", "TotalQtyShipped": 5, "Description": "box"},
            {"PackageID": "P2", "TotalQtyShipped": "five", "Description": "crate"},
            {"PackageID": "P3", "TotalQtyShipped": 0, "JobNumber": "J7-B"},
        ],
    }
    other = {"JobNumber": "J8", "ShipmentNumber": "S80", "Packages": []}
    path = drop(settings.imports_dir, "shipments_nested.json", json.dumps([record, other]))
    settings.max_reject_ratio = 0.5

    result = ingest(settings, path, registry=load_registry(settings))

    assert [(o.status, o.rows_loaded, o.rows_rejected) for o in result.outcomes] == [
        ("loaded_with_rejects", 4, 1)
    ]
    shipment = fetch(dsn, "SELECT * FROM staging.shipments ORDER BY _record_no")
    assert [
        (s["_record_no"], s["shipment_number"], s["ship_city"], s["ship_zip"], s["_extra"]) for s in shipment
    ] == [
        (1, "S70", "York", "YO1 7HH", None),
        (2, "S80", None, None, None),
    ]
    packages = fetch(dsn, "SELECT * FROM staging.packages ORDER BY package_id")
    assert [
        (p["_record_no"], p["package_id"], p["shipment_number"], p["job_number"], p["total_qty_shipped"])
        for p in packages
    ] == [(1, "P1", "S70", "J7", 5), (1, "P3", "S70", "J7-B", 0)]
    reject = fetch(dsn, "SELECT * FROM ingest.rejected_rows")[0]
    assert (
        reject["dataset"],
        reject["record_no"],
        reject["column_name"],
        reject["value"],
        reject["reason"],
    ) == (
        "packages",
        1,
        "total_qty_shipped",
        "five",
        "not a whole number",
    )
    assert json.loads(reject["raw"]) == {
        "PackageID": "P2",
        "TotalQtyShipped": "five",
        "Description": "crate",
        "JobNumber": "J7",
        "ShipmentNumber": "S70",
    }


def test_false_zero_empty_string_and_small_numbers_survive_exactly(settings: Settings, dsn: str) -> None:
    text = (
        '[{"JobNumber": "J1", "ShipmentNumber": "S1", "IsPartial": false, "ScheduledShipQuantity": 0,'
        ' "Instructions": "", "ShipName": null},'
        ' {"meter": "ignored"}]'
    )
    drop(
        settings.imports_dir,
        "meter_precise.json",
        '[{"meter_id": "M", "reading_at": "2024-01-01T00:00:00Z",'
        ' "register_kwh": 1e-7, "power_w": 0.12345678901234567890123456789}]',
    )
    drop(settings.imports_dir, "shipments_values.json", text)
    settings.max_reject_ratio = 0.5

    ingest(settings, settings.imports_dir)

    row = fetch(
        dsn, "SELECT is_partial, scheduled_ship_quantity, instructions, ship_name FROM staging.shipments"
    )
    assert [tuple(r) for r in row] == [(False, 0, "", None)]
    meter = fetch(dsn, "SELECT register_kwh, power_w FROM staging.meter_readings")[0]
    assert meter["register_kwh"] == Decimal("1E-7")
    assert meter["power_w"] == Decimal("0.12345678901234567890123456789")


def test_unknown_fields_go_to_extra_and_status_warns(settings: Settings, dsn: str, workdir: Path) -> None:
    records = [
        {
            "meter_id": "M1",
            "reading_at": "2024-01-01T00:00:00Z",
            "register_kwh": 1,
            "firmware": "2.1",
            "rssi": -70,
        },
        {"meter_id": "M1", "reading_at": "2024-01-01T00:10:00Z", "register_kwh": 2, "firmware": "2.1"},
    ]
    drop(settings.imports_dir, "meter_drift.ndjson", _ndjson(records))

    result = run_cli(dsn, workdir, "--ingest", "imports", "--status")

    assert result.returncode == 0, result.stdout + result.stderr
    extras = fetch(dsn, "SELECT _extra FROM staging.meter_readings ORDER BY _record_no")
    assert [json.loads(e["_extra"]) for e in extras] == [
        {"firmware": "2.1", "rssi": -70},
        {"firmware": "2.1"},
    ]
    warnings = json.loads(fetchval(dsn, "SELECT warnings::text FROM ingest.files"))
    assert warnings == [{"dataset": "meter_readings", "unknown_fields": {"firmware": 2, "rssi": 1}}]
    assert "unknown fields kept in _extra: firmware (2 rows), rssi (1 row)" in result.stdout


def test_ndjson_bad_line_is_rejected_with_its_line_and_raw_text(settings: Settings, dsn: str) -> None:
    good = '{"meter_id": "M1", "reading_at": "2024-01-01T00:00:00Z", "power_w": 5}\n'
    content = good * 9 + "\n" + '{"meter_id": "M1", "reading_at": \n' + good
    settings.max_reject_ratio = 0.5
    ingest(settings, drop(settings.imports_dir, "meter_lines.ndjson", content))

    reject = fetch(dsn, "SELECT record_no, line_no, reason, raw FROM ingest.rejected_rows")
    assert [tuple(r) for r in reject] == [
        (10, 11, "not valid JSON: Expecting value at column 34", '{"meter_id": "M1", "reading_at": ')
    ]
    assert fetchval(dsn, "SELECT max(_record_no) FROM staging.meter_readings") == 11


def test_truncated_json_fails_with_the_byte_offset(settings: Settings, dsn: str) -> None:
    content = json.dumps(SHIPMENTS)[:-30]
    ingest(settings, drop(settings.imports_dir, "shipments_cut.json", content))

    file = fetch(dsn, "SELECT status, error FROM ingest.files")[0]
    assert file["status"] == "failed"
    assert file["error"] == (
        f"the JSON is not valid at byte {len(content)}: parse error: premature EOF. "
        "Check that the file is complete (not cut off) and is JSON; a CSV file must be named .csv"
    )
    assert fetchval(dsn, "SELECT count(*) FROM staging.shipments") == 0


def test_invalid_json_in_the_middle_names_the_byte(settings: Settings, dsn: str) -> None:
    content = '[{"JobNumber": "J1", "ShipmentNumber": "S1"},\n {"JobNumber" "J2"}]'
    ingest(settings, drop(settings.imports_dir, "shipments_broken.json", content))

    error = fetchval(dsn, "SELECT error FROM ingest.files")
    offset = content.index('"J2"') + len('"J2"')  # yajl points just past the offending token
    assert error.startswith(
        f"the JSON is not valid at byte {offset}: "
        "parse error: object key and value must be separated by a colon"
    )


def test_a_json_file_that_is_really_csv_says_so(settings: Settings, dsn: str) -> None:
    ingest(settings, drop(settings.imports_dir, "shipments_export.json", CSV))

    assert fetchval(dsn, "SELECT error FROM ingest.files") == (
        "the file is not JSON: it starts with 'JobNumber,ShipmentNumber,ShipName,ShipCi'. "
        "A CSV file must be named .csv; JSON starts with [ or {"
    )
    assert (settings.imports_dir / "failed" / "shipments_export.json").read_text() == CSV


def test_json_dataset_recognised_by_its_fields(settings: Settings, dsn: str) -> None:
    records = [{"timestamp": "2024-01-01T00:00:00Z", "deviceName": "D1", "channel1": 1.5}]
    ingest(settings, drop(settings.imports_dir, "gateway-dump.json", json.dumps(records)))

    assert fetchval(dsn, "SELECT dataset FROM ingest.files") == "sensor_readings"
    assert fetchval(dsn, "SELECT channel1_a FROM staging.sensor_readings") == Decimal("1.5")
