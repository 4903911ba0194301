"""Timestamps without an offset are read in SOURCE_TIMEZONE; a local time that does not exist or
happens twice is a rejected row, never a guess. Datasets may declare their own date formats."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from app.datasets import load_registry
from app.migrate import migrate
from app.settings import Settings
from tests.conftest import make_settings
from tests.integration.helpers import METER_HEADER, drop, ingest
from tests.pg import fetch, fetchval

GAP = (
    "local time 2024-03-31 01:30 does not exist in Europe/London (clocks went forward); "
    "send it with a UTC offset"
)
OVERLAP = (
    "local time 2024-10-27 01:30 happens twice in Europe/London (clocks went back); send it with a UTC offset"
)


def london(dsn: str, settings: Settings) -> Settings:
    return make_settings(
        dsn, settings.imports_dir.parent, source_timezone="Europe/London", max_reject_ratio=0.5
    )


def readings(dsn: str) -> list[tuple[object, ...]]:
    rows = fetch(dsn, "SELECT _record_no, reading_at, register_kwh FROM staging.meter_readings ORDER BY 1")
    return [tuple(r) for r in rows]


def rejects(dsn: str) -> list[tuple[object, ...]]:
    rows = fetch(
        dsn,
        "SELECT record_no, line_no, column_name, value, reason FROM ingest.rejected_rows ORDER BY record_no",
    )
    return [tuple(r) for r in rows]


def test_naive_times_are_read_in_the_source_zone_and_offsets_pass_unchanged(
    settings: Settings, dsn: str
) -> None:
    settings = london(dsn, settings)
    content = METER_HEADER + (
        "M1,2024-01-15 12:00,1,\n"  # GMT
        "M1,2024-07-01T12:00:00,2,\n"  # BST
        "M1,2024-03-31 02:30,3,\n"  # just after the spring gap: BST
        "M1,2024-10-27 00:30,4,\n"  # just before the autumn overlap: BST
        "M1,2024-10-27 02:30,5,\n"  # just after it: GMT
        "M1,2024-03-31T01:30:00+00:00,6,\n"  # offsets are taken as given, even inside the gap
        "M1,2024-10-27T01:30:00+01:00,7,\n"
        "M1,2024-10-27T01:30:00Z,8,\n"
        "M1,2024-10-27 01:30:00-05:00,9,\n"
    )
    result = ingest(settings, drop(settings.imports_dir, "meter_london.csv", content))

    assert [(o.status, o.rows_loaded, o.rows_rejected) for o in result.outcomes] == [("loaded", 9, 0)]
    assert readings(dsn) == [
        (1, datetime(2024, 1, 15, 12, 0, tzinfo=UTC), Decimal(1)),
        (2, datetime(2024, 7, 1, 11, 0, tzinfo=UTC), Decimal(2)),
        (3, datetime(2024, 3, 31, 1, 30, tzinfo=UTC), Decimal(3)),
        (4, datetime(2024, 10, 26, 23, 30, tzinfo=UTC), Decimal(4)),
        (5, datetime(2024, 10, 27, 2, 30, tzinfo=UTC), Decimal(5)),
        (6, datetime(2024, 3, 31, 1, 30, tzinfo=UTC), Decimal(6)),
        (7, datetime(2024, 10, 27, 0, 30, tzinfo=UTC), Decimal(7)),
        (8, datetime(2024, 10, 27, 1, 30, tzinfo=UTC), Decimal(8)),
        (9, datetime(2024, 10, 27, 6, 30, tzinfo=UTC), Decimal(9)),
    ]


def test_autumn_overlap_is_a_rejected_row(settings: Settings, dsn: str) -> None:
    settings = london(dsn, settings)
    content = METER_HEADER + "M1,2024-10-27 00:30,1,\nM1,2024-10-27 01:30,2,\nM1,2024-10-27 02:30,3,\n"

    result = ingest(settings, drop(settings.imports_dir, "meter_autumn.csv", content))

    assert [(o.status, o.rows_loaded, o.rows_rejected) for o in result.outcomes] == [
        ("loaded_with_rejects", 2, 1)
    ]
    assert rejects(dsn) == [
        (
            2,
            3,
            "reading_at",
            "2024-10-27 01:30",
            OVERLAP,
        ),
    ]
    assert readings(dsn) == [
        (1, datetime(2024, 10, 26, 23, 30, tzinfo=UTC), Decimal(1)),
        (3, datetime(2024, 10, 27, 2, 30, tzinfo=UTC), Decimal(3)),
    ]


def test_spring_gap_is_a_rejected_row_saying_the_time_does_not_exist(settings: Settings, dsn: str) -> None:
    settings = london(dsn, settings)
    content = METER_HEADER + "M1,2024-03-31 00:30,1,\nM1,2024-03-31 01:30,2,\nM1,2024-03-31 02:30,3,\n"

    result = ingest(settings, drop(settings.imports_dir, "meter_spring.csv", content))

    assert [(o.status, o.rows_loaded, o.rows_rejected) for o in result.outcomes] == [
        ("loaded_with_rejects", 2, 1)
    ]
    assert rejects(dsn) == [
        (
            2,
            3,
            "reading_at",
            "2024-03-31 01:30",
            GAP,
        ),
    ]
    assert readings(dsn) == [
        (1, datetime(2024, 3, 31, 0, 30, tzinfo=UTC), Decimal(1)),
        (3, datetime(2024, 3, 31, 1, 30, tzinfo=UTC), Decimal(3)),
    ]


def test_date_only_value_at_an_ambiguous_midnight_is_a_rejected_row(settings: Settings, dsn: str) -> None:
    # Cuba turns its clocks back from 01:00 to 00:00: midnight of 2024-11-03 happens twice.
    settings = make_settings(
        dsn, settings.imports_dir.parent, source_timezone="America/Havana", max_reject_ratio=0.5
    )
    content = METER_HEADER + "M1,2024-11-02,1,\nM1,2024-11-03,2,\nM1,2024-11-04,3,\n"

    ingest(settings, drop(settings.imports_dir, "meter_havana.csv", content))

    assert rejects(dsn) == [
        (
            2,
            3,
            "reading_at",
            "2024-11-03",
            "local time 2024-11-03 00:00 happens twice in America/Havana (clocks went back); send it with a "
            "UTC offset",
        ),
    ]
    assert readings(dsn) == [
        (1, datetime(2024, 11, 2, 4, 0, tzinfo=UTC), Decimal(1)),
        (3, datetime(2024, 11, 4, 5, 0, tzinfo=UTC), Decimal(3)),
    ]


@pytest.mark.parametrize(
    ("zone", "naive", "expected"),
    [
        ("Etc/GMT-5", "2024-01-15 05:00", datetime(2024, 1, 15, 0, 0, tzinfo=UTC)),  # POSIX sign: UTC+5
        ("Asia/Kolkata", "2024-07-01 05:30:00", datetime(2024, 7, 1, 0, 0, tzinfo=UTC)),
        ("UTC", "2024-03-31 01:30", datetime(2024, 3, 31, 1, 30, tzinfo=UTC)),
    ],
)
def test_fixed_offset_zones_convert_naive_times_on_the_fast_path(
    settings: Settings, dsn: str, zone: str, naive: str, expected: datetime
) -> None:
    settings = make_settings(dsn, settings.imports_dir.parent, source_timezone=zone)
    content = METER_HEADER + f"M1,{naive},1,\nM1,2024-01-15T00:00:00+02:00,2,\n"

    result = ingest(settings, drop(settings.imports_dir, "meter_fixed.csv", content))

    assert [(o.status, o.rows_loaded) for o in result.outcomes] == [("loaded", 2)]
    assert readings(dsn) == [
        (1, expected, Decimal(1)),
        (2, datetime(2024, 1, 14, 22, 0, tzinfo=UTC), Decimal(2)),
    ]


# --- formats declared in datasets.toml ------------------------------------------------------------


def test_formats_on_built_in_date_and_timestamp_columns(settings: Settings, dsn: str) -> None:
    settings = london(dsn, settings)
    settings.datasets_file.write_text(
        """
