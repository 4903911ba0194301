"""Delimited text as people send it: `;`, tab and `|` delimiters, continental numbers, any
encoding (a BOM decides), Excel's "Unicode Text" — with the same guarantees as plain CSV."""

from __future__ import annotations

import codecs
import logging
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from app.datasets import load_registry
from app.settings import Settings
from models.datasets import DatasetRegistry
from tests.integration.helpers import drop, ingest
from tests.integration.test_hostile_input import ENCODING_HINT, assert_failed
from tests.pg import fetch, fetchval

SHIPMENT_HEADER = ["JobNumber", "ShipmentNumber", "ShipZip", "IsPartial", "ScheduledShipDate", "ShipCity"]
SHIPMENT_ROWS = [
    ["J1", "S1", "01234", "yes", "2024-06-03", "Köln"],
    ["J2", "S2", "", "0", "", "Zürich"],
]
EXPECTED_SHIPMENTS = [
    (1, "J1", "S1", "01234", True, date(2024, 6, 3), "Köln"),
    (2, "J2", "S2", None, False, None, "Zürich"),
]


def shipments_text(delimiter: str, line_end: str = "\n") -> str:
    return "".join(delimiter.join(row) + line_end for row in [SHIPMENT_HEADER, *SHIPMENT_ROWS])


def loaded_shipments(dsn: str) -> list[tuple[object, ...]]:
    rows = fetch(
        dsn,
        "SELECT _record_no, job_number, shipment_number, ship_zip, is_partial, scheduled_ship_date, "
        "ship_city FROM staging.shipments ORDER BY _record_no",
    )
    return [tuple(r) for r in rows]


def with_datasets(settings: Settings, toml: str) -> DatasetRegistry:
    settings.datasets_file.write_text(toml, encoding="utf-8")
    return load_registry(settings)


@pytest.mark.parametrize(
    ("name", "delimiter"),
    [("shipments_semicolon.csv", ";"), ("shipments_tab.tsv", "\t"), ("shipments_pipe.txt", "|")],
)
def test_the_delimiter_is_found_in_the_header_and_the_fast_path_kept(
    settings: Settings, dsn: str, caplog: pytest.LogCaptureFixture, name: str, delimiter: str
) -> None:
    caplog.set_level(logging.INFO, logger="services.ingest")
    result = ingest(settings, drop(settings.imports_dir, name, shipments_text(delimiter)))

    assert [(o.status, o.rows_loaded) for o in result.outcomes] == [("loaded", 2)]
    assert loaded_shipments(dsn) == EXPECTED_SHIPMENTS
    assert "(fast path)" in caplog.text and "row by row" not in caplog.text


def test_a_declared_delimiter_wins_over_the_sniffed_one(settings: Settings, dsn: str) -> None:
    # The header holds more commas than semicolons; the dataset says `;`.
    content = "JobNumber;ShipmentNumber;Ship,City,Name\nJ1;S1;a,b\n"
    registry = with_datasets(
        settings,
        '[datasets.shipments]\ndelimiter = ";"\n[datasets.shipments.columns.ship_name]\n'
        'source = "Ship,City,Name"\n',
    )

    ingest(settings, drop(settings.imports_dir, "shipments_x.csv", content), registry=registry)

    assert [tuple(r) for r in fetch(dsn, "SELECT job_number, ship_name FROM staging.shipments")] == [
        ("J1", "a,b")
    ]


def test_a_declared_quote_character(settings: Settings, dsn: str) -> None:
    registry = with_datasets(settings, '[datasets.shipments]\nquote = "\'"\n')
    content = "JobNumber,ShipmentNumber,ShipName\nJ1,S1,'Smith, ''Jo'''\nJ2,S2,\"plain\"\n"

    ingest(settings, drop(settings.imports_dir, "shipments_q.csv", content), registry=registry)

    assert [tuple(r) for r in fetch(dsn, "SELECT ship_name FROM staging.shipments ORDER BY 1")] == [
        ('"plain"',),
        ("Smith, 'Jo'",),
    ]


