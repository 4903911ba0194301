"""Physical lines → CSV records (csv_load.RecordReader), record and line numbers, header mapping."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.errors import EncodingError, FileChanged, MalformedFile, MissingColumns
from models.datasets import METER_READINGS, SHIPMENTS, DatasetSpec
from services.ingest import csv_load, rows
from services.ingest.csv_load import CsvRows, RecordReader, map_header, read_header
from services.ingest.files import FileFormat
from services.ingest.rows import Chunk, Target
from services.ingest.source import Source, Stream, numbered_lines

Record = tuple[list[str], int, int, bool]
Open = Callable[..., tuple[list[str], RecordReader]]

METER_HEADER_BYTES = b"meter_id,reading_at,register_kwh,power_w\n"
EXPECTED_METER = "Expected: meter_id, reading_at, register_kwh, power_w"
HEADER_HINT = "Header names ignore case, spaces and underscores; add aliases in datasets.toml"


@pytest.fixture
def open_csv(tmp_path: Path) -> Iterator[Open]:
    """Write `content` to a file, read its header and return a RecordReader on the rest."""
    fds: list[int] = []

    def open_(content: bytes, dataset: DatasetSpec = METER_READINGS) -> tuple[list[str], RecordReader]:
        path = tmp_path / f"f{len(fds)}.csv"
        path.write_bytes(content)
        fd = os.open(path, os.O_RDONLY)
        fds.append(fd)
        stream = Stream(fd, len(content), path.name, FileFormat("csv", gzip=False))
        header = read_header(stream, dataset.encoding, path.name)
        return header, RecordReader(stream, dataset, path.name)

    yield open_
    for fd in fds:
        os.close(fd)


def records(reader: RecordReader) -> list[Record]:
    return [(r, reader.start_line, reader.end_line, reader.unterminated) for r in reader.records()]


# --- RecordReader ---------------------------------------------------------------------------------


def test_plain_records_are_numbered_by_physical_line(open_csv: Open) -> None:
    header, reader = open_csv(b"a,b\n1,2\n3,4\n")

    assert header == ["a", "b"]
    assert records(reader) == [(["1", "2"], 2, 2, False), (["3", "4"], 3, 3, False)]


def test_last_line_without_newline(open_csv: Open) -> None:
    _, reader = open_csv(b"a,b\n1,2\n3,4")

    assert records(reader) == [(["1", "2"], 2, 2, False), (["3", "4"], 3, 3, False)]


def test_quoted_newlines_span_lines(open_csv: Open) -> None:
    _, reader = open_csv(b'a,b\n1,"x\ny"\n2,"p\n\nq\n"\n3,z\n')

    assert records(reader) == [
        (["1", "x\ny"], 2, 3, False),
        (["2", "p\n\nq\n"], 4, 7, False),
        (["3", "z"], 8, 8, False),
    ]


def test_crlf_line_ends_and_quoted_crlf(open_csv: Open) -> None:
    header, reader = open_csv(b'\xef\xbb\xbfa,b\r\n1,"x\r\ny"\r\n2,z\r\n')

    assert header == ["a", "b"]  # the BOM is dropped
    assert records(reader) == [(["1", "x\r\ny"], 2, 3, False), (["2", "z"], 4, 4, False)]


def test_escaped_quotes(open_csv: Open) -> None:
    _, reader = open_csv(b'a,b\n1,"say ""hi"""\n2,"""\n"""\n')

    assert records(reader) == [(["1", 'say "hi"'], 2, 2, False), (["2", '"\n"'], 3, 4, False)]


def test_blank_lines_are_skipped_but_counted(open_csv: Open) -> None:
    _, reader = open_csv(b"a,b\n\n1,2\r\n\r\n\n3,4\n\n")

    assert records(reader) == [(["1", "2"], 3, 3, False), (["3", "4"], 6, 6, False)]


def test_a_line_of_spaces_is_a_record_not_a_blank(open_csv: Open) -> None:
    _, reader = open_csv(b"a,b\n  \n1,2\n")

    assert records(reader) == [(["  "], 2, 2, False), (["1", "2"], 3, 3, False)]


def test_unterminated_quote_rejects_only_its_line_and_resumes(open_csv: Open) -> None:
    _, reader = open_csv(b'a,b\n1,a\n2,"b\n3,c\n4,d\n')

    assert records(reader) == [
        (["1", "a"], 2, 2, False),
        ([], 3, 3, True),
        (["3", "c"], 4, 4, False),
        (["4", "d"], 5, 5, False),
    ]


