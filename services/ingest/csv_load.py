"""CSV into a staging table.

The fast path streams the file's bytes into PostgreSQL `COPY` as they are: the server types every
value, the table's defaults fill `_file_id` and `_record_no`, and the table's constraints enforce
the row rules. If PostgreSQL refuses the file (a bad value, a wrong column count, a broken quote),
that attempt rolls back to a savepoint and the robust path reads the file again in Python: it
checks structure and required values, lets PostgreSQL type the values (`ON_ERROR ignore` tells
which rows it skipped and why), keeps every good row and records every bad one.
"""

from __future__ import annotations

import asyncio
import bisect
import codecs
import csv
import io
import json
import re
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import asyncpg

from app.errors import EmptyFile, EncodingError, MalformedFile, MissingColumns, TooManyRejects
from models.datasets import TYPE_EXPECTATIONS, ColumnSpec, DatasetSpec, normalise_header
from services.ingest.source import READ_SIZE, Stream
from services.ingest.values import Converter, date_converter, is_fixed_offset, timestamp_converter

MAX_LINE_BYTES = 1 << 20
MAX_RECORD_LINES = 10_000
CHUNK_RECORDS = 20_000
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
_SKIPPED = re.compile(r'at line (\d+) for column "(.+?)": ')
_CONTEXT_LINE = re.compile(r"line (\d+)(?:, column (\w+))?")


@dataclass(frozen=True)
class Reject:
    record_no: int | None
    line_no: int | None
    column: str | None
    value: str | None
    reason: str

    def summary(self) -> str:
        where = f"record {self.record_no} (line {self.line_no})"
        column = f", column {self.column}" if self.column else ""
        return f"{where}{column}: {self.reason}"


@dataclass
class LoadStats:
    rows_loaded: int = 0
    rejects: list[Reject] = field(default_factory=list)
    warnings: list[dict[str, object]] = field(default_factory=list)
    path: str = "fast"

    @property
    def rows_rejected(self) -> int:
        return len(self.rejects)


@dataclass(frozen=True)
class Target:
    """Where a file's data lands: the staging table and the ledger id of the file."""

    schema: str
    dataset: DatasetSpec
    file_id: int
    label: str
    source_timezone: str
    max_reject_ratio: float


@dataclass
class HeaderMap:
    """How the fields of a file's header map onto the dataset's columns."""

    fields: list[str]
    targets: list[ColumnSpec | None]

    @property
    def extras(self) -> list[int]:
        return [i for i, t in enumerate(self.targets) if t is None]

    def mapped(self) -> list[tuple[int, ColumnSpec]]:
        return [(i, t) for i, t in enumerate(self.targets) if t is not None]


def decode_line(raw: bytes, encoding: str, line_no: int, label: str) -> str:
    codec = "utf-8-sig" if line_no == 1 and codecs.lookup(encoding).name == "utf-8" else encoding
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as exc:
        byte = raw[exc.start : exc.start + 1].hex()
        raise EncodingError(
            f"byte 0x{byte} at line {line_no}, position {exc.start + 1}, is not valid {encoding}",
            hint=(
                "If the file uses another encoding, set `encoding` for this dataset in "
                'datasets.toml (e.g. encoding = "cp1252"); a binary file cannot be loaded'
            ),
            file_name=label,
            line_no=line_no,
        ) from None


def read_header(stream: Stream, encoding: str, label: str) -> list[str]:
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
    if text.count('"') % 2:
        raise MalformedFile(
            "the header line has an unterminated quote", hint="Fix the header", file_name=label, line_no=1
        )
    return next(csv.reader([text]), [])


def map_header(fields: list[str], dataset: DatasetSpec, label: str) -> HeaderMap:
    by_name = {name: column for column in dataset.columns for name in column.matches()}
    targets: list[ColumnSpec | None] = []
    seen: dict[str, str] = {}
    for field_name in fields:
        column = by_name.get(normalise_header(field_name)) if field_name.strip() else None
        if column is not None and column.column in seen:
            raise MalformedFile(
                f"header fields {seen[column.column]!r} and {field_name!r} both map to column "
                f"{column.column!r} of dataset {dataset.name}",
                hint="Remove or rename one of them",
                file_name=label,
                line_no=1,
            )
        if column is not None:
            seen[column.column] = field_name
        targets.append(column)
    expected = ", ".join(c.source for c in dataset.columns)
    missing = [c.source for c in dataset.columns if c.required and c.column not in seen]
    missing += [
        " or ".join(dataset.column(c).source for c in group)
        for group in dataset.require_any
        if not set(group) & set(seen)
    ]
    if missing:
        raise MissingColumns(
            f"required column(s) missing for dataset {dataset.name}: {', '.join(missing)}. "
            f"Found: {', '.join(fields) or '(nothing)'}. Expected: {expected}",
            hint="Header names ignore case, spaces and underscores; add aliases in datasets.toml",
            file_name=label,
            line_no=1,
        )
    return HeaderMap(fields, targets)


