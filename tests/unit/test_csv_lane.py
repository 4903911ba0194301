"""The CSV fast path's pure parts: lines read whole, COPY lines built, bad lines set aside, and the
rows PostgreSQL skipped named (services/ingest/csv_lane.py). Real files, no database."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.errors import MalformedFile
from models.datasets import DatasetRegistry
from services.ingest import csv_lane
from services.ingest.csv_lane import Lane, LaneCannotName, LineReader, QuoteRunsOn
from services.ingest.csv_load import map_header, read_header
from services.ingest.formats import format_of
from services.ingest.rows import Reject, Target
from services.ingest.source import Stream

HEADER = b"meter_id,reading_at,register_kwh,power_w\n"
DATASET = DatasetRegistry.from_toml({}).get("meter_readings")


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[list[int]]:
    fds: list[int] = []
    yield fds
    for fd in fds:
        os.close(fd)


def stream_of(tmp_path: Path, opened: list[int], content: bytes) -> Stream:
    path = tmp_path / "meter.csv"
    path.write_bytes(content)
    fd = os.open(path, os.O_RDONLY)
    opened.append(fd)
    return Stream(fd, len(content), "meter.csv", format_of(path.name))


def lane_of(tmp_path: Path, opened: list[int], body: bytes) -> Lane:
    stream = stream_of(tmp_path, opened, HEADER + body)
    header = map_header(read_header(stream, "utf-8", "meter.csv"), DATASET, "meter.csv")
    lane = Lane(stream, header, Target("staging", DATASET, 7, "meter.csv", "UTC", 0.5))
    lane.keep_sent = True
    return lane


def all_lines(reader: LineReader) -> list[tuple[list[bytes], int]]:
    out = []
    while (block := reader.next_block()) is not None:
        assert block.data == b"\n".join(block.lines)
        assert block.count == len(block.lines)
        out.append((block.lines, block.first_line))
    return out


@pytest.mark.parametrize("read_size", [5, 1 << 20])
def test_lines_come_whole_whatever_the_reads(
    tmp_path: Path, opened: list[int], monkeypatch: pytest.MonkeyPatch, read_size: int
) -> None:
    monkeypatch.setattr(csv_lane, "READ_SIZE", read_size)
    monkeypatch.setattr(csv_lane, "BLOCK_LINES", 2)
    stream = stream_of(tmp_path, opened, b"a,b\n1,2\n333,444\n\n5,6")
    stream.readline(100)  # the header

    reads = all_lines(LineReader(stream, "x"))

    numbered = [(first + i, line) for lines, first in reads for i, line in enumerate(lines)]
    assert numbered == [(2, b"1,2"), (3, b"333,444"), (4, b""), (5, b"5,6")]
    assert max(len(lines) for lines, _ in reads) <= 2


def test_the_last_line_of_a_crlf_file_ends_like_the_others(tmp_path: Path, opened: list[int]) -> None:
    stream = stream_of(tmp_path, opened, b"a,b\r\n1,2\r\n3,4")
    stream.readline(100)

    assert all_lines(LineReader(stream, "x")) == [([b"1,2\r"], 2), ([b"3,4\r"], 3)]


@pytest.mark.parametrize("content", [b"a\n1\n22\n" + b"x" * 11 + b"\n4\n", b"a\n1\n22\n" + b"x" * 11])
def test_a_line_over_the_limit_is_named(
    tmp_path: Path, opened: list[int], monkeypatch: pytest.MonkeyPatch, content: bytes
) -> None:
    monkeypatch.setattr(csv_lane, "MAX_LINE_BYTES", 10)
    monkeypatch.setattr(csv_lane, "READ_SIZE", 4)
    stream = stream_of(tmp_path, opened, content)
    stream.readline(100)

    with pytest.raises(MalformedFile) as caught:
        all_lines(LineReader(stream, "x"))
    assert caught.value.line_no == 4


def test_a_clean_block_goes_out_behind_file_and_record(tmp_path: Path, opened: list[int]) -> None:
    lane = lane_of(tmp_path, opened, b"M1,2024-01-15T00:00:00Z,1.5,1\nM2,2024-01-15T00:10:00Z,2.5,2\n")

    assert lane.next_block() == b"7,1,M1,2024-01-15T00:00:00Z,1.5,1\n7,2,M2,2024-01-15T00:10:00Z,2.5,2\n"
    assert lane.next_block() is None
    assert (lane.records, lane.statement.records, lane.statement.rejects, lane.finished) == (2, 2, [], True)


def test_bad_lines_are_set_aside_and_blank_lines_skipped(tmp_path: Path, opened: list[int]) -> None:
    lane = lane_of(
        tmp_path,
        opened,
        b"M1,2024-01-15T00:00:00Z,1.5,1\n\nM2,2024-01-15T00:10:00Z\n,2024-01-15T00:20:00Z,3.5,3\n"
        b'"M4",2024-01-15T00:30:00Z,,4\n',
    )

    assert lane.next_block() == b'7,1,M1,2024-01-15T00:00:00Z,1.5,1\n7,4,"M4",2024-01-15T00:30:00Z,,4\n'
    assert lane.statement.rejects == [
        Reject(2, 4, None, "M2,2024-01-15T00:10:00Z", "has 2 fields; the header has 4", "meter_readings"),
        Reject(3, 5, "meter_id", None, "a required value is missing", "meter_readings"),
    ]
    assert (lane.records, lane.statement.records) == (4, 2)


def test_lines_of_the_wrong_shape_are_set_aside_from_a_block_seen_whole(
    tmp_path: Path, opened: list[int]
) -> None:
    lane = lane_of(
        tmp_path,
        opened,
        b"".join(b"M%d,2024-01-15T00:00:00Z,%d,1\r\n" % (i, i) for i in range(1, 10))
        + b"M10,2024-01-15T00:00:00Z,10,1,9\r\nM11,2024-01-15T00:00:00Z\r\nM12,2024-01-15T00:00:00Z,12,1\r\n"
        + b"M13,2024-01-15T00:00:00Z,13,1",
    )

    payload = lane.next_block()

    # Records 1–9 and 12 are sent: the numbers of the block take two digits.
    assert payload is not None
    assert payload.split(b"\n")[:2] == [
        b"7,01,M1,2024-01-15T00:00:00Z,1,1\r",
        b"7,02,M2,2024-01-15T00:00:00Z,2,1\r",
    ]
    assert payload.split(b"\n")[8:] == [
        b"7,09,M9,2024-01-15T00:00:00Z,9,1\r",
        b"7,12,M12,2024-01-15T00:00:00Z,12,1\r",
        b"",
    ]
    assert lane.next_block() == b"7,13,M13,2024-01-15T00:00:00Z,13,1\r\n"  # the last line, its CR added
    assert lane.statement.rejects == [
        Reject(
            10,
            11,
            None,
            "M10,2024-01-15T00:00:00Z,10,1,9",
            "has 5 fields; the header has 4",
            "meter_readings",
        ),
        Reject(11, 12, None, "M11,2024-01-15T00:00:00Z", "has 2 fields; the header has 4", "meter_readings"),
    ]
    assert (lane.records, lane.statement.records) == (13, 11)


def test_the_rows_postgresql_skipped_are_named_by_record_and_line(tmp_path: Path, opened: list[int]) -> None:
    """Notices count the statement's lines from 1; blank lines and set-aside lines shift them."""
    lane = lane_of(
        tmp_path,
        opened,
        b"M1,2024-01-15T00:00:00Z,1.5,1\n\n\nM2,2024-01-15T00:10:00Z,x,2\nM3,bad\n"
        b'M4,2024-01-15T00:30:00Z,4.5,"4,5"\n',
    )
    while lane.next_block() is not None:
        pass

    assert lane.skipped(lane.statement, [(2, "register_kwh"), (3, "power_w")]) == [
        Reject(2, 5, "register_kwh", "x", "not a number", "meter_readings"),
        Reject(4, 7, "power_w", "4,5", "not a number", "meter_readings"),
    ]