def test_unterminated_quote_on_the_last_line(open_csv: Open) -> None:
    _, reader = open_csv(b'a,b\n1,a\n2,"b')

    assert records(reader) == [(["1", "a"], 2, 2, False), ([], 3, 3, True)]


def test_a_quote_open_for_too_many_lines_is_given_up_early(
    open_csv: Open, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csv_load, "MAX_RECORD_LINES", 3)
    # Without the limit, the quote on line 7 would close the one opened on line 2.
    _, reader = open_csv(b'a,b\n1,"open\n2,x\n3,y\n4,z\n5,w\n6,"close\n')

    assert records(reader) == [
        ([], 2, 2, True),
        (["2", "x"], 3, 3, False),
        (["3", "y"], 4, 4, False),
        (["4", "z"], 5, 5, False),
        (["5", "w"], 6, 6, False),
        ([], 7, 7, True),
    ]


def test_a_quote_closed_within_the_limit_is_one_record(
    open_csv: Open, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csv_load, "MAX_RECORD_LINES", 3)
    _, reader = open_csv(b'a,b\n1,"l1\nl2\nl3"\n2,x\n')

    assert records(reader) == [(["1", "l1\nl2\nl3"], 2, 4, False), (["2", "x"], 5, 5, False)]


def test_invalid_utf8_names_byte_line_and_position(open_csv: Open) -> None:
    _, reader = open_csv(b"a,b\n1,2\n3,caf\xe9\n")

    with pytest.raises(EncodingError) as caught:
        records(reader)

    assert caught.value.message == "byte 0xe9 at line 3, position 6, is not valid utf-8"
    assert caught.value.line_no == 3


def test_declared_encoding_decodes_the_rows(open_csv: Open) -> None:
    dataset = METER_READINGS.model_copy(update={"encoding": "cp1252"})
    _, reader = open_csv("a,b\n1,café €5\n".encode("cp1252"), dataset)

    assert records(reader) == [(["1", "café €5"], 2, 2, False)]


def test_a_line_over_1_mib_fails_the_file_naming_the_line(open_csv: Open) -> None:
    _, reader = open_csv(b"a,b\n1,2\n" + b"9" * (1 << 20) + b",3\n4,5\n")

    with pytest.raises(MalformedFile) as caught:
        records(reader)

    assert (caught.value.message, caught.value.line_no) == ("line 3 is longer than 1 MiB", 3)


# --- read_header ----------------------------------------------------------------------------------


def test_header_with_an_unterminated_quote(open_csv: Open) -> None:
    with pytest.raises(MalformedFile) as caught:
        open_csv(b'a,"b\n1,2\n')

    assert str(caught.value) == "the header line has an unterminated quote. Fix the header"


def test_header_with_nul_bytes(open_csv: Open) -> None:
    with pytest.raises(MalformedFile) as caught:
        open_csv(b"a\x00,b\n")

    assert caught.value.message == "the header contains NUL bytes: this looks like a binary file"


# --- record and line numbers through CsvRows.chunks() ------------------------------------------


def target(dataset: DatasetSpec = METER_READINGS, zone: str = "UTC") -> Target:
    return Target(
        "staging", dataset, file_id=42, label="f.csv (#42)", source_timezone=zone, max_reject_ratio=1.0
    )


def test_chunks_number_records_and_lines_and_reject_what_python_can_tell(open_csv: Open) -> None:
    header, reader = open_csv(
        b"meter_id,reading_at,register_kwh,power_w,note\n"
        b"M1,2024-01-15T00:00:00Z,1,,a\n"  # record 1, line 2
        b"\n"  # line 3: blank, not a record
        b'"M\n2",2024-01-15T00:10:00Z,,5,\n'  # record 2, lines 4-5
        b'M3,"2024-01-15T00:20:00Z,3,,\n'  # record 3, line 6: the quote never closes
        b"M4,2024-01-15T00:30:00Z,,,\n"  # record 4, line 7: neither register nor power
        b",2024-01-15T00:40:00Z,4,,\n"  # record 5, line 8: required value missing
        b"M6,2024-01-15T00:50:00Z\n"  # record 6, line 9: too few fields
        b"M7,2024-01-15T01:00:00Z,7,,z\n"  # record 7, line 10
    )
    mapped = map_header(header, METER_READINGS, "f.csv")
    [chunk] = list(CsvRows(mapped, target()).chunks(reader))

    assert chunk.records == 7
    assert chunk.rows == [
        [42, 1, "M1", "2024-01-15T00:00:00Z", "1", None, '{"note": "a"}'],
        [42, 2, "M\n2", "2024-01-15T00:10:00Z", None, "5", '{"note": null}'],
        [42, 7, "M7", "2024-01-15T01:00:00Z", "7", None, '{"note": "z"}'],
    ]
    assert (chunk.record_nos, chunk.line_nos) == ([1, 2, 7], [2, 4, 10])
    assert [(r.record_no, r.line_no, r.column, r.value, r.reason) for r in chunk.rejects] == [
        (3, 6, None, None, "a quote opened here is never closed"),
        (4, 7, None, None, "needs a value in register_kwh or power_w"),
        (5, 8, "meter_id", None, "a required value is missing"),
        (6, 9, None, "M6,2024-01-15T00:50:00Z", "has 2 fields; the header has 5"),
    ]


