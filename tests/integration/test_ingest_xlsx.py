"""Excel workbooks into staging: values as the cells show them, rejects named as Excel names
cells, the same ledger, duplicates and failures as every other format."""

from __future__ import annotations

import io
import zipfile
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import openpyxl
import pytest

from app.datasets import load_registry
from app.settings import Settings
from tests.integration.helpers import drop, ingest
from tests.integration.test_hostile_input import assert_failed
from tests.integration.workbooks import ErrorCell, Formula, xlsx
from tests.memory import run_cli_measured
from tests.pg import fetch, fetchval

HEADER = ["JobNumber", "ShipmentNumber", "ShipZip", "ShipVia", "IsPartial", "ScheduledShipDate",
          "ScheduledShipQuantity", "ShipName"]  # fmt: skip


def shipment_rows(dsn: str) -> list[tuple[object, ...]]:
    rows = fetch(
        dsn,
        "SELECT _record_no, job_number, shipment_number, ship_zip, ship_via, is_partial, "
        "scheduled_ship_date, scheduled_ship_quantity, ship_name FROM staging.shipments ORDER BY _record_no",
    )
    return [tuple(r) for r in rows]


def test_cells_load_as_the_sheet_shows_them(settings: Settings, dsn: str) -> None:
    content = xlsx(
        {
            "Shipments": [
                [],  # the header is the first non-empty row, wherever it is
                [None, *HEADER],  # and starts where its first cell is
                [None, "J1", "S1", "01234", 10005, True, date(2024, 6, 3), 42, "Müller & Söhne"],
                [None, "J2", "S2", "", 10005.0, False, date(2024, 6, 4), Formula("SUM(1,2)", 3), None],
                [],
                [
                    None,
                    "J3",
                    "S3",
                    98765,
                    "10006",
                    "no",
                    Formula("TODAY()", date(2024, 6, 5)),
                    None,
                    Formula('CONCAT("a","b")', "ab"),
                ],
                [],  # empty trailing rows are not records
                [],
            ]
        }
    )

    result = ingest(settings, drop(settings.imports_dir, "shipments_week.xlsx", content))

    assert [(o.status, o.dataset, o.rows_loaded, o.rows_rejected) for o in result.outcomes] == [
        ("loaded", "shipments", 3, 0)
    ]
    assert shipment_rows(dsn) == [
        (1, "J1", "S1", "01234", "10005", True, date(2024, 6, 3), 42, "Müller & Söhne"),
        (2, "J2", "S2", None, "10005", False, date(2024, 6, 4), 3, None),
        (3, "J3", "S3", "98765", "10006", False, date(2024, 6, 5), None, "ab"),
    ]
    file = fetch(dsn, "SELECT name, status, moved_to FROM ingest.files")[0]
    assert (file["name"], file["status"]) == ("shipments_week.xlsx", "loaded")
    assert not (settings.imports_dir / "shipments_week.xlsx").exists()


def test_numbers_and_date_times_keep_their_shown_values(settings: Settings, dsn: str) -> None:
    content = xlsx(
        {
            "Readings": [
                ["meter_id", "reading_at", "register_kwh", "power_w"],
                ["M1", datetime(2024, 1, 15, 0, 30), 0.1, 42],
                ["M1", datetime(2024, 1, 15, 1, 0, 0, 250000), 0.30000000000000004, 1e-7],
                [7, datetime(2024, 1, 15, 1, 30), 1234567.891, None],
            ]
        }
    )

    ingest(settings, drop(settings.imports_dir, "meter_book.xlsx", content))

    rows = fetch(
        dsn,
        "SELECT meter_id, reading_at, register_kwh, power_w FROM staging.meter_readings ORDER BY _record_no",
    )
    assert [tuple(r) for r in rows] == [
        ("M1", datetime(2024, 1, 15, 0, 30, tzinfo=UTC), Decimal("0.1"), Decimal("42")),
        ("M1", datetime(2024, 1, 15, 1, 0, 0, 250000, tzinfo=UTC), Decimal("0.3"), Decimal("1E-7")),
        ("7", datetime(2024, 1, 15, 1, 30, tzinfo=UTC), Decimal("1234567.891"), None),
    ]


