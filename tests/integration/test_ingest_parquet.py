"""Parquet files into staging: columns by name, types kept exactly, rows that break the rules
rejected with their row number, the same ledger, duplicates and failures as every other format."""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.settings import Settings
from tests.integration.helpers import drop, ingest
from tests.integration.test_hostile_input import assert_failed
from tests.memory import run_cli_measured
from tests.pg import fetch, fetchval

BERLIN = ZoneInfo("Europe/Berlin")


def parquet_bytes(table: pa.Table, **options: object) -> bytes:
    out = io.BytesIO()
    pq.write_table(table, out, **options)
    return out.getvalue()


def meter_table() -> pa.Table:
    return pa.table(
        {
            "meter_id": ["M1", "M1", "M2", "M3"],
            "reading_at": pa.array(
                [
                    datetime(2024, 1, 15, 1, 0, tzinfo=BERLIN),
                    datetime(2024, 7, 15, 1, 0, 0, 123456, BERLIN),
                    None,
                    None,
                ],
                pa.timestamp("us", tz="Europe/Berlin"),
            ),
            "register_kwh": pa.array(
                [Decimal("1234.5678"), Decimal("0.0001"), None, Decimal("-1.0000")], pa.decimal128(12, 4)
            ),
            "power_w": [0.1, 42.0, 5.5, None],
        }
    )


def test_types_are_kept_exactly(settings: Settings, dsn: str) -> None:
    table = meter_table().slice(0, 2)
    result = ingest(settings, drop(settings.imports_dir, "meter_export.parquet", parquet_bytes(table)))

    assert [(o.status, o.dataset, o.rows_loaded) for o in result.outcomes] == [
        ("loaded", "meter_readings", 2)
    ]
    rows = fetch(
        dsn,
        "SELECT _record_no, meter_id, reading_at, register_kwh, power_w FROM staging.meter_readings "
        "ORDER BY _record_no",
    )
    assert [tuple(r) for r in rows] == [
        (1, "M1", datetime(2024, 1, 15, 0, 0, tzinfo=UTC), Decimal("1234.5678"), Decimal("0.1")),
        (2, "M1", datetime(2024, 7, 14, 23, 0, 0, 123456, tzinfo=UTC), Decimal("0.0001"), Decimal("42")),
    ]


def test_naive_timestamps_are_read_in_the_source_timezone(settings: Settings, dsn: str) -> None:
    settings.source_timezone = "Europe/Berlin"
    stamps = [datetime(2024, 1, 15, 1, 0), *[datetime(2024, 2, 1, h) for h in range(12)]]
    stamps.append(datetime(2024, 3, 31, 2, 30))  # clocks went forward: no such local time
    table = pa.table(
        {
            "meter_id": ["M1"] * len(stamps),
            "reading_at": pa.array(stamps, pa.timestamp("ms")),
            "power_w": pa.array(range(len(stamps)), pa.int32()),
        }
    )

    result = ingest(settings, drop(settings.imports_dir, "meter_local.parquet", parquet_bytes(table)))

    assert [(o.status, o.rows_loaded, o.rows_rejected) for o in result.outcomes] == [
        ("loaded_with_rejects", 13, 1)
    ]
    first = fetch(dsn, "SELECT reading_at FROM staging.meter_readings WHERE _record_no = 1")[0][0]
    assert first == datetime(2024, 1, 15, 0, 0, tzinfo=UTC)
    rejects = fetch(dsn, "SELECT record_no, line_no, column_name, value, reason FROM ingest.rejected_rows")
    assert [tuple(r) for r in rejects] == [
        (
            14,
            None,
            "reading_at",
            "2024-03-31T02:30:00",
            "local time 2024-03-31 02:30 does not exist in Europe/Berlin (clocks went forward); send it "
            "with a UTC offset",
        )
    ]


def test_shipments_with_leading_zeros_booleans_dates_nulls_and_extra_fields(
    settings: Settings, dsn: str
) -> None:
    table = pa.table(
        {
            "JobNumber": ["J1", "J2"],
            "ShipmentNumber": ["S1", "S2"],
            "ShipZip": ["01234", ""],
            "IsPartial": [True, None],
            "ScheduledShipDate": pa.array([date(2024, 6, 3), None], pa.date32()),
            "ScheduledShipQuantity": pa.array([42, None], pa.int16()),
            "Instructions": ["Ring twice,\nthen wait", None],
            "Warehouse": ["W1", None],
        }
    )

    result = ingest(settings, drop(settings.imports_dir, "shipments_dw.parquet", parquet_bytes(table)))

    assert [(o.status, o.rows_loaded) for o in result.outcomes] == [("loaded", 2)]
    rows = fetch(
        dsn,
        "SELECT job_number, ship_zip, is_partial, scheduled_ship_date, scheduled_ship_quantity, "
        "instructions, _extra FROM staging.shipments ORDER BY _record_no",
    )
    assert [tuple(r) for r in rows] == [
        (
            "J1",
            "01234",
            True,
            date(2024, 6, 3),
            42,
            "Ring twice,\nthen wait",
            json.dumps({"Warehouse": "W1"}),
        ),
        ("J2", None, None, None, None, None, json.dumps({"Warehouse": None})),
    ]
    warnings = fetchval(dsn, "SELECT warnings FROM ingest.files")
    assert json.loads(warnings) == [{"unknown_fields": {"Warehouse": 2}}]


