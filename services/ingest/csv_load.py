"""CSV into a staging table: the header, the robust path, and what the fast path shares with it.

The fast path (csv_lane.py) sends the file to `COPY` in one pass, setting bad lines aside as it
goes. If PostgreSQL stops it all the same (a bad quoted line, a bad encoding, PostgreSQL 16 and a
bad value), that pass rolls back to a savepoint and the robust path reads the file again in
Python: it checks structure and required values, lets PostgreSQL type the values
(`ON_ERROR ignore` tells which rows it skipped and why), keeps every good row and records every
bad one.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import json
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from typing import AnyStr

import asyncpg

from app.db import unless_connection_lost
from app.errors import MalformedFile, MissingColumns
from models.datasets import ColumnSpec, DatasetSpec
from models.headers import HeaderMap, HeaderProblem, match_header
from services.ingest import ledger
from services.ingest.csv_dialect import Dialect
from services.ingest.rows import (
    CHUNK_ROWS,
    Chunk,
    LoadStats,
    Reject,
    RobustCopy,
    RowPlan,
    Target,
    Value,
    check_ratio,
    chunks_of,
    prefetched,
    stop_early_if_hopeless,
    writes_numbers_its_own_way,
)
from services.ingest.source import READ_SIZE, Stream, decode_line, line_too_long
from services.ingest.values import is_fixed_offset

MAX_LINE_BYTES = 1 << 20
ONE_RECORD_A_LINE = "Check that the file is a CSV file with one record a line"
MAX_RECORD_LINES = 10_000
COMMA = Dialect()
_NUMBERS = ("numeric", "integer")
csv.field_size_limit(MAX_LINE_BYTES)

# Python codec name → PostgreSQL encoding name, for the encodings COPY can read directly.
PG_ENCODINGS = {
    "utf-8": "UTF8",
    "iso8859-1": "LATIN1",
    "iso8859-15": "LATIN9",
    "cp1252": "WIN1252",
    "cp1250": "WIN1250",
    "ascii": "SQL_ASCII",
}


def read_header(stream: Stream, encoding: str, label: str, dialect: Dialect = COMMA) -> list[str]:
    """The header line's fields (CR-only files read CR as LF); MalformedFile if it is no header."""
    return parse_header(read_header_line(stream, encoding, label), dialect, label)


def read_header_line(stream: Stream, encoding: str, label: str) -> str:
    """The first line, decoded and checked to be text (not yet split into fields)."""
    if _ends_lines_with_cr(stream.peek(MAX_LINE_BYTES + 1)):
        stream.read_cr_as_lf()
    raw = stream.readline(MAX_LINE_BYTES + 1)
    if len(raw) > MAX_LINE_BYTES:
        raise MalformedFile(
            f"the first line is longer than {MAX_LINE_BYTES >> 20} MiB, so it is not a header",
            hint="Check that the file is a CSV file with a header line",
            file_name=label,
            line_no=1,
        )
    text = decode_line(raw, encoding, 1, label)
    if "\x00" in text:
        raise MalformedFile(
            "the header contains NUL bytes: this looks like a binary file",
            hint="Drop CSV text files (or set the dataset's encoding)",
            file_name=label,
            line_no=1,
        )
    return text


def parse_header(text: str, dialect: Dialect, label: str) -> list[str]:
    """The fields of a decoded header line, by the dialect."""
    if scan_quotes(text, False, dialect)[0]:
        raise MalformedFile(
            "the header line has an unterminated quote", hint="Fix the header", file_name=label, line_no=1
        )
    try:
        return next(csv.reader([text], delimiter=dialect.delimiter, quotechar=dialect.quote), [])
    except csv.Error as exc:
        raise MalformedFile(f"line 1: {exc}", hint="Fix the header", file_name=label, line_no=1) from None


def _ends_lines_with_cr(head: bytes) -> bool:
    """The first line ends with a CR that no LF follows (old Mac and some Excel exports)."""
    cr, lf = head.find(b"\r"), head.find(b"\n")
    return cr >= 0 and (lf < 0 or cr < lf) and head[cr + 1 : cr + 2] != b"\n"


