"""CSV files that are legal but unusual, or built to hurt (issue 12).

Each value case is loaded through each CSV path: the COPY fast path (a clean file), the byte-level
lane of the robust path (a file with a bad row) and the general quote-aware reader (a file whose
first record spans lines). The same bytes must give the same stored values whichever path loads
them. The big files are streamed through zlib in blocks, so the tests stay small.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.settings import Settings
from tests.integration.helpers import METER_HEADER, drop, ingest
from tests.memory import run_cli_measured
from tests.pg import fetch, fetchval

SHIP_HEADER = "JobNumber,ShipmentNumber,Instructions\n"
MIB = 1 << 20
GIB = 1 << 30

# What a spreadsheet (and Python's csv module) shows: a quote is special only at a field's start.
QUOTE_LINES = (
    'J1,S1,12" pipe 3" long\n'  # two quotes inside an unquoted field
    'J2,S2,12" pipe\n'  # one: an odd count, yet a complete record
    'J3,S3,"quoted, ""fine"""\n'  # a quoted field with an escaped quote
    'J4,S4,a "b" c\n'
)
QUOTE_VALUES = [
    ("J1", "S1", '12" pipe 3" long'),
    ("J2", "S2", '12" pipe'),
    ("J3", "S3", 'quoted, "fine"'),
    ("J4", "S4", 'a "b" c'),
]
BAD_ROW = "J9,,no shipment number\n"  # a required value missing: the robust path's lane
MULTI_LINE = 'J0,S0,"first\nsecond"\n'  # a record over two lines: the general reader


def shipments(settings: Settings, dsn: str, name: str, body: str) -> list[tuple[object, ...]]:
    settings.max_reject_ratio = 0.5
    ingest(settings, drop(settings.imports_dir, name, SHIP_HEADER + body))
    rows = fetch(dsn, "SELECT job_number, shipment_number, instructions FROM staging.shipments ORDER BY 2")
    return [tuple(r) for r in rows]


def ledger(dsn: str) -> list[tuple[object, ...]]:
    return [
        tuple(r) for r in fetch(dsn, "SELECT status, rows_loaded, rows_rejected, error FROM ingest.files")
    ]


# --- quotes inside unquoted fields (defect 4) -----------------------------------------------------


def test_quotes_inside_unquoted_fields_are_kept_by_a_clean_file(settings: Settings, dsn: str) -> None:
    assert shipments(settings, dsn, "shipments_quotes.csv", QUOTE_LINES) == QUOTE_VALUES
    assert ledger(dsn) == [("loaded", 4, 0, None)]


def test_quotes_inside_unquoted_fields_are_kept_beside_a_bad_row(settings: Settings, dsn: str) -> None:
    assert shipments(settings, dsn, "shipments_quotes_bad.csv", QUOTE_LINES + BAD_ROW) == QUOTE_VALUES
    assert ledger(dsn) == [("loaded_with_rejects", 4, 1, None)]
    rejects = fetch(dsn, "SELECT record_no, line_no, column_name, reason FROM ingest.rejected_rows")
    assert [tuple(r) for r in rejects] == [(5, 6, "shipment_number", "a required value is missing")]


def test_quotes_inside_unquoted_fields_are_kept_after_a_multi_line_record(
    settings: Settings, dsn: str
) -> None:
    got = shipments(settings, dsn, "shipments_quotes_multi.csv", MULTI_LINE + QUOTE_LINES + BAD_ROW)

    assert got == [("J0", "S0", "first\nsecond"), *QUOTE_VALUES]
    rejects = fetch(dsn, "SELECT record_no, line_no, column_name, reason FROM ingest.rejected_rows")
    assert [tuple(r) for r in rejects] == [(6, 8, "shipment_number", "a required value is missing")]