[datasets.shipments.columns.scheduled_ship_date]
formats = ["%d/%m/%Y", "%d.%m.%Y"]

[datasets.meter_readings.columns.reading_at]
formats = ["%d/%m/%Y %H:%M", "%d/%m/%Y %H:%M %z"]
""",
        encoding="utf-8",
    )
    registry = load_registry(settings)
    assert registry.get("shipments").column("scheduled_ship_date").formats == ("%d/%m/%Y", "%d.%m.%Y")
    shipments = (
        "JobNumber,ShipmentNumber,ScheduledShipDate\n"
        "J1,S1,15/01/2024\n"
        "J2,S2,16.01.2024\n"
        "J3,S3,2024-01-17\n"  # ISO still works
        "J4,S4,31/02/2024\n"  # matches a format's shape, but there is no 31 February
        "J5,S5,\n"
    )
    meters = METER_HEADER + (
        "M1,15/01/2024 12:00,1,\n"
        "M1,01/07/2024 12:00,2,\n"
        "M1,01/07/2024 12:00 +0200,3,\n"
        "M1,2024-07-01T12:00:00Z,4,\n"
        "M1,27/10/2024 01:30,5,\n"  # happens twice in London
    )
    result = ingest(
        settings,
        drop(settings.imports_dir, "shipments_fmt.csv", shipments),
        drop(settings.imports_dir, "meter_fmt.csv", meters),
        registry=registry,
    )

    assert [(o.name, o.status, o.rows_loaded, o.rows_rejected) for o in result.outcomes] == [
        ("shipments_fmt.csv", "loaded_with_rejects", 4, 1),
        ("meter_fmt.csv", "loaded_with_rejects", 4, 1),
    ]
    rows = fetch(dsn, "SELECT shipment_number, scheduled_ship_date FROM staging.shipments ORDER BY 1")
    assert [tuple(r) for r in rows] == [
        ("S1", date(2024, 1, 15)),
        ("S2", date(2024, 1, 16)),
        ("S3", date(2024, 1, 17)),
        ("S5", None),
    ]
    assert readings(dsn) == [
        (1, datetime(2024, 1, 15, 12, 0, tzinfo=UTC), Decimal(1)),
        (2, datetime(2024, 7, 1, 11, 0, tzinfo=UTC), Decimal(2)),
        (3, datetime(2024, 7, 1, 10, 0, tzinfo=UTC), Decimal(3)),
        (4, datetime(2024, 7, 1, 12, 0, tzinfo=UTC), Decimal(4)),
    ]
    bad = fetch(
        dsn,
        "SELECT f.name, r.record_no, r.line_no, r.column_name, r.value, r.reason "
        "FROM ingest.rejected_rows r JOIN ingest.files f ON f.id = r.file_id ORDER BY f.id",
    )
    assert [tuple(r) for r in bad] == [
        ("shipments_fmt.csv", 4, 5, "scheduled_ship_date", "31/02/2024", "not a date (YYYY-MM-DD)"),
        (
            "meter_fmt.csv",
            5,
            6,
            "reading_at",
            "27/10/2024 01:30",
            OVERLAP,
        ),
    ]


def test_formats_on_a_user_dataset(settings: Settings, dsn: str) -> None:
    settings.datasets_file.write_text(
        """