def fast_path_possible(header: HeaderMap, target: Target) -> bool:
    """COPY can take the bytes as they are: every field known, no Python conversion needed."""
    mapped = header.mapped()
    return (
        not header.extras
        and codecs.lookup(target.dataset.encoding).name in PG_ENCODINGS
        and not any(c.formats for _, c in mapped)
        and (is_fixed_offset(target.source_timezone) or not any(c.type == "timestamptz" for _, c in mapped))
    )


async def copy_fast(conn: asyncpg.Connection, stream: Stream, header: HeaderMap, target: Target) -> int:
    """COPY the rest of the stream (the header is consumed) straight into the staging table."""
    columns = [c.column for _, c in header.mapped()]

    async def blocks() -> AsyncIterator[bytes]:
        while data := await asyncio.to_thread(stream.read, READ_SIZE):
            yield data

    status = await conn.copy_to_table(
        target.dataset.table,
        schema_name=target.schema,
        source=blocks(),
        columns=columns,
        format="csv",
        header=False,
        encoding=PG_ENCODINGS[codecs.lookup(target.dataset.encoding).name],
        force_null=columns,
    )
    return int(status.split()[-1])


@dataclass
class Chunk:
    """Parsed records ready for one COPY, with what is needed to name a rejected one."""

    rows: list[list[str | int | None]] = field(default_factory=list)
    record_nos: list[int] = field(default_factory=list)
    line_nos: list[int] = field(default_factory=list)
    line_ends: list[int] = field(default_factory=list)  # last COPY line of each row
    rejects: list[Reject] = field(default_factory=list)
    records: int = 0

    def payload(self, start: int = 0, stop: int | None = None) -> bytes:
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(self.rows[start:stop])
        return out.getvalue().encode("utf-8")

    def row_at_line(self, line: int, start: int) -> int:
        """Index of the row that COPY line `line` belongs to, for a COPY that began at `start`."""
        offset = self.line_ends[start - 1] if start else 0
        return bisect.bisect_left(self.line_ends, line + offset, lo=start)


class RecordReader:
    """Physical lines → CSV records with record and line numbers.

    A record is complete when its quotes balance. A quote that is still open after
    MAX_RECORD_LINES lines or at the end of the file rejects only the line it opened on;
    reading resumes at the next line, so the rows after it are kept.
    """

    def __init__(self, stream: Stream, dataset: DatasetSpec, label: str) -> None:
        self._stream = stream
        self._encoding = dataset.encoding
        self._label = label
        self.line_no = 1  # the header
        self.start_line = 0
        self.end_line = 0
        self.unterminated = False

    def _lines(self) -> Iterator[tuple[int, str]]:
        while raw := self._stream.readline(MAX_LINE_BYTES + 1):
            self.line_no += 1
            if len(raw) > MAX_LINE_BYTES:
                raise MalformedFile(
                    f"line {self.line_no} is longer than {MAX_LINE_BYTES >> 20} MiB",
                    hint="Check that the file is a CSV file with one record a line",
                    file_name=self._label,
                    line_no=self.line_no,
                )
            yield self.line_no, decode_line(raw, self._encoding, self.line_no, self._label)

    def _texts(self) -> Iterator[str]:
        lines = self._lines()
        replay: deque[tuple[int, str]] = deque()
        pending: list[tuple[int, str]] = []
        quotes = 0
        while True:
            item = replay.popleft() if replay else next(lines, None)
            if item is None and not pending:
                return
            if item is not None:
                pending.append(item)
                quotes += item[1].count('"')
                if quotes % 2 == 0:
                    self.start_line, self.end_line = pending[0][0], item[0]
                    self.unterminated = False
                    yield "".join(text for _, text in pending)
                    pending, quotes = [], 0
                    continue
                if len(pending) <= MAX_RECORD_LINES:
                    continue
            # The quote never closes: reject its first line and read on from the next one.
            self.start_line = self.end_line = pending[0][0]
            self.unterminated = True
            replay.extendleft(reversed(pending[1:]))
            pending, quotes = [], 0
            yield "\n"

    def records(self) -> Iterator[list[str]]:
        """Non-blank records; `start_line`, `end_line` and `unterminated` describe the last one."""
        reader = csv.reader(self._texts())
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