def test_a_skipped_row_beside_a_record_over_two_lines_cannot_be_named(
    tmp_path: Path, opened: list[int]
) -> None:
    lane = lane_of(tmp_path, opened, b'"M\n1",2024-01-15T00:00:00Z,1.5,1\nM2,2024-01-15T00:10:00Z,x,2\n')
    while lane.next_block() is not None:
        pass

    assert lane.statement.sent == [
        b'7,1,"M\n1",2024-01-15T00:00:00Z,1.5,1\n7,2,M2,2024-01-15T00:10:00Z,x,2\n'
    ]
    with pytest.raises(LaneCannotName):
        lane.skipped(lane.statement, [(3, "register_kwh")])


def test_a_statement_ends_only_between_records(
    tmp_path: Path, opened: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csv_lane, "SEGMENT_BYTES", 1)
    monkeypatch.setattr(csv_lane, "BLOCK_LINES", 1)
    lane = lane_of(tmp_path, opened, b'"M\n1",2024-01-15T00:00:00Z,1.5,1\nM2,2024-01-15T00:10:00Z,2,2\n')

    lane.next_block()
    assert not lane.statement_full()  # the quoted record is still open
    lane.next_block()
    assert lane.statement_full()
    first = lane.close_statement()
    assert (first.records, first.read, first.multi_line) == (1, 1, True)
    assert (lane.next_block(), lane.statement.records) == (b"7,2,M2,2024-01-15T00:10:00Z,2,2\n", 1)
    assert lane.close_statement().line_of(2) == 4


@pytest.mark.parametrize(("limit", "size"), [(3, 16 << 20), (10_000, 60)], ids=["lines", "bytes"])
def test_a_quote_that_never_closes_stops_the_pass_before_its_lines_pile_up(
    tmp_path: Path, opened: list[int], monkeypatch: pytest.MonkeyPatch, limit: int, size: int
) -> None:
    monkeypatch.setattr(csv_lane, "MAX_RECORD_LINES", limit)
    monkeypatch.setattr(csv_lane, "MAX_RECORD_BYTES", size)
    monkeypatch.setattr(csv_lane, "BLOCK_LINES", 1)
    lane = lane_of(tmp_path, opened, b'"M1,2024-01-15T00:00:00Z,1.5,1\n' + b"more text of the quote\n" * 10)

    with pytest.raises(QuoteRunsOn):
        while lane.next_block() is not None:
            pass
    assert lane.records == 1