def test_chunks_split_at_the_chunk_size(open_csv: Open, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rows, "CHUNK_ROWS", 2)
    header, reader = open_csv(
        METER_HEADER_BYTES + b"".join(b"M,2024-01-15T00:00:00Z,%d,\n" % i for i in range(5))
    )
    builder = CsvRows(map_header(header, METER_READINGS, "f.csv"), target())

    got = [(c.record_nos, c.line_nos, c.records) for c in builder.chunks(reader)]

    assert got == [([1, 2], [2, 3], 2), ([3, 4], [4, 5], 2), ([5], [6], 1)]


def test_local_times_are_converted_and_refused_in_python(open_csv: Open) -> None:
    header, reader = open_csv(
        METER_HEADER_BYTES + b"M,2024-07-01 12:00,1,\nM,2024-10-27 01:30,2,\nM,2024-07-01T12:00:00Z,3,\n"
    )
    builder = CsvRows(map_header(header, METER_READINGS, "f.csv"), target(zone="Europe/London"))
    [chunk] = list(builder.chunks(reader))

    assert [row[3] for row in chunk.rows] == ["2024-07-01T12:00:00+01:00", "2024-07-01T12:00:00Z"]
    assert [(r.record_no, r.line_no, r.column, r.value) for r in chunk.rejects] == [
        (2, 3, "reading_at", "2024-10-27 01:30"),
    ]


def test_row_at_line_maps_copy_lines_back_to_rows() -> None:
    chunk = Chunk(rows=[[1, 1, "a"], [1, 2, "b\r\nc"], [1, 3, None], [1, 4, "e\nf\ng"]])  # 1, 2, 1, 3 lines

    assert [chunk.row_at_line(n, 0) for n in range(1, 8)] == [0, 1, 1, 2, 3, 3, 3]
    # A COPY that began at row 1 numbers its lines from 1 again.
    assert [chunk.row_at_line(n, 1) for n in range(1, 7)] == [1, 1, 2, 3, 3, 3]
    assert [chunk.row_at_line(n, 3) for n in range(1, 4)] == [3, 3, 3]


def test_payload_round_trips_quotes_and_newlines() -> None:
    chunk = Chunk(rows=[[1, 1, 'say "hi"', None], [1, 2, "a\nb", "x,y"]])

    assert chunk.payload() == b'1,1,"say ""hi""",\n1,2,"a\nb","x,y"\n'
    assert chunk.payload(1) == b'1,2,"a\nb","x,y"\n'


# --- map_header -----------------------------------------------------------------------------------


def test_map_header_maps_by_name_alias_and_keeps_unknown_fields_as_extras() -> None:
    mapped = map_header(["TS", "Meter ID", "", "Power_W", "site"], METER_READINGS, "f.csv")

    assert [t.column if t else None for t in mapped.targets] == [
        "reading_at",
        "meter_id",
        None,
        "power_w",
        None,
    ]
    assert mapped.extras == [2, 4]
    assert [(i, c.column) for i, c in mapped.mapped()] == [(0, "reading_at"), (1, "meter_id"), (3, "power_w")]


def test_map_header_refuses_two_fields_for_one_column() -> None:
    with pytest.raises(MalformedFile) as caught:
        map_header(["meter_id", "reading_at", "Meter ID", "power_w"], METER_READINGS, "f.csv")

    assert str(caught.value) == (
        "header fields 'meter_id' and 'Meter ID' both map to column 'meter_id' of dataset meter_readings. "
        "Remove or rename one of them"
    )
    assert caught.value.line_no == 1


def test_map_header_refuses_an_alias_and_a_name_for_one_column() -> None:
    with pytest.raises(MalformedFile) as caught:
        map_header(["meter_id", "timestamp", "reading_at", "power_w"], METER_READINGS, "f.csv")

    assert caught.value.message == (
        "header fields 'timestamp' and 'reading_at' both map to column 'reading_at' of dataset meter_readings"
    )