class RowBuilder:
    """Turns parsed records into staging rows, rejecting what Python can already tell is bad."""

    def __init__(self, header: HeaderMap, target: Target) -> None:
        self.target = target
        self.width = len(header.fields)
        self.plan: list[tuple[int, ColumnSpec, Converter | None]] = [
            (i, c, _converter(c, target.source_timezone)) for i, c in header.mapped()
        ]
        self.extras = [(i, header.fields[i] or f"column_{i + 1}") for i in header.extras]
        self.any_groups = [
            [k for k, (_, c, _) in enumerate(self.plan) if c.column in group]
            for group in target.dataset.require_any
        ]
        self.columns = ["_file_id", "_record_no", *(c.column for _, c, _ in self.plan), "_extra"]

    def build(self, record: list[str], record_no: int, line_no: int) -> list[str | int | None] | Reject:
        if len(record) != self.width:
            return Reject(
                record_no,
                line_no,
                None,
                ",".join(record)[:1000],
                f"has {len(record)} fields; the header has {self.width}",
            )
        row: list[str | int | None] = [self.target.file_id, record_no]
        for index, column, convert in self.plan:
            value: str | None = record[index]
            if value == "":
                value = None
            if column.required and (value is None or not value.strip(" ")):
                return Reject(record_no, line_no, column.column, value, "a required value is missing")
            if value is not None and convert is not None:
                try:
                    value = convert(value)
                except ValueError as exc:
                    return Reject(record_no, line_no, column.column, value, str(exc))
            row.append(value)
        for group in self.any_groups:
            if all(row[2 + k] is None for k in group):
                names = " or ".join(self.plan[k][1].column for k in group)
                return Reject(record_no, line_no, None, None, f"needs a value in {names}")
        row.append(json.dumps({name: record[i] or None for i, name in self.extras}) if self.extras else None)
        return row


def _converter(column: ColumnSpec, zone: str) -> Converter | None:
    if column.type == "timestamptz" and (column.formats or not is_fixed_offset(zone)):
        return timestamp_converter(zone, column.formats)
    if column.type == "date" and column.formats:
        return date_converter(column.formats)
    return None


def chunks(reader: RecordReader, builder: RowBuilder) -> Iterator[Chunk]:
    chunk = Chunk()
    record_no = 0
    copy_line = 0
    for record in reader.records():
        record_no += 1
        chunk.records += 1
        if reader.unterminated:
            chunk.rejects.append(
                Reject(record_no, reader.start_line, None, None, "a quote opened here is never closed")
            )
            continue
        row = builder.build(record, record_no, reader.start_line)
        if isinstance(row, Reject):
            chunk.rejects.append(row)
            continue
        copy_line += 1 + reader.end_line - reader.start_line
        chunk.rows.append(row)
        chunk.record_nos.append(record_no)
        chunk.line_nos.append(reader.start_line)
        chunk.line_ends.append(copy_line)
        if len(chunk.rows) >= CHUNK_RECORDS:
            yield chunk
            chunk, copy_line = Chunk(), 0
    yield chunk


class RobustCopy:
    """COPY of parsed chunks that attributes every row PostgreSQL refuses to its record."""

    def __init__(self, conn: asyncpg.Connection, target: Target, builder: RowBuilder) -> None:
        self.conn = conn
        self.target = target
        self.builder = builder
        self.skip_bad = conn.get_server_version().major >= 17
        options = "FORMAT csv" + (", ON_ERROR ignore, LOG_VERBOSITY verbose" if self.skip_bad else "")
        quoted = ", ".join(f'"{c}"' for c in builder.columns)
        self.statement = (
            f'COPY "{target.schema}"."{target.dataset.table}" ({quoted}) FROM STDIN WITH ({options})'
        )
        self.notices: list[str] = []

    async def copy(self, chunk: Chunk) -> tuple[int, list[Reject]]:
        """Load the chunk's rows; returns rows loaded and the rows PostgreSQL refused."""
        loaded, start = 0, 0
        rejects: list[Reject] = []
        while start < len(chunk.rows):
            try:
                loaded += await self._copy_part(chunk, start, None, rejects)
                break
            except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
                # A row COPY cannot skip: reject it, load the rows before it, go on after it.
                bad = self._locate(exc, chunk, start)
                rejects.append(self._reject(chunk, bad, _column_of(exc), str(exc)))
                if bad > start:
                    loaded += await self._copy_part(chunk, start, bad, rejects)
                start = bad + 1
        return loaded, rejects

    async def _copy_part(self, chunk: Chunk, start: int, stop: int | None, rejects: list[Reject]) -> int:
        self.notices.clear()
        sent = (stop if stop is not None else len(chunk.rows)) - start
        async with self.conn.transaction():
            # asyncpg's public copy_to_table cannot pass ON_ERROR / LOG_VERBOSITY; _copy_in is
            # the same call with our own statement.
            status = await self.conn._copy_in(self.statement, memoryview(chunk.payload(start, stop)), None)
        loaded = int(status.split()[-1])
        for _ in range(100):  # notices are delivered by the event loop; let it run
            if len(self.notices) >= sent - loaded:
                break
            await asyncio.sleep(0)
        skipped = [_SKIPPED.search(n) for n in self.notices]
        if len([m for m in skipped if m]) != sent - loaded:
            raise RuntimeError(
                f"PostgreSQL skipped {sent - loaded} rows but reported {len(skipped)}; "
                "is lc_messages set to a language other than English?"
            )
        for match in skipped:
            if match:
                index = chunk.row_at_line(int(match.group(1)), start)
                column = match.group(2)
                expected = _expectation(self.target.dataset, column)
                rejects.append(self._reject(chunk, index, column, f"not {expected}"))
        return loaded

    def _locate(self, exc: asyncpg.PostgresError, chunk: Chunk, start: int) -> int:
        match = _CONTEXT_LINE.search(getattr(exc, "context", "") or "")
        if not match:
            raise MalformedFile(f"PostgreSQL refused the data: {exc}", file_name=self.target.label)
        return chunk.row_at_line(int(match.group(1)), start)

    def _reject(self, chunk: Chunk, index: int, column: str | None, reason: str) -> Reject:
        row = chunk.rows[index]
        value = None
        if column in self.builder.columns:
            cell = row[self.builder.columns.index(column)]
            value = None if cell is None else str(cell)
        return Reject(chunk.record_nos[index], chunk.line_nos[index], column, value, reason)

    def on_notice(self, _conn: object, message: asyncpg.PostgresLogMessage) -> None:
        self.notices.append(str(getattr(message, "message", message)))