CONTINENTAL = (
    "[datasets.meter_readings]\n"
    'decimal = ","\n'
    'thousands = "."\n'
    "[datasets.meter_readings.columns.reading_at]\n"
    'formats = ["%d.%m.%Y %H:%M"]\n'
)


def test_continental_numbers_and_dates_load_exactly(settings: Settings, dsn: str) -> None:
    registry = with_datasets(settings, CONTINENTAL)
    content = (
        "meter_id;reading_at;register_kwh;power_w\n"
        "M1;15.01.2024 00:00;1.234,56;7\n"
        "M1;15.01.2024 00:30;1.234.567,5;-0,25\n"
        "M2;15.01.2024 01:00;12,0;\n"
    )

    result = ingest(settings, drop(settings.imports_dir, "meter_de.csv", content), registry=registry)

    assert [(o.status, o.rows_loaded) for o in result.outcomes] == [("loaded", 3)]
    rows = fetch(
        dsn,
        "SELECT meter_id, reading_at, register_kwh, power_w FROM staging.meter_readings ORDER BY _record_no",
    )
    assert [tuple(r) for r in rows] == [
        ("M1", datetime(2024, 1, 15, 0, 0, tzinfo=UTC), Decimal("1234.56"), Decimal("7")),
        ("M1", datetime(2024, 1, 15, 0, 30, tzinfo=UTC), Decimal("1234567.5"), Decimal("-0.25")),
        ("M2", datetime(2024, 1, 15, 1, 0, tzinfo=UTC), Decimal("12.0"), None),
    ]


def test_a_number_not_in_the_declared_style_is_a_rejected_row_naming_the_column(
    settings: Settings, dsn: str
) -> None:
    registry = with_datasets(settings, CONTINENTAL)
    good = "".join(f"M1;15.01.2024 {h:02d}:00;{h},5;1\n" for h in range(20))
    content = "meter_id;reading_at;register_kwh;power_w\n" + good + "M9;16.01.2024 00:00;1,234.56;1\n"

    result = ingest(settings, drop(settings.imports_dir, "meter_mixed.csv", content), registry=registry)

    assert [(o.status, o.rows_loaded, o.rows_rejected) for o in result.outcomes] == [
        ("loaded_with_rejects", 20, 1)
    ]
    rejects = fetch(dsn, "SELECT record_no, line_no, column_name, value, reason FROM ingest.rejected_rows")
    assert [tuple(r) for r in rejects] == [
        (21, 22, "register_kwh", "1,234.56", "not a number written as this dataset declares (e.g. 1.234,56)")
    ]


def test_a_space_as_thousands_separator_takes_no_break_spaces_too(settings: Settings, dsn: str) -> None:
    registry = with_datasets(settings, '[datasets.meter_readings]\ndecimal = ","\nthousands = " "\n')
    content = (
        "meter_id;reading_at;register_kwh\n"
        "M1;2024-01-15T00:00:00Z;1 234,5\n"
        "M1;2024-01-15T00:30:00Z;2\u00a0000\n"
    )

    ingest(settings, drop(settings.imports_dir, "meter_fr.csv", content), registry=registry)

    assert [r[0] for r in fetch(dsn, "SELECT register_kwh FROM staging.meter_readings ORDER BY 1")] == [
        Decimal("1234.5"),
        Decimal("2000"),
    ]


@pytest.mark.parametrize(
    ("codec", "bom"),
    [
        ("utf-16-le", codecs.BOM_UTF16_LE),
        ("utf-16-be", codecs.BOM_UTF16_BE),
        ("utf-32-le", codecs.BOM_UTF32_LE),
        ("utf-32-be", codecs.BOM_UTF32_BE),
        ("utf-8", codecs.BOM_UTF8),
    ],
)
def test_a_bom_decides_the_encoding_with_no_settings(
    settings: Settings, dsn: str, codec: str, bom: bytes
) -> None:
    content = bom + shipments_text("\t", "\r\n").encode(codec)

    result = ingest(settings, drop(settings.imports_dir, "export.txt", content))

    assert [(o.status, o.dataset, o.rows_loaded) for o in result.outcomes] == [("loaded", "shipments", 2)]
    assert loaded_shipments(dsn) == EXPECTED_SHIPMENTS