def scan_quotes(text: AnyStr, inside: bool, dialect: Dialect = COMMA) -> tuple[bool, bool]:
    """Walk the quotes of whole lines as the csv module (and a spreadsheet) reads them: a quote
    opens a quoted field only at a field's start; elsewhere it is a character of the value.

    `inside` says whether a quoted field is open where `text` starts. Returns whether one is
    still open at its end (the record goes on to the next line), and whether PostgreSQL's CSV
    COPY, which toggles quoting at any quote, reads every quote the same way.
    """
    quote_char, ends_text = dialect.quote, dialect.delimiter + "\r\n"
    quote = text[:0] + (quote_char if isinstance(text, str) else quote_char.encode())
    ends = text[:0] + (ends_text if isinstance(text, str) else ends_text.encode())
    same, i = True, 0
    while True:
        j = text.find(quote, i)
        if j < 0:
            return inside, same
        if inside:
            if text[j + 1 : j + 2] == quote:  # "" inside quotes: one quote
                i = j + 2
                continue
            inside, i = False, j + 1
            if text[i : i + 1] and text[i : i + 1] not in ends:
                same = False  # text after a closing quote: the csv module keeps it, quotes and all
        elif j == 0 or text[j - 1 : j] in ends:
            inside, i = True, j + 1
        else:
            same, i = False, j + 1  # a quote inside an unquoted field: a character of the value


def map_header(fields: list[str], dataset: DatasetSpec, label: str) -> HeaderMap:
    """The header's mapping onto the dataset, or why the file cannot be loaded."""
    try:
        return match_header(fields, dataset)
    except HeaderProblem as exc:
        if exc.kind == "clash":
            raise MalformedFile(
                exc.message, hint="Remove or rename one of them", file_name=label, line_no=1
            ) from None
        raise MissingColumns(
            exc.message,
            hint="Header names ignore case, spaces and underscores; add aliases in datasets.toml",
            file_name=label,
            line_no=1,
        ) from None


def copy_possible(header: HeaderMap, target: Target) -> bool:
    """COPY can read the file: every field known, and only numbers written the dataset's own way
    (which SQL can convert) left to convert."""
    mapped = header.mapped()
    return (
        not header.extras
        and codecs.lookup(target.dataset.encoding).name in PG_ENCODINGS
        and not any(c.formats for _, c in mapped)
        and (is_fixed_offset(target.source_timezone) or not any(c.type == "timestamptz" for _, c in mapped))
    )


def numbers_to_convert(header: HeaderMap, target: Target) -> list[ColumnSpec]:
    """The number columns whose values the dataset writes its own way (`1.234,56`)."""
    if not writes_numbers_its_own_way(target.dataset):
        return []
    return [c for _, c in header.mapped() if c.type in _NUMBERS]


class QuotesCopyReadsDifferently(asyncpg.DataError):  # type: ignore[misc]
    """The file has a quote that PostgreSQL's CSV COPY would read as quoting and a spreadsheet
    as a character (`12" pipe`): the file leaves the fast path, like a file COPY refuses."""


async def copy_fast(
    conn: asyncpg.Connection, stream: Stream, header: HeaderMap, target: Target, *, into: str | None = None
) -> int:
    """COPY the rest of the stream (the header is consumed) straight into the staging table (or
    into the temporary table `into`)."""
    columns = [c.column for _, c in header.mapped()]
    dialect = Dialect.of(target.dataset)
    pieces = checked_blocks(stream, target.label, dialect)

    async def blocks() -> AsyncIterator[bytes]:
        while data := await asyncio.to_thread(next, pieces, b""):
            yield data

    copy = conn.copy_to_table(
        into or target.dataset.table,
        schema_name=None if into else target.schema,
        source=blocks(),
        columns=columns,
        format="csv",
        header=False,
        encoding=PG_ENCODINGS[codecs.lookup(target.dataset.encoding).name],
        force_null=columns,
        delimiter=dialect.delimiter,
        quote=dialect.quote,
    )
    status = await unless_connection_lost(conn, copy)
    return int(status.split()[-1])


def checked_blocks(stream: Stream, label: str, dialect: Dialect = COMMA) -> Iterator[bytes]:
    """The stream's blocks as they are, checked on the way as cheaply as bytes allow: no line
    longer than MAX_LINE_BYTES reaches the server, and no quote that COPY would read otherwise
    than the csv module (`QuotesCopyReadsDifferently`)."""
    offset, since_newline = 0, 0  # bytes after the header read so far; bytes of the line open
    inside, partial = False, b""  # at the last newline: a quoted field open?; the bytes after it
    quote = dialect.quote.encode()
    while data := stream.read(READ_SIZE):
        first, last = data.find(b"\n"), data.rfind(b"\n")
        # Lines after the first end inside `data` (at most READ_SIZE = MAX_LINE_BYTES bytes).
        if since_newline + (len(data) if first < 0 else first) >= MAX_LINE_BYTES + (first < 0):
            line_no = _line_number(stream.reopen(), offset - since_newline, label)
            raise line_too_long(line_no, MAX_LINE_BYTES, label, ONE_RECORD_A_LINE)
        since_newline = since_newline + len(data) if first < 0 else len(data) - last - 1
        offset += len(data)
        if quote in data or quote in partial:
            # Scanned from the start of the line the block began in, up to its last newline.
            text = partial + data[: last + 1]
            if last >= 0:
                inside = same_as_copy(text, inside, dialect)
                partial = data[last + 1 :]
            else:
                partial = text
        elif last >= 0:
            partial = data[last + 1 :]
        else:
            partial += data
        yield data
    if quote in partial:
        same_as_copy(partial, inside, dialect)