def test_bad_rows_are_rejected_with_their_row_number_across_batches(settings: Settings, dsn: str) -> None:
    n = 50_000
    partial = ["1"] * n
    partial[30_123] = "maybe"  # in the second batch of 20,000
    jobs = [f"J{i}" for i in range(n)]
    shipments: list[str | None] = [f"S{i}" for i in range(n)]
    shipments[45_000] = "  "  # required, and blank
    table = pa.table({"JobNumber": jobs, "ShipmentNumber": shipments, "IsPartial": partial})

    result = ingest(
        settings,
        drop(settings.imports_dir, "shipments_big.parquet", parquet_bytes(table, row_group_size=7_000)),
    )

    assert [(o.status, o.rows_loaded, o.rows_rejected) for o in result.outcomes] == [
        ("loaded_with_rejects", n - 2, 2)
    ]
    rejects = fetch(dsn, "SELECT record_no, line_no, column_name, value, reason FROM ingest.rejected_rows")
    assert sorted(tuple(r) for r in rejects) == [
        (30_124, None, "is_partial", "maybe", "not a boolean (1/0, true/false, yes/no, y/n)"),
        (45_001, None, "shipment_number", "  ", "a required value is missing"),
    ]
    assert fetchval(dsn, "SELECT max(_record_no) FROM staging.shipments") == n
    assert fetchval(dsn, "SELECT count(DISTINCT _record_no) FROM staging.shipments") == n - 2


def test_a_parquet_file_is_recognised_by_its_columns(settings: Settings, dsn: str) -> None:
    data = parquet_bytes(meter_table().slice(0, 1))

    result = ingest(settings, drop(settings.imports_dir, "part-00000.parquet", data))

    assert [(o.status, o.dataset) for o in result.outcomes] == [("loaded", "meter_readings")]


def test_the_same_parquet_file_again_is_a_duplicate(settings: Settings, dsn: str) -> None:
    data = parquet_bytes(meter_table().slice(0, 2))
    ingest(settings, drop(settings.imports_dir, "meter_a.parquet", data))

    again = ingest(settings, drop(settings.imports_dir, "meter_b.parquet", data))

    assert [(o.status, o.dataset) for o in again.outcomes] == [("duplicate", "meter_readings")]
    assert fetchval(dsn, "SELECT count(*) FROM staging.meter_readings") == 2


def test_a_file_that_is_not_parquet_fails_saying_so(settings: Settings, dsn: str) -> None:
    content = b"meter_id,reading_at,power_w\nM1,2024-01-01T00:00:00Z,1\n"

    ingest(settings, drop(settings.imports_dir, "meter_fake.parquet", content))

    assert_failed(
        settings,
        dsn,
        "meter_fake.parquet",
        content,
        dataset="meter_readings",
        error_class="MalformedFile",
        error="the file is not Parquet (a Parquet file starts and ends with PAR1; this one starts with "
        "b'mete' and ends with b'Z,1\\n'). Write the file again (it may be cut off), or give it the "
        "extension of what it is",
    )


def test_a_truncated_parquet_file_fails_as_not_parquet(settings: Settings, dsn: str) -> None:
    whole = parquet_bytes(meter_table())
    content = whole[: len(whole) - 100]

    ingest(settings, drop(settings.imports_dir, "meter_cut.parquet", content))

    assert_failed(
        settings,
        dsn,
        "meter_cut.parquet",
        content,
        dataset="meter_readings",
        error_class="MalformedFile",
        error=f"the file is not Parquet (a Parquet file starts and ends with PAR1; this one starts with "
        f"b'PAR1' and ends with {content[-4:]!r}). Write the file again (it may be cut off), or give it "
        "the extension of what it is",
    )


def test_a_parquet_file_whose_pages_are_damaged_fails(settings: Settings, dsn: str) -> None:
    whole = bytearray(parquet_bytes(meter_table(), compression="snappy"))
    whole[8:40] = bytes(32)  # inside the first column chunk's data
    content = bytes(whole)

    ingest(settings, drop(settings.imports_dir, "meter_bad.parquet", content))

    assert_failed(
        settings,
        dsn,
        "meter_bad.parquet",
        content,
        dataset="meter_readings",
        error_class="MalformedFile",
        error="the Parquet file is damaged after row 0 (Couldn't deserialize thrift: TProtocolException: "
        "Invalid data). Write the file again (it may be cut off), or give it the extension of what it is",
    )