def test_excel_unicode_text_loads_with_no_settings(settings: Settings, dsn: str) -> None:
    # What Excel's "Save as Unicode Text" writes: UTF-16 LE with BOM, tabs, CRLF, a .txt name,
    # quotes around a value with a tab or quote in it.
    rows = [
        [*SHIPMENT_HEADER, "ShipName"],
        SHIPMENT_ROWS[0] + ['"Müller ""GmbH"""'],
        SHIPMENT_ROWS[1] + ["Ørsted"],
    ]
    text = "".join("\t".join(row) + "\r\n" for row in rows)
    content = codecs.BOM_UTF16_LE + text.encode("utf-16-le")
    path = drop(settings.imports_dir, "Book1.txt", content)

    result = ingest(settings, path)

    assert [(o.status, o.dataset, o.rows_loaded) for o in result.outcomes] == [("loaded", "shipments", 2)]
    assert loaded_shipments(dsn) == EXPECTED_SHIPMENTS
    assert [r[0] for r in fetch(dsn, "SELECT ship_name FROM staging.shipments ORDER BY _record_no")] == [
        'Müller "GmbH"',
        "Ørsted",
    ]
    again = ingest(settings, drop(settings.imports_dir, "Book1 (copy).txt", content))
    assert [(o.status, o.dataset) for o in again.outcomes] == [("duplicate", "shipments")]
    assert fetchval(dsn, "SELECT count(*) FROM staging.shipments") == 2


def test_a_declared_utf16_encoding_without_bom(settings: Settings, dsn: str) -> None:
    registry = with_datasets(settings, '[datasets.shipments]\nencoding = "utf-16-be"\n')
    content = shipments_text(",").encode("utf-16-be")

    ingest(settings, drop(settings.imports_dir, "shipments_be.csv", content), registry=registry)

    assert loaded_shipments(dsn) == EXPECTED_SHIPMENTS


def test_a_robust_path_utf16_file_rejects_its_bad_row(settings: Settings, dsn: str) -> None:
    more = "".join(f"J{i};S{i};1;1;2024-06-05;X\n" for i in range(3, 23))
    text = shipments_text(";") + "J0;S0;1;maybe;2024-06-05;X\n" + more
    content = codecs.BOM_UTF16_LE + text.encode("utf-16-le")

    result = ingest(settings, drop(settings.imports_dir, "shipments_bad.txt", content))

    assert [(o.status, o.rows_loaded, o.rows_rejected) for o in result.outcomes] == [
        ("loaded_with_rejects", 22, 1)
    ]
    rejects = fetch(dsn, "SELECT record_no, line_no, column_name, value FROM ingest.rejected_rows")
    assert [tuple(r) for r in rejects] == [(3, 4, "is_partial", "maybe")]
    assert loaded_shipments(dsn)[:2] == EXPECTED_SHIPMENTS


def test_utf16_that_is_not_valid_fails_naming_line_and_position(settings: Settings, dsn: str) -> None:
    # A lone high surrogate (0xd800) in the second line's third character.
    good = codecs.BOM_UTF16_LE + "JobNumber\tShipmentNumber\r\nJ1".encode("utf-16-le")
    content = good + b"\x00\xd8" + "\tS1\r\n".encode("utf-16-le")
    path = drop(settings.imports_dir, "shipments_broken.txt", content)

    ingest(settings, path)

    assert_failed(
        settings,
        dsn,
        "shipments_broken.txt",
        content,
        dataset="shipments",
        error_class="EncodingError",
        error=f"bytes 0x00d8 at line 2, position 3, are not valid utf-16. {ENCODING_HINT}",
    )