def _line_number(stream: Stream, offset: int, label: str) -> int:
    """The number of the line that starts `offset` bytes after the header (only for a message:
    counting lines on the way would slow down every clean file)."""
    read_header_line(stream, "latin-1", label)
    line_no = 2
    while offset > 0 and (data := stream.read(min(READ_SIZE, offset))):
        line_no += data.count(b"\n")
        offset -= len(data)
    return line_no


def same_as_copy(text: bytes, inside: bool, dialect: Dialect) -> bool:
    still_open, same = scan_quotes(text, inside, dialect)
    if not same:
        raise QuotesCopyReadsDifferently("a quote inside an unquoted field")
    return still_open


class RecordReader:
    """Physical lines → CSV records with record and line numbers.

    A record is complete when no quoted field is open at the end of a line (`scan_quotes`). A
    quote that is still open after MAX_RECORD_LINES lines or at the end of the file rejects only
    the line it opened on; reading resumes at the next line, so the rows after it are kept.
    """

    def __init__(
        self, stream: Stream, dataset: DatasetSpec, label: str, handover: tuple[int, bytes] | None = None
    ) -> None:
        self._stream = stream
        self._encoding = dataset.encoding
        self._dialect = Dialect.of(dataset)
        self._label = label
        self.line_no = 1  # the header
        self.start_line = 0
        self.end_line = 0
        self.unterminated = False
        self._handover = handover  # a line already read by the byte-level path, and its number

    def _line(self) -> tuple[int, str] | None:
        if self._handover is not None:
            self.line_no, raw = self._handover
            self._handover = None
        else:
            raw = self._stream.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return None
            self.line_no += 1
            if len(raw) > MAX_LINE_BYTES:
                raise line_too_long(self.line_no, MAX_LINE_BYTES, self._label, ONE_RECORD_A_LINE)
        return self.line_no, decode_line(raw, self._encoding, self.line_no, self._label)

    def _texts(self) -> Iterator[str]:
        replay: deque[tuple[int, str]] = deque()
        pending: list[tuple[int, str]] = []
        inside = False
        while True:
            item = replay.popleft() if replay else self._line()
            if item is None and not pending:
                return
            if item is not None:
                text = item[1]
                if not pending and not text.strip("\r\n") and not replay:
                    # A blank line between records: skip the run that follows in blocks.
                    self.line_no += self._stream.skip_line_ends()
                    self.start_line = self.end_line = item[0]
                    self.unterminated = False
                    yield "\n"
                    continue
                pending.append(item)
                if self._dialect.quote in text:
                    inside = scan_quotes(text, inside, self._dialect)[0]
                if not inside:
                    self.start_line, self.end_line = pending[0][0], item[0]
                    self.unterminated = False
                    yield "".join(text for _, text in pending)
                    pending = []
                    continue
                if len(pending) <= MAX_RECORD_LINES:
                    continue
            # The quote never closes: reject its first line and read on from the next one.
            self.start_line = self.end_line = pending[0][0]
            self.unterminated = True
            replay.extendleft(reversed(pending[1:]))
            pending, inside = [], False
            yield "\n"

    def records(self) -> Iterator[list[str]]:
        """Non-blank records; `start_line`, `end_line` and `unterminated` describe the last one."""
        reader = csv.reader(self._texts(), delimiter=self._dialect.delimiter, quotechar=self._dialect.quote)
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise MalformedFile(
                    f"line {self.end_line}: {exc}", hint="Check the quoting", file_name=self._label
                ) from None
            if record or self.unterminated:
                yield record


def extra_names(header: HeaderMap) -> list[str]:
    """Keys of the unknown fields in `_extra`: the header name, `note_2`, `note_3`… for a name
    seen before (every value is kept), `column_N` for an empty one (N counts from 1)."""
    taken = {header.fields[i] for i in header.extras}
    names: list[str] = []
    for i in header.extras:
        name = header.fields[i] or f"column_{i + 1}"
        if name in names:
            n = 2
            while f"{name}_{n}" in names or f"{name}_{n}" in taken:
                n += 1
            name = f"{name}_{n}"
        names.append(name)
    return names