def test_map_header_lists_missing_required_columns_found_and_expected() -> None:
    with pytest.raises(MissingColumns) as caught:
        map_header(["ShipName", "Ship Via"], SHIPMENTS, "s.csv")

    assert caught.value.message == (
        "required column(s) missing for dataset shipments: JobNumber, ShipmentNumber. "
        "Found: ShipName, Ship Via. Expected: JobNumber, ShipmentNumber, ShipName, ShipAddress1, "
        "ShipAddress2, ShipAddress3, ShipCity, ShipState, ShipZip, ShipCountry, ShipContact, "
        "Instructions, ShipPhone, Email, ShipVia, IsPartial, Shipped, ShipViaService, "
        "ScheduledShipDate, ScheduledShipQuantity"
    )
    assert caught.value.hint == HEADER_HINT


def test_map_header_requires_one_of_a_group() -> None:
    with pytest.raises(MissingColumns) as caught:
        map_header(["meter_id", "reading_at", "voltage"], METER_READINGS, "f.csv")

    assert str(caught.value) == (
        "required column(s) missing for dataset meter_readings: register_kwh or power_w. Found: meter_id, "
        f"reading_at, voltage. {EXPECTED_METER}. {HEADER_HINT}"
    )


def test_map_header_with_nothing_found() -> None:
    with pytest.raises(MissingColumns) as caught:
        map_header([], METER_READINGS, "f.csv")

    assert caught.value.message == (
        "required column(s) missing for dataset meter_readings: meter_id, reading_at, "
        f"register_kwh or power_w. Found: (nothing). {EXPECTED_METER}"
    )


def test_numbered_lines_count_on_from_where_reading_resumes_and_refuse_an_overlong_line() -> None:
    data = io.BytesIO(b"ab\ncd\n" + b"x" * (1 << 20) + b"\nnever read\n")
    lines = numbered_lines(data.readline, 1 << 20, "feed.ndjson", "NDJSON has one record a line", line_no=4)

    assert [next(lines), next(lines)] == [(5, b"ab\n"), (6, b"cd\n")]
    with pytest.raises(MalformedFile) as caught:
        next(lines)
    assert str(caught.value) == "line 7 is longer than 1 MiB. NDJSON has one record a line"
    assert (caught.value.file_name, caught.value.line_no) == ("feed.ndjson", 7)


# --- quotes as a spreadsheet reads them, CR-only files, blank runs (issue 12) ---------------------


@pytest.mark.parametrize(
    ("text", "inside", "expected"),
    [
        ("J1,S1,plain\n", False, (False, True)),
        ('J1,S1,12" pipe\n', False, (False, False)),  # odd count, yet complete
        ('J1,S1,12" pipe 3" long\n', False, (False, False)),
        ('"J1","a ""b"", c",""\n', False, (False, True)),
        ('J1,a "b" c,"open\n', False, (True, False)),  # even count, yet open
        ('J1,"open\n', False, (True, True)),
        ("still inside\n", True, (True, True)),
        ('closes" here,x\n', True, (False, False)),  # text after the closing quote
        ('closes",x\n', True, (False, True)),
        (' "x",y\n', False, (False, False)),  # after a space a quote is a character
    ],
)
def test_scan_quotes_reads_quotes_as_the_csv_module_does(
    text: str, inside: bool, expected: tuple[bool, bool]
) -> None:
    assert csv_load.scan_quotes(text, inside) == expected
    assert csv_load.scan_quotes(text.encode(), inside) == expected


def test_a_quote_inside_an_unquoted_field_is_a_character(open_csv: Open) -> None:
    _, reader = open_csv(b'a,b\nJ1,12" pipe\nJ2,12" pipe 3" long\nJ3,"x, ""y"""\n')

    assert records(reader) == [
        (["J1", '12" pipe'], 2, 2, False),
        (["J2", '12" pipe 3" long'], 3, 3, False),
        (["J3", 'x, "y"'], 4, 4, False),
    ]


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_cr_only_line_ends_read_as_lines(tmp_path: Path, compressed: bool) -> None:
    content = b'a,b\r1,"x\ny"\r\r2,z'
    path = tmp_path / "mac.csv"
    path.write_bytes(gzip.compress(content, mtime=0) if compressed else content)
    fd = os.open(path, os.O_RDONLY)
    try:
        stream = Stream(fd, path.stat().st_size, path.name, FileFormat("csv", gzip=compressed))
        header = read_header(stream, "utf-8", path.name)
        got = records(RecordReader(stream, METER_READINGS, path.name))
    finally:
        os.close(fd)

    assert header == ["a", "b"]
    assert got == [(["1", "x\ny"], 2, 3, False), (["2", "z"], 5, 5, False)]