def test_date_times_are_read_in_the_source_timezone(settings: Settings, dsn: str) -> None:
    settings.source_timezone = "Europe/Berlin"
    content = xlsx(
        {
            "S": [
                ["meter_id", "reading_at", "register_kwh"],
                ["M1", datetime(2024, 1, 15, 0, 30), 1],
                ["M1", datetime(2024, 7, 15, 0, 30), 2],
                *[["M2", datetime(2024, 2, 1, h), h] for h in range(10)],
                ["M1", datetime(2024, 3, 31, 2, 30), 3],  # clocks went forward: no such time
            ]
        }
    )

    result = ingest(settings, drop(settings.imports_dir, "meter_local.xlsx", content))

    assert [(o.status, o.rows_loaded, o.rows_rejected) for o in result.outcomes] == [
        ("loaded_with_rejects", 12, 1)
    ]
    assert [r[0] for r in fetch(dsn, "SELECT reading_at FROM staging.meter_readings ORDER BY _record_no")][
        :2
    ] == [
        datetime(2024, 1, 14, 23, 30, tzinfo=UTC),
        datetime(2024, 7, 14, 22, 30, tzinfo=UTC),
    ]
    rejects = fetch(dsn, "SELECT record_no, line_no, column_name, value, reason FROM ingest.rejected_rows")
    assert [tuple(r) for r in rejects] == [
        (
            13,
            14,
            "reading_at",
            "2024-03-31T02:30:00",
            "S!B14: local time 2024-03-31 02:30 does not exist in Europe/Berlin (clocks went forward); "
            "send it with a UTC offset",
        )
    ]


def test_bad_cells_are_rejected_named_as_excel_names_them(settings: Settings, dsn: str) -> None:
    good = [[f"J{i}", f"S{i}", "1", 10005, True, date(2024, 6, 3), 1, "x"] for i in range(40)]
    content = xlsx(
        {
            "Week 23": [
                HEADER,
                *good[:10],
                ["J90", "S90", "1", 10005, "maybe", date(2024, 6, 3), 1, "x"],  # row 12
                ["J91", None, "1", 10005, True, date(2024, 6, 3), 1, "x"],  # row 13
                ["J92", "S92", "1", 10005, True, date(2024, 6, 3), ErrorCell("#DIV/0!"), "x"],  # row 14
                ["J93", "S93", "1", 10005, True, date(2024, 6, 3), 1, "x", "stray"],  # row 15
                *good[10:],
            ]
        }
    )

    result = ingest(settings, drop(settings.imports_dir, "shipments_bad.xlsx", content))

    assert [(o.status, o.rows_loaded, o.rows_rejected) for o in result.outcomes] == [
        ("loaded_with_rejects", 40, 4)
    ]
    rejects = fetch(
        dsn,
        "SELECT record_no, line_no, column_name, value, reason FROM ingest.rejected_rows ORDER BY record_no",
    )
    assert [tuple(r) for r in rejects] == [
        (11, 12, "is_partial", "maybe", "'Week 23'!E12: not a boolean (1/0, true/false, yes/no, y/n)"),
        (12, 13, "shipment_number", None, "'Week 23'!B13: a required value is missing"),
        (13, 14, None, "#DIV/0!", "'Week 23'!G14: the cell holds the error #DIV/0!"),
        (14, 15, None, "stray", "'Week 23'!I15: a value outside the header's columns (A:H)"),
    ]


def test_the_declared_sheet_and_header_row(settings: Settings, dsn: str) -> None:
    settings.datasets_file.write_text(
        '[datasets.shipments]\nsheet = "Data"\nheader_row = 3\n', encoding="utf-8"
    )
    content = xlsx(
        {
            "Notes": [["exported by ERP"]],
            "Data": [["Shipments, week 23"], [], ["JobNumber", "ShipmentNumber"], ["J1", "S1"]],
        }
    )

    ingest(
        settings, drop(settings.imports_dir, "shipments_d.xlsx", content), registry=load_registry(settings)
    )

    assert [tuple(r) for r in fetch(dsn, "SELECT job_number, shipment_number FROM staging.shipments")] == [
        ("J1", "S1")
    ]