def extras_warnings(header: HeaderMap, rows_loaded: int) -> list[dict[str, object]]:
    """The ledger's warnings about unknown fields: kept in `_extra`, and renamed when repeated."""
    names = extra_names(header)
    warnings: list[dict[str, object]] = [{"unknown_fields": {name: rows_loaded for name in names}}]
    repeated: dict[str, list[str]] = {}
    for i, name in zip(header.extras, names, strict=True):
        repeated.setdefault(header.fields[i] or name, []).append(name)
    for field_name, kept_as in repeated.items():
        if len(kept_as) > 1:
            warnings.append(
                {
                    "duplicate_fields": {field_name: kept_as},
                    "message": f"header field {field_name!r} appears {len(kept_as)} times; its "
                    f"values are kept in _extra as {', '.join(kept_as)}",
                }
            )
    return warnings


class CsvRows:
    """Parsed CSV records → staging rows (the fields the header maps, in header order)."""

    def __init__(self, header: HeaderMap, target: Target) -> None:
        mapped = header.mapped()
        self.width = len(header.fields)
        self.indexes = [i for i, _ in mapped]
        self.plan = RowPlan([c for _, c in mapped], target, text_numbers=True)
        self.extras = list(zip(header.extras, extra_names(header), strict=True))
        self.required = [(i, c.column) for i, c in mapped if c.required]
        self.any_groups = [
            [i for i, c in mapped if c.column in group] for group in target.dataset.require_any
        ]
        # The byte-level lane splits lines on commas and sends them on as they are.
        self.pass_through = (
            Dialect.of(target.dataset).is_default
            and codecs.lookup(target.dataset.encoding).name == "utf-8"
            and not self.extras
            and not any(self.plan.converters)
        )

    def line_chunks(self, stream: Stream, label: str) -> Iterator[Chunk]:
        """The robust path's fast lane: each line is checked (structure, required values, UTF-8)
        and, when good, sent to COPY as it is behind its `_file_id` and `_record_no`;
        PostgreSQL types the values. A record that spans lines hands the rest of the file to the
        general reader. Only possible when nothing has to be converted or moved into `_extra`."""
        file_id = self.plan.target.file_id
        chunk, record_no, line_no = Chunk(), 0, 1
        readline, width = stream.readline, self.width
        required = [i for i, _ in self.required]
        groups = self.any_groups
        rows, record_nos, line_nos = chunk.rows, chunk.record_nos, chunk.line_nos
        # A hot loop (a million lines take about a second), so one long function: the common checks
        # are inlined, and a line that looks wrong goes to check, which says what is wrong.
        while raw := readline(MAX_LINE_BYTES + 1):
            line_no += 1
            if chunk.records >= CHUNK_ROWS:  # bad records count too: memory stays bounded
                yield chunk
                chunk = Chunk()
                rows, record_nos, line_nos = chunk.rows, chunk.record_nos, chunk.line_nos
            body = raw.rstrip(b"\r\n")
            if len(raw) > MAX_LINE_BYTES:  # numbered_lines' check, inlined in this hot loop
                raise line_too_long(line_no, MAX_LINE_BYTES, label, ONE_RECORD_A_LINE)
            if not body:
                line_no += stream.skip_line_ends()
                continue
            if not body.isascii():
                decode_line(body, "utf-8", line_no, label)  # raises, naming the byte and line
            quoted = b'"' in body
            as_is = True
            if quoted:
                still_open, as_is = scan_quotes(body, inside=False)
                if still_open:
                    # A record that spans lines: the general reader takes the rest of the file.
                    yield chunk
                    reader = RecordReader(stream, self.plan.target.dataset, label, handover=(line_no, raw))
                    yield from self.chunks(reader, first_record=record_no)
                    return
            record_no += 1
            chunk.records += 1
            if quoted:
                fields: list[bytes] | list[str] = next(csv.reader([body.decode()]))
                suspect = True
            else:
                fields = body.split(b",")
                suspect = len(fields) != width or b"\x00" in body
                for i in required:
                    if suspect:
                        break
                    value = fields[i]
                    suspect = not value or value[0] == 32  # empty, or starting with a space
                for group in groups:
                    if suspect:
                        break
                    suspect = not any(fields[i] for i in group)
            if suspect:
                reject = self.check(fields, body, record_no, line_no)
                if reject is not None:
                    chunk.rejects.append(reject)
                    continue
            if as_is:
                rows.append(b"%d,%d,%b,\n" % (file_id, record_no, body))
            else:
                # COPY would read a quote of this line as quoting: send the values the csv module
                # read, written out again (an empty field is NULL, as on the rest of this lane).
                rows.append([file_id, record_no, *(str(f) or None for f in fields), None])
            record_nos.append(record_no)
            line_nos.append(line_no)
        yield chunk

    def suspect(self, fields: list[bytes], body: bytes) -> bool:
        """The line may break a row rule: `check` says whether it does (line_chunks inlines this)."""
        if len(fields) != self.width or b"\x00" in body:
            return True
        for i, _ in self.required:
            value = fields[i]
            if not value or value[0] == 32:  # empty, or starting with a space
                return True
        return any(not any(fields[i] for i in group) for group in self.any_groups)

    def check(
        self, fields: list[bytes] | list[str], body: bytes, record_no: int, line_no: int
    ) -> Reject | None:
        """Why the line cannot be a row (structure, NUL bytes, row rules), worded for the ledger."""
        dataset = self.plan.target.dataset.name
        if len(fields) != self.width:
            text = body.decode(errors="replace")[:1000]
            return Reject(
                record_no,
                line_no,
                None,
                text,
                f"has {len(fields)} fields; the header has {self.width}",
                dataset,
            )
        if b"\x00" in body:
            return Reject(record_no, line_no, None, None, "contains a NUL byte (binary data?)", dataset)
        for index, column in self.required:
            value = fields[index]
            if not (value.strip(b" ") if isinstance(value, bytes) else value.strip(" ")):
                shown = (value.decode() if isinstance(value, bytes) else value) or None
                return Reject(record_no, line_no, column, shown, "a required value is missing", dataset)
        for group in self.any_groups:
            if not any(fields[i] for i in group):
                names = " or ".join(self.plan.specs[self.indexes.index(i)].column for i in group)
                return Reject(record_no, line_no, None, None, f"needs a value in {names}", dataset)
        return None

    def chunks(self, reader: RecordReader, first_record: int = 0) -> Iterator[Chunk]:
        """Chunks of staging rows (and rejects) from the general reader's records."""
        return chunks_of(
            (record_no, reader.start_line, self._row(reader, record, record_no))
            for record_no, record in enumerate(reader.records(), start=first_record + 1)
        )

    def _row(self, reader: RecordReader, record: list[str], record_no: int) -> list[Value] | Reject:
        line_no = reader.start_line
        dataset = self.plan.target.dataset.name
        if reader.unterminated:
            return Reject(record_no, line_no, None, None, "a quote opened here is never closed", dataset)
        if len(record) != self.width:
            fields = f"has {len(record)} fields; the header has {self.width}"
            shown = Dialect.of(self.plan.target.dataset).delimiter.join(record)[:1000]
            return Reject(record_no, line_no, None, shown, fields, dataset)
        if "\x00" in "".join(record):
            return Reject(record_no, line_no, None, None, "contains a NUL byte (binary data?)", dataset)
        values: list[str | None] = [record[i] or None for i in self.indexes]
        extra = json.dumps({name: record[i] or None for i, name in self.extras}) if self.extras else None
        return self.plan.row(values, record_no, line_no, extra)


