"""The CSV fast path's one pass (services/ingest/csv_lane.py): bad rows set aside or skipped
without reading the file twice, named exactly as the robust path names them, in COPY statements
small enough to keep memory bounded."""

from __future__ import annotations

import logging

import pytest

from app.datasets import load_registry
from app.settings import Settings
from services.ingest import csv_lane
from tests.integration.helpers import METER_HEADER, drop, ingest
from tests.pg import fetch

GOOD = "M{n},2024-01-15T00:{n:02d}:00Z,{n}.5,{n}\n"

# Every kind of bad line, between good ones and blank lines (CRLF and LF mixed in blank lines only).
LINES = [
    GOOD.format(n=1),  # record 1, line 2
    "M2,2024-01-15T00:02:00Z,abc,2\n",  # 2, line 3: a bad number (PostgreSQL skips it)
    "\n",  # line 4: blank
    "M3,not a time,3.5,3\n",  # 3, line 5: a bad timestamp (PostgreSQL)
    "M4,2024-01-15T00:04:00Z,4.5\n",  # 4, line 6: a field too few
    "M5,2024-01-15T00:05:00Z,5.5,5,extra\n",  # 5, line 7: a field too many
    ",2024-01-15T00:06:00Z,6.5,6\n",  # 6, line 8: the meter missing
    "  ,2024-01-15T00:07:00Z,7.5,7\n",  # 7, line 9: the meter blank
    "M8,2024-01-15T00:08:00Z,,\n",  # 8, line 10: neither register_kwh nor power_w
    "M9,2024-01-15T00:09:00Z,9.5,\x00\n",  # 9, line 11: a NUL byte
    "\n",  # line 12
    "\n",  # line 13
    GOOD.format(n=10),  # 10, line 14
    "M11,2024-01-15T00:11:00Z,11.5,1e999999\n",  # 11, line 15: out of numeric's range (PostgreSQL)
    'M12,2024-01-15T00:12:00Z,"12.5",12\n',  # 12, line 16: quoted, good
    "M13,2024-01-15T00:13:00Z,,13\n",  # 13, line 17: good, an empty optional value
    GOOD.format(n=14).rstrip("\n"),  # 14, line 18: no newline at the end
]
LOADED = [1, 10, 12, 13, 14]
REJECTS = [
    (2, 3, "register_kwh", "abc", "not a number"),
    (3, 5, "reading_at", "not a time", "not a timestamp (ISO 8601, e.g. 2024-01-15T00:30:00Z)"),
    (4, 6, None, "M4,2024-01-15T00:04:00Z,4.5", "has 3 fields; the header has 4"),
    (5, 7, None, "M5,2024-01-15T00:05:00Z,5.5,5,extra", "has 5 fields; the header has 4"),
    (6, 8, "meter_id", None, "a required value is missing"),
    (7, 9, "meter_id", "  ", "a required value is missing"),
    (8, 10, None, None, "needs a value in register_kwh or power_w"),
    (9, 11, None, None, "contains a NUL byte (binary data?)"),
    (11, 15, "power_w", "1e999999", "not a number"),
]


def load(settings: Settings, dsn: str, content: str) -> tuple[list[int], list[tuple[object, ...]]]:
    settings.max_reject_ratio = 0.9
    result = ingest(settings, drop(settings.imports_dir, "meter_lane.csv", METER_HEADER + content))
    assert [(o.status, o.rows_rejected) for o in result.outcomes] == [("loaded_with_rejects", len(REJECTS))]
    loaded = [r[0] for r in fetch(dsn, "SELECT _record_no FROM staging.meter_readings ORDER BY 1")]
    rejects = fetch(
        dsn, "SELECT record_no, line_no, column_name, value, reason FROM ingest.rejected_rows ORDER BY 1"
    )
    return loaded, [tuple(r) for r in rejects]