def meter_parquet(n: int) -> bytes:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    table = pa.table(
        {
            "meter_id": pa.array([f"M{i % 200:03d}" for i in range(n)]),
            "reading_at": pa.array(
                [start + timedelta(minutes=10 * (i // 200)) for i in range(n)], pa.timestamp("us", "UTC")
            ),
            "register_kwh": pa.array([Decimal(i) / 1000 for i in range(n)], pa.decimal128(12, 3)),
            "power_w": pa.array([float(i % 5000) for i in range(n)]),
        }
    )
    return parquet_bytes(table)  # pyarrow's default: one row group of up to 1Mi rows


@pytest.mark.slow
def test_memory_is_bounded_by_the_batch_not_the_file(dsn: str, workdir: Path) -> None:
    peaks = {}
    for n in (100_000, 1_000_000):
        drop(workdir / "imports", f"meter_{n}.parquet", meter_parquet(n))

        run = run_cli_measured(dsn, workdir, "--ingest", f"imports/meter_{n}.parquet", timeout=600)

        assert run.returncode == 0, run.stderr[-2000:]
        peaks[n] = run.peak_mb
    print(f"Parquet peak: {peaks[100_000]:.0f} MB at 100k rows, {peaks[1_000_000]:.0f} MB at 1M rows")
    files = fetch(dsn, "SELECT name, status, rows_loaded FROM ingest.files ORDER BY id")
    assert [tuple(f) for f in files] == [
        ("meter_100000.parquet", "loaded", 100_000),
        ("meter_1000000.parquet", "loaded", 1_000_000),
    ]
    total = fetchval(dsn, "SELECT sum(register_kwh) FROM staging.meter_readings")
    assert total == (Decimal(100_000 * 99_999 // 2) + Decimal(1_000_000 * 999_999 // 2)) / 1000
    # Ten times the rows, one row group of 1Mi rows instead of 100k: the same memory, give or take
    # allocator noise (pyarrow and its imports alone take about 63 MB; see the README's limits).
    assert peaks[1_000_000] - peaks[100_000] <= 15
    assert max(peaks.values()) <= 150  # DESIGN §10: Parquet within the 150 MB of any file


def test_an_empty_required_string_is_rejected(settings: Settings, dsn: str) -> None:
    shipments = [f"S{i}" for i in range(30)]
    shipments[7] = ""  # no space anywhere in the column: told from the offsets alone
    table = pa.table({"JobNumber": [f"J{i}" for i in range(30)], "ShipmentNumber": shipments})

    result = ingest(settings, drop(settings.imports_dir, "shipments_gap.parquet", parquet_bytes(table)))

    assert [(o.status, o.rows_loaded, o.rows_rejected) for o in result.outcomes] == [
        ("loaded_with_rejects", 29, 1)
    ]
    rejects = fetch(dsn, "SELECT record_no, column_name, value, reason FROM ingest.rejected_rows")
    assert [tuple(r) for r in rejects] == [(8, "shipment_number", None, "a required value is missing")]


def test_timestamps_in_a_fixed_offset_source_zone(settings: Settings, dsn: str) -> None:
    settings.source_timezone = "Etc/GMT-2"  # UTC+2 all year
    stamps = [datetime(2024, 1, 15, 2, m) for m in range(11)]
    table = pa.table(
        {
            "meter_id": ["M1"] * 11 + ["M2"],
            "reading_at": pa.array([*stamps, None], pa.timestamp("ms")),
            "power_w": list(range(12)),
        }
    )
    aware = pa.table(
        {
            "meter_id": ["M3"],
            "reading_at": pa.array(
                [datetime(2024, 1, 15, 1, 0, tzinfo=BERLIN)], pa.timestamp("us", "Europe/Berlin")
            ),
            "power_w": [3],
        }
    )

    ingest(settings, drop(settings.imports_dir, "meter_naive.parquet", parquet_bytes(table)))
    ingest(settings, drop(settings.imports_dir, "meter_aware.parquet", parquet_bytes(aware)))

    rows = fetch(dsn, "SELECT meter_id, min(reading_at) FROM staging.meter_readings GROUP BY 1 ORDER BY 1")
    assert [tuple(r) for r in rows] == [
        ("M1", datetime(2024, 1, 15, 0, 0, tzinfo=UTC)),
        ("M3", datetime(2024, 1, 15, 0, 0, tzinfo=UTC)),
    ]
    rejects = fetch(dsn, "SELECT record_no, column_name, reason FROM ingest.rejected_rows")
    assert [tuple(r) for r in rejects] == [(12, "reading_at", "a required value is missing")]