def test_a_semicolon_file_with_decimal_commas_loads_with_no_settings(settings: Settings, dsn: str) -> None:
    content = (
        "meter_id;reading_at;register_kwh;power_w\n"
        "M1;2024-01-15T00:00:00Z;15230,071;426\n"
        "M1;2024-01-15T00:10:00Z;15230.14;-0,5\n"  # a decimal point still reads as one
        + "".join(f"M2;2024-01-15T{h:02d}:00:00Z;{h},25;1\n" for h in range(20))
        + "M3;2024-01-15T00:00:00Z;1.234,5;1\n"  # thousands need declaring: rejected
    )

    result = ingest(settings, drop(settings.imports_dir, "meter_eu.csv", content))

    assert [(o.status, o.rows_loaded, o.rows_rejected) for o in result.outcomes] == [
        ("loaded_with_rejects", 22, 1)
    ]
    rows = fetch(dsn, "SELECT register_kwh, power_w FROM staging.meter_readings ORDER BY _record_no LIMIT 3")
    assert [tuple(r) for r in rows] == [
        (Decimal("15230.071"), Decimal("426")),
        (Decimal("15230.14"), Decimal("-0.5")),
        (Decimal("0.25"), Decimal("1")),
    ]
    rejects = fetch(dsn, "SELECT record_no, column_name, value, reason FROM ingest.rejected_rows")
    assert [tuple(r) for r in rejects] == [(23, "register_kwh", "1.234,5", "not a number")]


def test_declared_continental_numbers_stay_on_the_fast_path(
    settings: Settings, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.ingest")
    registry = with_datasets(settings, '[datasets.meter_readings]\ndecimal = ","\nthousands = "."\n')
    content = (
        "meter_id;reading_at;register_kwh;power_w\n"
        "M1;2024-01-15T00:00:00Z;1.234,56;-7\n"
        "M1;2024-01-15T00:10:00Z;;,5\n"
        "M1;2024-01-15T00:20:00Z;1.234.567;\n"
    )

    result = ingest(settings, drop(settings.imports_dir, "meter_fast_de.csv", content), registry=registry)

    assert [(o.status, o.rows_loaded) for o in result.outcomes] == [("loaded", 3)]
    rows = fetch(dsn, "SELECT _record_no, register_kwh, power_w FROM staging.meter_readings ORDER BY 1")
    assert [tuple(r) for r in rows] == [
        (1, Decimal("1234.56"), Decimal("-7")),
        (2, None, Decimal("0.5")),
        (3, Decimal("1234567"), None),
    ]
    assert "(fast path)" in caplog.text and "row by row" not in caplog.text


def test_a_value_not_in_the_declared_style_leaves_the_fast_path_and_is_rejected(
    settings: Settings, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.ingest")
    registry = with_datasets(settings, '[datasets.meter_readings]\ndecimal = ","\nthousands = "."\n')
    good = "".join(f"M1;2024-01-15T{h:02d}:00:00Z;{h}.000,5;1\n" for h in range(20))
    content = "meter_id;reading_at;register_kwh;power_w\n" + good + "M2;2024-01-16T00:00:00Z;12.5;1\n"

    result = ingest(settings, drop(settings.imports_dir, "meter_odd.csv", content), registry=registry)

    assert [(o.status, o.rows_loaded, o.rows_rejected) for o in result.outcomes] == [
        ("loaded_with_rejects", 20, 1)
    ]
    assert fetchval(dsn, "SELECT sum(register_kwh) FROM staging.meter_readings") == Decimal("190010.0")
    rejects = fetch(dsn, "SELECT record_no, line_no, column_name, value, reason FROM ingest.rejected_rows")
    assert [tuple(r) for r in rejects] == [
        (21, 22, "register_kwh", "12.5", "not a number written as this dataset declares (e.g. 1.234,56)")
    ]
    assert "COPY refused the file as it is (InvalidTextRepresentationError)" in caplog.text