def test_a_workbook_is_recognised_by_its_header(settings: Settings, dsn: str) -> None:
    content = xlsx({"Sheet1": [["meter_id", "reading_at", "power_w"], ["M1", datetime(2024, 1, 1), 5]]})

    result = ingest(settings, drop(settings.imports_dir, "Book1.xlsx", content))

    assert [(o.status, o.dataset) for o in result.outcomes] == [("loaded", "meter_readings")]


def test_a_workbook_saved_by_openpyxl_loads(settings: Settings, dsn: str) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(HEADER)
    sheet.append(["J1", "S1", "01234", 10005, True, date(2024, 6, 3), 42, "A"])
    sheet.append(["J2", "S2", None, 10005, False, datetime(2024, 6, 4), 7.0, None])
    out = io.BytesIO()
    book.save(out)

    ingest(settings, drop(settings.imports_dir, "shipments_opx.xlsm", out.getvalue()))

    assert shipment_rows(dsn) == [
        (1, "J1", "S1", "01234", "10005", True, date(2024, 6, 3), 42, "A"),
        (2, "J2", "S2", None, "10005", False, date(2024, 6, 4), 7, None),
    ]


def test_the_same_workbook_again_is_a_duplicate(settings: Settings, dsn: str) -> None:
    content = xlsx({"S": [["JobNumber", "ShipmentNumber"], ["J1", "S1"]]})
    ingest(settings, drop(settings.imports_dir, "shipments_1.xlsx", content))

    again = ingest(settings, drop(settings.imports_dir, "shipments_copy.xlsx", content))

    assert [(o.status, o.dataset) for o in again.outcomes] == [("duplicate", "shipments")]
    assert fetchval(dsn, "SELECT count(*) FROM staging.shipments") == 1


def test_a_missing_sheet_fails_listing_the_sheets(settings: Settings, dsn: str) -> None:
    settings.datasets_file.write_text('[datasets.shipments]\nsheet = "Data"\n', encoding="utf-8")
    content = xlsx({"Sheet1": [["JobNumber", "ShipmentNumber"], ["J1", "S1"]], "Sheet 2": [["x"]]})

    ingest(
        settings, drop(settings.imports_dir, "shipments_s.xlsx", content), registry=load_registry(settings)
    )

    assert_failed(
        settings,
        dsn,
        "shipments_s.xlsx",
        content,
        dataset="shipments",
        error_class="MalformedFile",
        error="the workbook has no sheet 'Data'; its sheets are 'Sheet1', 'Sheet 2'. Set the dataset's "
        "`sheet` in datasets.toml to one of them",
    )


def test_an_empty_workbook_fails_as_empty(settings: Settings, dsn: str) -> None:
    content = xlsx({"Sheet1": []})

    ingest(settings, drop(settings.imports_dir, "shipments_empty.xlsx", content))

    assert_failed(
        settings,
        dsn,
        "shipments_empty.xlsx",
        content,
        dataset="shipments",
        error_class="EmptyFile",
        error="sheet 'Sheet1' of the workbook has no rows. Nothing to load; drop the file again once it "
        "has rows",
    )


def test_a_header_and_no_rows_fails_as_empty(settings: Settings, dsn: str) -> None:
    content = xlsx({"Sheet1": [["JobNumber", "ShipmentNumber"]]})

    ingest(settings, drop(settings.imports_dir, "shipments_head.xlsx", content))

    assert_failed(
        settings,
        dsn,
        "shipments_head.xlsx",
        content,
        dataset="shipments",
        error_class="EmptyFile",
        error="the file has a header but no data rows. Nothing to load; drop the file again once it has rows",
    )