def test_a_crlf_file_is_not_taken_for_cr_only(open_csv: Open) -> None:
    _, reader = open_csv(b'a,b\r\n1,"x\ry"\r\n')

    assert records(reader) == [(["1", "x\ry"], 2, 2, False)]


def test_long_runs_of_blank_lines_are_skipped_and_counted(open_csv: Open) -> None:
    mib = 1 << 20
    _, reader = open_csv(b"a,b\n1,2\n" + b"\n" * (3 * mib) + b"\r\n" * mib + b"3,4\n\n")

    assert records(reader) == [(["1", "2"], 2, 2, False), (["3", "4"], 3 + 4 * mib, 3 + 4 * mib, False)]


def test_skip_line_ends_stops_at_a_line_that_starts_with_a_cr(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(b"\n\r\n\rX\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        stream = Stream(fd, 6, path.name, FileFormat("csv", gzip=False))
        assert (stream.skip_line_ends(), stream.readline(100), stream.skip_line_ends()) == (2, b"\rX\n", 0)
    finally:
        os.close(fd)


def test_checked_blocks_refuses_a_long_line_and_a_quote_copy_reads_otherwise(tmp_path: Path) -> None:
    def pieces(content: bytes) -> list[bytes]:
        path = tmp_path / "f.csv"
        path.write_bytes(content)
        fd = os.open(path, os.O_RDONLY)
        try:
            stream = Stream(fd, len(content), path.name, FileFormat("csv", gzip=False))
            read_header(stream, "utf-8", "f.csv")
            return list(csv_load.checked_blocks(stream, "f.csv"))
        finally:
            os.close(fd)

    good = b'1,"a\nb"\n' + b'2,"x ""y"""\n' * (1 << 18) + b"3,y"
    assert b"".join(pieces(b"a,b\n" + good)) == good
    with pytest.raises(MalformedFile) as long_line:
        pieces(b"a,b\n1,x\n2,x\n" + b"y" * (1 << 20) + b"\n")
    assert (str(long_line.value), long_line.value.line_no) == (
        "line 4 is longer than 1 MiB. Check that the file is a CSV file with one record a line",
        4,
    )
    with pytest.raises(csv_load.QuotesCopyReadsDifferently):
        pieces(b'a,b\n1,x\n2,12" pipe\n')
    # A quote at the end of a block is read with the rest of its line, in the next block.
    filler = b"1,x\n" * 262_141 + b"1,xxxx\n"
    assert len(filler) + len(b'2,12"') == 1 << 20
    split = b"a,b\n" + filler + b'2,12" pipe\n'
    with pytest.raises(csv_load.QuotesCopyReadsDifferently):
        pieces(split)


def test_repeated_and_empty_unknown_header_names_get_their_own_keys() -> None:
    fields = ["meter_id", "reading_at", "power_w", "note", "note", "", "note_2", "note"]
    header = map_header(fields, METER_READINGS, "f.csv")

    assert csv_load.extra_names(header) == ["note", "note_3", "column_6", "note_2", "note_4"]
    assert csv_load.extras_warnings(header, 5) == [
        {"unknown_fields": {"note": 5, "note_3": 5, "column_6": 5, "note_2": 5, "note_4": 5}},
        {
            "duplicate_fields": {"note": ["note", "note_3", "note_4"]},
            "message": "header field 'note' appears 3 times; its values are kept in _extra as "
            "note, note_3, note_4",
        },
    ]


def test_the_bytes_are_hashed_again_unless_a_lease_keeps_writers_out(tmp_path: Path) -> None:
    content = b"a,b\n1,2\n"
    path = tmp_path / "f.csv"
    path.write_bytes(content)
    fd = os.open(path, os.O_RDONLY)
    try:
        sha256 = hashlib.sha256(content).hexdigest()
        other = hashlib.sha256(b"other bytes").hexdigest()
        fmt = FileFormat("csv", gzip=False)

        Source(fd, len(content), sha256, "f.csv", fmt).stream().verify(sha256)
        with pytest.raises(
            FileChanged, match=r"^f.csv changed while it was loaded\. It was still being written"
        ):
            Source(fd, len(content), other, "f.csv", fmt).stream().verify(other)
        leased = Source(fd, len(content), other, "f.csv", fmt, leased=True).stream()
        assert (leased.read(), leased.raw.hashed) == (content, False)
        leased.verify(other)  # the lease stands for the bytes
    finally:
        os.close(fd)