def test_well_formed_quotes_stay_on_the_fast_path(
    settings: Settings, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.ingest")  # the loader and the formats
    body = 'J1,S1,"a ""b"", c"\n"J2","S2",\n'
    assert shipments(settings, dsn, "shipments_fast_quotes.csv", body) == [
        ("J1", "S1", 'a "b", c'),
        ("J2", "S2", None),
    ]
    assert "(fast path)" in caplog.text and "row by row" not in caplog.text


def test_a_quote_inside_an_unquoted_field_leaves_the_fast_path(
    settings: Settings, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.ingest")  # the loader and the formats
    shipments(settings, dsn, "shipments_inch.csv", 'J1,S1,"ok"\nJ2,S2,12" pipe\n')

    assert "COPY refused the file as it is (QuotesCopyReadsDifferently)" in caplog.text
    assert "(robust path)" in caplog.text


# --- CR-only line ends (defect 5a) ----------------------------------------------------------------

CR_CASES = {
    "clean": ("M1,2024-01-15T00:00:00Z,1.5,\rM2,2024-01-15T00:10:00Z,,20\r", 0),
    "bad_row": ("M1,2024-01-15T00:00:00Z,1.5,\r,2024-01-15T00:05:00Z,1,\rM2,2024-01-15T00:10:00Z,,20\r", 1),
    "multi_line": ('"M\n1",2024-01-15T00:00:00Z,1.5,\r\rM2,2024-01-15T00:10:00Z,,20', 0),
}


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("case", sorted(CR_CASES))
def test_cr_only_line_ends_load_on_every_path(
    settings: Settings, dsn: str, case: str, compressed: bool
) -> None:
    body, rejected = CR_CASES[case]
    content = (METER_HEADER.replace("\n", "\r") + body).encode()
    name = "meter_mac.csv"
    if compressed:
        content, name = gzip.compress(content, mtime=0), name + ".gz"
    settings.max_reject_ratio = 0.5

    result = ingest(settings, drop(settings.imports_dir, name, content))

    assert [(o.status, o.rows_loaded, o.rows_rejected) for o in result.outcomes] == [
        ("loaded_with_rejects" if rejected else "loaded", 2, rejected)
    ]
    rows = fetch(
        dsn, "SELECT _record_no, meter_id, register_kwh::text, power_w::text FROM staging.meter_readings"
    )
    first = "M\n1" if case == "multi_line" else "M1"
    last_record = 3 if rejected else 2
    assert sorted(tuple(r) for r in rows) == [(1, first, "1.5", None), (last_record, "M2", None, "20")]
    rejects = fetch(dsn, "SELECT record_no, line_no, column_name, reason FROM ingest.rejected_rows")
    assert [tuple(r) for r in rejects] == (
        [(2, 3, "meter_id", "a required value is missing")] if rejected else []
    )


# --- duplicate unknown header names (defect 6) ----------------------------------------------------


def test_duplicate_unknown_header_names_keep_every_value(settings: Settings, dsn: str) -> None:
    content = "JobNumber,ShipmentNumber,note,note,,note_2\nJ1,S1,first,second,third,fourth\n"
    ingest(settings, drop(settings.imports_dir, "shipments_notes.csv", content))

    extra = fetchval(dsn, "SELECT _extra::text FROM staging.shipments")
    assert json.loads(extra) == {
        "note": "first",
        "note_3": "second",
        "column_5": "third",
        "note_2": "fourth",
    }
    [warnings] = [json.loads(r["warnings"]) for r in fetch(dsn, "SELECT warnings::text FROM ingest.files")]
    assert warnings == [
        {"unknown_fields": {"note": 1, "note_3": 1, "column_5": 1, "note_2": 1}},
        {
            "duplicate_fields": {"note": ["note", "note_3"]},
            "message": "header field 'note' appears 2 times; its values are kept in _extra as note, note_3",
        },
    ]


# --- memory and time under hostile volume (defects 2 and 5b) --------------------------------------


def gzip_of(parts: Iterator[bytes]) -> bytes:
    """Gzip of the concatenated parts, compressed block by block (a repeated block is cheap)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [packer.compress(part) for part in parts]
    return b"".join([*out, packer.flush()])


def repeated(block: bytes, total: int) -> Iterator[bytes]:
    for _ in range(total // len(block)):
        yield block


def run_ingest_measured(dsn: str, workdir: Path, name: str, content: bytes) -> tuple[int, float]:
    drop(workdir / "imports", name, content)
    run = run_cli_measured(dsn, workdir, "--ingest", "imports", timeout=600)
    return run.returncode, run.peak_mb


def error_class(workdir: Path, name: str) -> str:
    sidecar = workdir / "imports" / "failed" / f"{name}.error.json"
    return str(json.loads(sidecar.read_text(encoding="utf-8"))["error"])


def assert_stopped_early(dsn: str, total: int) -> None:
    """Failed as hopeless after a few statements' worth of bad rows, long before the end of the
    file.

    How many are read first depends on how far the reader is ahead (the estimate of the file's
    records uses the bytes read), so the count is checked by its bounds."""
    [(status, loaded, rejected, error)] = ledger(dsn)
    assert (status, loaded, rejected) == ("failed", 0, 0)
    match = re.fullmatch(
        r"(\d+) of the first \1 rows are bad \(100\.0%, above the 10\.0% allowed\)\. (.*)", str(error)
    )
    assert match, error
    assert 20_000 <= int(match[1]) <= total // 4, error
    assert match[2] == (
        "First problems: record 1 (line 2), column meter_id: a required value is missing; record 2 "
        "(line 3), column meter_id: a required value is missing; record 3 (line 4), column meter_id: "
        "a required value is missing. Fix the rows and drop the file again, or raise "
        "MAX_REJECT_RATIO (or the dataset's max_reject_ratio)"
    )


@pytest.mark.slow
def test_two_million_bad_rows_stop_early_in_bounded_memory(dsn: str, workdir: Path) -> None:
    content = METER_HEADER.encode() + b",,,\n" * 2_000_000

    code, peak = run_ingest_measured(dsn, workdir, "meter_bad.csv", content)

    assert code == 1
    assert peak <= 150, peak
    assert error_class(workdir, "meter_bad.csv") == "TooManyRejects"
    assert_stopped_early(dsn, 2_000_000)


@pytest.mark.slow
def test_a_gzip_of_a_gibibyte_of_bad_rows_stops_early_in_bounded_memory(dsn: str, workdir: Path) -> None:
    content = gzip_of(iter([METER_HEADER.encode(), *repeated(b",,,\n" * (MIB // 4), GIB)]))

    code, peak = run_ingest_measured(dsn, workdir, "meter_bad.csv.gz", content)

    assert code == 1
    assert peak <= 150, peak
    assert error_class(workdir, "meter_bad.csv.gz") == "TooManyRejects"
    assert_stopped_early(dsn, GIB // 4)


@pytest.mark.slow
def test_a_gzip_of_a_gibibyte_of_blank_lines_loads_its_rows(dsn: str, workdir: Path) -> None:
    good = b"M1,2024-01-15T00:00:00Z,1,\nM1,2024-01-15T00:10:00Z,2,\n"
    later = b"M2,2024-01-15T00:00:00Z,3,\r\n"
    blanks = repeated(b"\n" * MIB, GIB)
    content = gzip_of(iter([METER_HEADER.encode(), good, *blanks, later]))

    code, peak = run_ingest_measured(dsn, workdir, "meter_blank.csv.gz", content)

    assert code == 0
    assert peak <= 150, peak
    assert ledger(dsn) == [("loaded", 3, 0, None)]
    rows = fetch(
        dsn, "SELECT _record_no, meter_id, register_kwh::text FROM staging.meter_readings ORDER BY 1"
    )
    assert [tuple(r) for r in rows] == [(1, "M1", "1"), (2, "M1", "2"), (3, "M2", "3")]


@pytest.mark.slow
def test_a_gzip_holding_one_gibibyte_line_fails_naming_the_line(dsn: str, workdir: Path) -> None:
    good = b"M1,2024-01-15T00:00:00Z,1,\n"
    content = gzip_of(iter([METER_HEADER.encode(), good, *repeated(b"x" * MIB, GIB), b"\n"]))

    code, peak = run_ingest_measured(dsn, workdir, "meter_long.csv.gz", content)

    assert code == 1
    assert peak <= 150, peak
    assert error_class(workdir, "meter_long.csv.gz") == "MalformedFile"
    assert ledger(dsn) == [
        (
            "failed",
            0,
            0,
            "line 3 is longer than 1 MiB. Check that the file is a CSV file with one record a line",
        )
    ]