def _column_of(exc: asyncpg.PostgresError) -> str | None:
    match = _CONTEXT_LINE.search(getattr(exc, "context", "") or "")
    return match.group(2) if match and match.group(2) else getattr(exc, "column_name", None)


def _expectation(dataset: DatasetSpec, column: str) -> str:
    spec = next((c for c in dataset.columns if c.column == column), None)
    return TYPE_EXPECTATIONS[spec.type] if spec else "a valid value"


async def copy_robust(
    conn: asyncpg.Connection, stream: Stream, header: HeaderMap, target: Target, size: int
) -> LoadStats:
    builder = RowBuilder(header, target)
    reader = RecordReader(stream, target.dataset, target.label)
    copier = RobustCopy(conn, target, builder)
    stats = LoadStats(path="robust")
    produced = chunks(reader, builder)
    records = 0
    conn.add_log_listener(copier.on_notice)
    try:
        next_chunk = asyncio.create_task(asyncio.to_thread(next, produced, None))
        while (chunk := await next_chunk) is not None:
            # Parse the next chunk in a thread while PostgreSQL types this one.
            next_chunk = asyncio.create_task(asyncio.to_thread(next, produced, None))
            loaded, refused = await copier.copy(chunk)
            stats.rows_loaded += loaded
            stats.rejects.extend(chunk.rejects)
            stats.rejects.extend(refused)
            records += chunk.records
            _stop_early_if_hopeless(stats, records, stream.raw.bytes_read, size, target)
    finally:
        conn.remove_log_listener(copier.on_notice)
    stats.rejects.sort(key=lambda r: r.record_no or 0)
    if header.extras:
        names = [header.fields[i] or f"column_{i + 1}" for i in header.extras]
        stats.warnings.append({"unknown_fields": names, "rows": stats.rows_loaded})
    _check_ratio(stats, records, target)
    return stats


def _stop_early_if_hopeless(stats: LoadStats, records: int, read: int, size: int, target: Target) -> None:
    """Give up before the end when the bad rows already exceed the limit for the whole file."""
    if records < 10_000 or not read:
        return
    estimated_records = records * max(size, read) / read
    if stats.rows_rejected > 1.5 * target.max_reject_ratio * estimated_records:
        _check_ratio(stats, records, target, partial=True)


def _check_ratio(stats: LoadStats, records: int, target: Target, partial: bool = False) -> None:
    if records == 0:
        raise EmptyFile(
            "the file has a header but no data rows",
            hint="Nothing to load; drop the file again once it has rows",
            file_name=target.label,
        )
    ratio = stats.rows_rejected / records
    if ratio > target.max_reject_ratio or partial:
        examples = "; ".join(r.summary() for r in stats.rejects[:3])
        scope = "of the first " if partial else "of "
        raise TooManyRejects(
            f"{stats.rows_rejected} {scope}{records} rows are bad ({ratio:.1%}, above the "
            f"{target.max_reject_ratio:.1%} allowed). First problems: {examples}",
            hint="Fix the rows and drop the file again, or raise MAX_REJECT_RATIO "
            "(or the dataset's max_reject_ratio)",
            file_name=target.label,
        )