def test_a_truncated_workbook_fails_as_damaged(settings: Settings, dsn: str) -> None:
    whole = xlsx({"S": [["JobNumber", "ShipmentNumber"], *[[f"J{i}", f"S{i}"] for i in range(100)]]})
    content = whole[: len(whole) // 2]

    ingest(settings, drop(settings.imports_dir, "shipments_cut.xlsx", content))

    assert_failed(
        settings,
        dsn,
        "shipments_cut.xlsx",
        content,
        dataset="shipments",
        error_class="MalformedFile",
        error="the workbook is damaged or incomplete (File is not a zip file). Open it in Excel, save it "
        "again as .xlsx and drop it again",
    )


def test_an_encrypted_workbook_fails_saying_so(settings: Settings, dsn: str) -> None:
    # Excel saves a workbook with a password as an OLE compound file holding the encrypted zip.
    content = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504) + b"EncryptionInfo" + bytes(1000)

    ingest(settings, drop(settings.imports_dir, "shipments_secret.xlsx", content))

    assert_failed(
        settings,
        dsn,
        "shipments_secret.xlsx",
        content,
        dataset="shipments",
        error_class="MalformedFile",
        error="the workbook is password-protected (encrypted), so it cannot be read. Save it without a "
        "password (File > Info > Protect Workbook > Encrypt with Password: clear it) and drop it again",
    )


def test_a_part_that_inflates_past_its_declared_size_fails(settings: Settings, dsn: str) -> None:
    content = bytearray(xlsx({"S": [["JobNumber", "ShipmentNumber"], ["J1", "S1"]]}))
    # Make the sheet declare 10 bytes in the central directory: it inflates to more than that.
    with zipfile.ZipFile(io.BytesIO(bytes(content))) as archive:
        info = archive.getinfo("xl/worksheets/sheet1.xml")
    central = content.rfind(b"PK\x01\x02", 0, content.find(b"xl/worksheets/sheet1.xml", len(content) // 2))
    content[central + 24 : central + 28] = (10).to_bytes(4, "little")
    local = info.header_offset
    content[local + 22 : local + 26] = (10).to_bytes(4, "little")
    data = bytes(content)

    ingest(settings, drop(settings.imports_dir, "shipments_liar.xlsx", data))

    # zipfile inflates no more than the declared size, so the check of the part's CRC fails.
    assert_failed(
        settings,
        dsn,
        "shipments_liar.xlsx",
        data,
        dataset="shipments",
        error_class="MalformedFile",
        error="the workbook is damaged or incomplete (Bad CRC-32 for file 'xl/worksheets/sheet1.xml'). "
        "Open it in Excel, save it again as .xlsx and drop it again",
    )


@pytest.mark.slow
def test_a_100k_row_workbook_loads_in_bounded_memory(dsn: str, workdir: Path) -> None:
    n = 100_000
    rows = [
        [
            f"J{i:06d}",
            f"S{i:07d}",
            f"{i % 99999:05d}",
            10005,
            i % 2 == 0,
            date(2024, 6, 1 + i % 28),
            i % 50,
            f"Customer {i}",
            f"{i} Main Street",
            "Springfield",
        ]
        for i in range(n)
    ]
    content = xlsx({"Shipments": [[*HEADER, "ShipAddress1", "ShipCity"], *rows]})
    drop(workdir / "imports", "shipments_100k.xlsx", content)

    run = run_cli_measured(dsn, workdir, "--ingest", "imports", timeout=600)

    assert run.returncode == 0, run.stderr[-2000:]
    print(f"100k-row workbook: peak {run.peak_mb:.0f} MB")  # for the record (pytest -s)
    assert [tuple(r) for r in fetch(dsn, "SELECT status, rows_loaded FROM ingest.files")] == [("loaded", n)]
    assert fetchval(dsn, "SELECT count(DISTINCT ship_address1) FROM staging.shipments") == n
    assert fetchval(dsn, "SELECT sum(scheduled_ship_quantity) FROM staging.shipments") == sum(
        i % 50 for i in range(n)
    )
    assert run.peak_mb <= 150