[datasets.deliveries]
patterns = ["deliver*"]
key = ["delivery_id"]

[datasets.deliveries.columns.delivery_id]
source = "Delivery No"
required = true

[datasets.deliveries.columns.delivered_on]
source = "Date"
type = "date"
formats = ["%m/%d/%y"]

[datasets.deliveries.columns.delivered_at]
source = "Signed"
type = "timestamptz"
formats = ["%Y%m%d%H%M%S"]
""",
        encoding="utf-8",
    )
    registry = load_registry(settings)
    migrate(dsn, settings, registry)
    content = "Delivery No,Date,Signed\nD1,01/31/24,20240131174501\nD2,02/01/24,2024-02-01T08:00:00+01:00\n"

    result = ingest(settings, drop(settings.imports_dir, "deliveries.csv", content), registry=registry)

    assert [(o.dataset, o.status, o.rows_loaded) for o in result.outcomes] == [("deliveries", "loaded", 2)]
    rows = fetch(
        dsn, "SELECT _record_no, delivery_id, delivered_on, delivered_at FROM staging.deliveries ORDER BY 1"
    )
    assert [tuple(r) for r in rows] == [
        (1, "D1", date(2024, 1, 31), datetime(2024, 1, 31, 17, 45, 1, tzinfo=UTC)),
        (2, "D2", date(2024, 2, 1), datetime(2024, 2, 1, 8, 0, tzinfo=timezone(timedelta(hours=1)))),
    ]
    assert fetchval(dsn, "SELECT count(*) FROM ingest.rejected_rows") == 0