@pytest.mark.parametrize("line_ends", ["\n", "\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("statement_bytes", [8 << 20, 64], ids=["one_statement", "many_statements"])
def test_bad_rows_of_every_kind_are_set_aside_in_one_pass(
    settings: Settings,
    dsn: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    line_ends: str,
    statement_bytes: int,
) -> None:
    monkeypatch.setattr(csv_lane, "SEGMENT_BYTES", statement_bytes)
    caplog.set_level(logging.INFO, logger="services.ingest")

    loaded, rejects = load(settings, dsn, "".join(LINES).replace("\n", line_ends))

    assert loaded == LOADED
    assert rejects == REJECTS
    assert "(fast path)" in caplog.text and "row by row" not in caplog.text


def test_rejects_are_written_statement_by_statement(
    settings: Settings, dsn: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A statement ends once it holds SEGMENT_REJECTS rejects: held rejects stay bounded."""
    monkeypatch.setattr(csv_lane, "SEGMENT_REJECTS", 2)
    monkeypatch.setattr(csv_lane, "BLOCK_LINES", 3)
    caplog.set_level(logging.INFO, logger="services.ingest")

    loaded, rejects = load(settings, dsn, "".join(LINES))

    assert (loaded, rejects) == (LOADED, REJECTS)
    assert "(fast path)" in caplog.text


def test_a_skipped_value_beside_a_record_over_two_lines_goes_row_by_row(
    settings: Settings, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Line numbers in PostgreSQL's notices count the lines inside quotes: the robust path names
    that row instead."""
    caplog.set_level(logging.INFO, logger="services.ingest")
    content = '"M\n0",2024-01-15T00:00:00Z,0.5,0\n' + "".join(LINES)

    settings.max_reject_ratio = 0.9
    result = ingest(settings, drop(settings.imports_dir, "meter_lane.csv", METER_HEADER + content))

    assert [(o.status, o.rows_loaded, o.rows_rejected) for o in result.outcomes] == [
        ("loaded_with_rejects", 6, len(REJECTS))
    ]
    assert "COPY refused the file as it is (LaneCannotName)" in caplog.text
    rejects = fetch(dsn, "SELECT record_no, line_no, column_name FROM ingest.rejected_rows ORDER BY 1")
    assert [tuple(r) for r in rejects] == [(r + 1, line + 2, column) for r, line, column, _, _ in REJECTS]


def test_a_record_over_two_lines_in_a_clean_file_stays_on_the_fast_path(
    settings: Settings, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.ingest")
    content = GOOD.format(n=1) + '"M\n2",2024-01-15T00:02:00Z,2.5,2\n\n' + GOOD.format(n=3)

    result = ingest(settings, drop(settings.imports_dir, "meter_lane.csv", METER_HEADER + content))

    assert [(o.status, o.rows_loaded) for o in result.outcomes] == [("loaded", 3)]
    rows = fetch(dsn, "SELECT _record_no, meter_id FROM staging.meter_readings ORDER BY 1")
    assert [tuple(r) for r in rows] == [(1, "M1"), (2, "M\n2"), (3, "M3")]
    assert "(fast path)" in caplog.text and "row by row" not in caplog.text


def test_a_semicolon_file_with_bad_rows_is_read_once(
    settings: Settings, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.ingest")
    settings.max_reject_ratio = 0.9
    content = (
        "meter_id;reading_at;register_kwh;power_w\n"
        "M1;2024-01-15T00:00:00Z;1.5;1\n"
        "M2;2024-01-15T00:10:00Z;x;2\n"
        "M3;2024-01-15T00:20:00Z;3.5\n"
        "M4;2024-01-15T00:30:00Z;4.5;4\n"
    )
    # A `;` file may write a lone decimal comma, which the robust path converts: declaring the
    # decimal mark lets PostgreSQL type every value, so bad ones are skipped in the one pass.
    settings.datasets_file.write_text('[datasets.meter_readings]\ndecimal = "."\n')

    result = ingest(
        settings, drop(settings.imports_dir, "meter_semi.csv", content), registry=load_registry(settings)
    )

    assert [(o.status, o.rows_loaded, o.rows_rejected) for o in result.outcomes] == [
        ("loaded_with_rejects", 2, 2)
    ]
    rejects = fetch(dsn, "SELECT record_no, line_no, column_name, value, reason FROM ingest.rejected_rows")
    assert sorted(tuple(r) for r in rejects) == [
        (2, 3, "register_kwh", "x", "not a number"),
        (3, 4, None, "M3;2024-01-15T00:20:00Z;3.5", "has 3 fields; the header has 4"),
    ]


def test_a_bad_quoted_line_in_a_later_statement_hands_the_file_to_the_robust_path(
    settings: Settings, dsn: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Quoted lines are checked by COPY alone: a missing meter stops the third statement, the
    two before it roll back with it, and the robust path loads the file from the start."""
    monkeypatch.setattr(csv_lane, "SEGMENT_BYTES", 64)
    monkeypatch.setattr(csv_lane, "BLOCK_LINES", 1)
    caplog.set_level(logging.INFO, logger="services.ingest")
    settings.max_reject_ratio = 0.9
    content = "".join(GOOD.format(n=n) for n in range(1, 6)) + '"",2024-01-15T00:06:00Z,6.5,6\n'

    result = ingest(settings, drop(settings.imports_dir, "meter_lane.csv", METER_HEADER + content))

    assert [(o.status, o.rows_loaded, o.rows_rejected) for o in result.outcomes] == [
        ("loaded_with_rejects", 5, 1)
    ]
    assert "COPY refused the file as it is (NotNullViolationError)" in caplog.text
    assert "(robust path)" in caplog.text
    rows = fetch(dsn, "SELECT _record_no, meter_id FROM staging.meter_readings ORDER BY 1")
    assert [tuple(r) for r in rows] == [(n, f"M{n}") for n in range(1, 6)]
    rejects = fetch(dsn, "SELECT record_no, line_no, column_name, reason FROM ingest.rejected_rows")
    assert [tuple(r) for r in rejects] == [(6, 7, "meter_id", "a required value is missing")]


def test_a_hopeless_file_stops_while_the_next_statement_waits(
    settings: Settings, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lane waits to end a statement until the one before is written; giving up in between
    must stop it all the same."""
    monkeypatch.setattr(csv_lane, "SEGMENT_REJECTS", 2_000)
    monkeypatch.setattr(csv_lane, "BLOCK_LINES", 1_000)
    content = ",2024-01-15T00:00:00Z,1,1\n" * 30_000

    result = ingest(settings, drop(settings.imports_dir, "meter_lane.csv", METER_HEADER + content))

    [outcome] = result.outcomes
    assert (outcome.status, outcome.rows_loaded) == ("failed", 0)
    assert (outcome.error or "").startswith("10000 of the first 10000 rows are bad (100.0%")


def test_a_quote_that_never_closes_hands_the_file_to_the_robust_path(
    settings: Settings, dsn: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The robust path rejects the line the quote opened on and reads on from the next."""
    monkeypatch.setattr(csv_lane, "MAX_RECORD_LINES", 3)
    caplog.set_level(logging.INFO, logger="services.ingest")
    settings.max_reject_ratio = 0.9
    content = GOOD.format(n=1) + '"M2,2024-01-15T00:02:00Z,2.5,2\n' + GOOD.format(n=3) * 5

    result = ingest(settings, drop(settings.imports_dir, "meter_lane.csv", METER_HEADER + content))

    assert "COPY refused the file as it is (QuoteRunsOn)" in caplog.text
    assert [(o.status, o.rows_loaded, o.rows_rejected) for o in result.outcomes] == [
        ("loaded_with_rejects", 6, 1)
    ]