async def copy_robust(
    conn: asyncpg.Connection, stream: Stream, header: HeaderMap, target: Target, size: int
) -> LoadStats:
    """The robust path: every good row loaded, every bad one recorded with where it was."""
    rows = CsvRows(header, target)
    stats = LoadStats(path="robust")
    produced = (
        rows.line_chunks(stream, target.label)
        if rows.pass_through
        else rows.chunks(RecordReader(stream, target.dataset, target.label))
    )
    copier = RobustCopy(conn, rows.plan, empty_is_null=True)
    await load_chunks(conn, copier, produced, stats, stream, size)
    if header.extras:
        stats.warnings.extend(extras_warnings(header, stats.rows_loaded))
    check_ratio(stats, target)
    return stats


async def load_chunks(
    conn: asyncpg.Connection,
    copier: RobustCopy,
    produced: Iterator[Chunk],
    stats: LoadStats,
    stream: Stream,
    size: int,
) -> None:
    """COPY each chunk as it is produced, record its rejects, stop early when the file is hopeless."""
    async with aclosing(prefetched(produced)) as chunks:
        async for chunk in chunks:
            loaded, refused = await copier.copy(chunk)
            stats.rows_loaded += loaded
            stats.records += chunk.records
            rejects = sorted([*chunk.rejects, *refused], key=lambda r: r.record_no or 0)
            await ledger.write_rejects(conn, copier.plan.target.file_id, rejects)
            stats.note_rejects(rejects)
            stop_early_if_hopeless(stats, stream.raw.bytes_read, size, copier.plan.target)
