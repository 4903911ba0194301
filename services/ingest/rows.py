"""Rows built in Python, typed by PostgreSQL: the robust path shared by CSV and JSON files.

Python checks what it can tell on its own (required values, "at least one of" groups, formats
and local times); PostgreSQL's input functions type every value, exactly as on the fast path.
With `COPY ... ON_ERROR ignore` (PostgreSQL 17+) the server skips rows it cannot type and says
which; those rows are attributed to their record and recorded as rejects.
"""

from __future__ import annotations

import asyncio
import bisect
import csv
import io
import json
import re
from collections.abc import AsyncGenerator, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import accumulate
from typing import TypeVar

import asyncpg

from app.db import unless_connection_lost
from app.errors import EmptyFile, MalformedFile, TooManyRejects
from models.datasets import TYPE_EXPECTATIONS, ColumnSpec, DatasetSpec
from services.ingest.values import (
    Converter,
    date_converter,
    is_fixed_offset,
    lone_decimal_comma,
    number_converter,
    timestamp_converter,
)

CHUNK_ROWS = 20_000
NO_ROWS_HINT = "Nothing to load; drop the file again once it has rows"
_SKIPPED = re.compile(r'at line (\d+) for column "(.+?)": ')
_CONTEXT_LINE = re.compile(r"line (\d+)(?:, column (\w+))?")

Value = str | int | None
T = TypeVar("T")


@dataclass(frozen=True)
class Reject:
    """One bad row: record, line, column, value and why, as ingest.rejected_rows keeps it."""

    record_no: int | None
    line_no: int | None
    column: str | None
    value: str | None
    reason: str
    dataset: str | None = None
    raw: str | None = None

    def summary(self) -> str:
        """The reject in a few words, for the ledger's error text."""
        where = f"record {self.record_no}" + (f" (line {self.line_no})" if self.line_no else "")
        column = f", column {self.column}" if self.column else ""
        return f"{where}{column}: {self.reason}"


@dataclass
class LoadStats:
    """What a load did: rows loaded and rejected, records read, warnings, the path taken."""

    rows_loaded: int = 0
    records: int = 0
    rows_rejected: int = 0
    examples: list[Reject] = field(default_factory=list)  # the first few, for messages
    warnings: list[dict[str, object]] = field(default_factory=list)
    path: str = "fast"

    def note_rejects(self, rejects: list[Reject]) -> None:
        """Count rejects already written to ingest.rejected_rows; keep the first three to show."""
        self.rows_rejected += len(rejects)
        if len(self.examples) < 3:
            self.examples = sorted([*self.examples, *rejects], key=_order)[:3]


@dataclass(frozen=True)
class Target:
    """Where a file's data lands: the staging schema, the dataset and the file's ledger id."""

    schema: str
    dataset: DatasetSpec
    file_id: int
    label: str
    source_timezone: str
    max_reject_ratio: float

    def for_dataset(self, dataset: DatasetSpec) -> Target:
        """The same target for a child dataset (a shipment's packages)."""
        return Target(
            self.schema, dataset, self.file_id, self.label, self.source_timezone, self.max_reject_ratio
        )


def _converter(column: ColumnSpec, zone: str, dataset: DatasetSpec, text_numbers: bool) -> Converter | None:
    if column.type == "timestamptz" and (column.formats or not is_fixed_offset(zone)):
        return timestamp_converter(zone, column.formats)
    if column.type == "date" and column.formats:
        return date_converter(column.formats)
    if column.type in ("numeric", "integer") and text_numbers:
        if writes_numbers_its_own_way(dataset):
            return number_converter(dataset.decimal_mark, dataset.thousands)
        if dataset.decimal is None and dataset.delimiter not in (None, ","):
            return lone_decimal_comma
    return None


def writes_numbers_its_own_way(dataset: DatasetSpec) -> bool:
    """The dataset declares a decimal comma or a thousands separator for its text files."""
    return dataset.decimal_mark != "." or bool(dataset.thousands)


class RowPlan:
    """The staging columns one file fills, and the row rules Python checks before COPY."""

    def __init__(self, columns: list[ColumnSpec], target: Target, *, text_numbers: bool = False) -> None:
        """`text_numbers`: numbers come as the file wrote them (delimited text), so the dataset's
        `decimal` and `thousands` apply; JSON, Excel and Parquet numbers are numbers already."""
        self.target = target
        self.specs = columns
        zone, dataset = target.source_timezone, target.dataset
        self.converters = [_converter(c, zone, dataset, text_numbers) for c in columns]
        self.any_groups = [
            [k for k, c in enumerate(columns) if c.column in group] for group in target.dataset.require_any
        ]
        self.columns = ["_file_id", "_record_no", *(c.column for c in columns), "_extra"]
        self._required = [k for k, c in enumerate(columns) if c.required]
        self._converting = [(k, f) for k, f in enumerate(self.converters) if f is not None]
        self._dataset = target.dataset.name
        self._file_id = target.file_id

    def row(
        self, values: list[str | None], record_no: int, line_no: int | None, extra: str | None
    ) -> list[Value] | Reject:
        """The staging row for one record, or why it is rejected. `values` follow `specs`."""
        for k in self._required:
            value = values[k]
            if value is None or not value.strip(" "):
                column = self.specs[k].column
                return Reject(record_no, line_no, column, value, "a required value is missing", self._dataset)
        for k, convert in self._converting:
            value = values[k]
            if value is not None:
                try:
                    values[k] = convert(value)
                except ValueError as exc:
                    return Reject(record_no, line_no, self.specs[k].column, value, str(exc), self._dataset)
        for group in self.any_groups:
            for k in group:
                if values[k] is not None:
                    break
            else:
                names = " or ".join(self.specs[k].column for k in group)
                return Reject(record_no, line_no, None, None, f"needs a value in {names}", self._dataset)
        return [self._file_id, record_no, *values, extra]


@dataclass
class Chunk:
    """Rows ready for one COPY, with what is needed to name the record of a refused one."""

    keep_empty_strings: bool = False
    # Values to write as CSV, or a line already in COPY's CSV form (the byte-level lane).
    rows: list[list[Value] | bytes] = field(default_factory=list)
    record_nos: list[int] = field(default_factory=list)
    line_nos: list[int | None] = field(default_factory=list)
    raws: list[object] = field(default_factory=list)  # the source records (JSON), for rejects
    rejects: list[Reject] = field(default_factory=list)  # records Python already refused
    records: int = 0  # records read into this chunk, refused ones included
    _line_ends: list[int] | None = field(default=None, repr=False)

    def add(self, row: list[Value] | bytes, record_no: int, line_no: int | None, raw: object) -> None:
        """One more row, with its record and line."""
        self.rows.append(row)
        self.record_nos.append(record_no)
        self.line_nos.append(line_no)
        self.raws.append(raw)

    def drop_records(self, record_nos: set[int | None]) -> None:
        """Forget the rows of these records (children of a parent PostgreSQL refused)."""
        keep = [i for i, n in enumerate(self.record_nos) if n not in record_nos]
        self.records -= len(self.rows) - len(keep)
        self.rows = [self.rows[i] for i in keep]
        self.record_nos = [self.record_nos[i] for i in keep]
        self.line_nos = [self.line_nos[i] for i in keep]
        self.raws = [self.raws[i] for i in keep]

    def full(self) -> bool:
        """Rows and rejects both count: a file of bad rows must not pile them up in memory."""
        return len(self.rows) + len(self.rejects) >= CHUNK_ROWS

    def payload(self, start: int = 0, stop: int | None = None) -> bytes:
        """Rows `start` to `stop` as COPY's CSV."""
        parts: list[bytes] = []
        pending: list[list[Value]] = []
        for row in self.rows[start:stop]:
            if isinstance(row, bytes):
                parts.append(self._serialise(pending))
                pending = []
                parts.append(row)
            else:
                pending.append(row)
        parts.append(self._serialise(pending))
        return b"".join(parts)

    def _serialise(self, rows: list[list[Value]]) -> bytes:
        if not rows:
            return b""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        if not self.keep_empty_strings:
            writer.writerows(rows)
        else:
            for row in rows:
                if "" in row:
                    # csv writes "" and NULL alike; in COPY's CSV an unquoted empty field is NULL.
                    out.write(",".join(map(_csv_field, row)) + "\n")
                else:
                    writer.writerow(row)
        return out.getvalue().encode("utf-8")

    def values(self, index: int) -> list[Value]:
        """The row's values as sent (an empty field of a pass-through line is NULL)."""
        row = self.rows[index]
        if not isinstance(row, bytes):
            return row
        return [value or None for value in next(csv.reader([row.decode()]))]

    def row_at_line(self, line: int, start: int) -> int:
        """Index of the row that COPY line `line` belongs to, for a COPY that began at `start`.

        COPY counts physical lines, and a value may hold newlines; worked out once, when needed.
        """
        if self._line_ends is None or len(self._line_ends) != len(self.rows):
            self._line_ends = list(
                accumulate(
                    1 if isinstance(row, bytes) else 1 + sum(v.count("\n") for v in row if isinstance(v, str))
                    for row in self.rows
                )
            )
        ends = self._line_ends
        offset = ends[start - 1] if start else 0
        return bisect.bisect_left(ends, line + offset, lo=start)


def _csv_field(value: Value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return '"' + value.replace('"', '""') + '"'
    return str(value)


class SkippedRows:
    """What `COPY … ON_ERROR ignore, LOG_VERBOSITY verbose` (PostgreSQL 17+) says of each row it
    skips: a notice naming the line (counted from the statement's first) and the column."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self._notices: list[str] = []

    def __enter__(self) -> SkippedRows:
        self._conn.add_log_listener(self._on_notice)
        return self

    def __exit__(self, *_: object) -> None:
        self._conn.remove_log_listener(self._on_notice)

    def forget(self) -> None:
        """Drop what earlier statements said."""
        self._notices.clear()

    async def named(self, skipped: int) -> list[tuple[int, str]]:
        """(line, column) of each of the `skipped` rows of the statement that just ended."""
        for _ in range(100):  # notices are delivered by the event loop: let it run
            if len(self._notices) >= skipped:
                break
            await asyncio.sleep(0)
        named = [(int(m.group(1)), m.group(2)) for m in map(_SKIPPED.search, self._notices) if m]
        self._notices.clear()
        if len(named) != skipped:
            raise RuntimeError(
                f"PostgreSQL skipped {skipped} rows but named {len(named)}; loadbay reads "
                "its notices in English (lc_messages 'C' or 'en')"
            )
        return named

    def _on_notice(self, _conn: object, message: asyncpg.PostgresLogMessage) -> None:
        self._notices.append(str(getattr(message, "message", message)))


class RobustCopy:
    """COPY of built rows that attributes every row PostgreSQL refuses to its record."""

    def __init__(self, conn: asyncpg.Connection, plan: RowPlan, *, empty_is_null: bool = False) -> None:
        self.conn = conn
        self.plan = plan
        target = plan.target
        skip_bad = conn.get_server_version().major >= 17
        options = "FORMAT csv" + (", ON_ERROR ignore, LOG_VERBOSITY verbose" if skip_bad else "")
        if empty_is_null:  # CSV: an empty field is NULL, quoted or not (lines may pass as they are)
            options += ", FORCE_NULL (" + ", ".join(f'"{c.column}"' for c in plan.specs) + ")"
        quoted = ", ".join(f'"{c}"' for c in plan.columns)
        self.statement = (
            f'COPY "{target.schema}"."{target.dataset.table}" ({quoted}) FROM STDIN WITH ({options}) '
            'WHERE "_record_no" > 0'
        )
        # COPY learns the line ending from the first line and, until then, does not count a
        # newline inside quotes as a line. A plain first row (filtered out by the WHERE clause)
        # keeps its line numbers, which name the rows it skips, exact.
        self._lead = ("0,0" + "," * (len(plan.columns) - 2) + "\n").encode()
        self._skipped = SkippedRows(conn)

    async def copy(self, chunk: Chunk) -> tuple[int, list[Reject]]:
        """Load the chunk's rows; returns the rows loaded and the rows PostgreSQL refused."""
        loaded, start = 0, 0
        rejects: list[Reject] = []
        with self._skipped:
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
        self._skipped.forget()
        sent = (stop if stop is not None else len(chunk.rows)) - start
        async with self.conn.transaction():
            # asyncpg's public copy_to_table cannot pass ON_ERROR / LOG_VERBOSITY; _copy_in is the
            # call behind it, with our own statement.
            payload = self._lead + chunk.payload(start, stop)
            copy = self.conn._copy_in(self.statement, memoryview(payload), None)
            status = await unless_connection_lost(self.conn, copy)
        loaded = int(status.split()[-1])
        for line, column in await self._skipped.named(sent - loaded):
            index = chunk.row_at_line(line - 1, start)
            rejects.append(self._reject(chunk, index, column, f"not {expectation(self.plan.specs, column)}"))
        return loaded

    def _locate(self, exc: asyncpg.PostgresError, chunk: Chunk, start: int) -> int:
        match = _CONTEXT_LINE.search(getattr(exc, "context", "") or "")
        if not match:
            raise MalformedFile(f"PostgreSQL refused the data: {exc}", file_name=self.plan.target.label)
        return chunk.row_at_line(int(match.group(1)) - 1, start)

    def _reject(self, chunk: Chunk, index: int, column: str | None, reason: str) -> Reject:
        value = None
        if column in self.plan.columns:
            cell = chunk.values(index)[self.plan.columns.index(column)]
            value = None if cell is None else str(cell)
        return Reject(
            chunk.record_nos[index],
            chunk.line_nos[index],
            column,
            value,
            reason,
            self.plan.target.dataset.name,
            raw_text(chunk.raws[index]) if index < len(chunk.raws) else None,
        )


def raw_text(record: object) -> str | None:
    """The source record as text for `ingest.rejected_rows.raw` (at most 10,000 characters)."""
    if record is None:
        return None
    text = record if isinstance(record, str) else json_text(record)
    return text[:10_000]


def json_text(value: object) -> str:
    """JSON for stored values; decimals keep every digit."""
    return json.dumps(value, default=_decimal, ensure_ascii=False)


def _decimal(value: object) -> object:
    if isinstance(value, Decimal):
        as_float = float(value)
        return as_float if Decimal(repr(as_float)) == value else str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


async def prefetched(items: Iterator[T]) -> AsyncGenerator[T, None]:
    """The items of a blocking iterator, each produced in a thread while the previous one is used.

    Parsing (Python, one core) overlaps with PostgreSQL typing the previous chunk (the other core).
    """
    pending = asyncio.create_task(asyncio.to_thread(next, items, None))
    try:
        while (item := await pending) is not None:
            pending = asyncio.create_task(asyncio.to_thread(next, items, None))
            yield item
    finally:
        # The thread reads the file's descriptor: never leave it running past here.
        await asyncio.wait({pending})
        if not pending.cancelled():
            pending.exception()


def _column_of(exc: asyncpg.PostgresError) -> str | None:
    match = _CONTEXT_LINE.search(getattr(exc, "context", "") or "")
    if match and match.group(2):
        return match.group(2)
    column = getattr(exc, "column_name", None)
    return str(column) if column else None


def expectation(specs: list[ColumnSpec], column: str) -> str:
    """What a valid value of `column` looks like, for a reject's reason."""
    spec = next((c for c in specs if c.column == column), None)
    return TYPE_EXPECTATIONS[spec.type] if spec else "a valid value"


def stop_early_if_hopeless(stats: LoadStats, read: int, size: int, target: Target) -> None:
    """Give up before the end when the bad rows already exceed the limit for the whole file."""
    if stats.records < 10_000 or not read:
        return
    estimated_records = stats.records * max(size, read) / read
    if stats.rows_rejected > 1.5 * target.max_reject_ratio * estimated_records:
        check_ratio(stats, target, partial=True)


def check_ratio(stats: LoadStats, target: Target, partial: bool = False) -> None:
    """Raise TooManyRejects (or EmptyFile) when the file's bad rows are above its limit."""
    records = stats.records
    if records == 0:
        raise EmptyFile(
            "the file has a header but no data rows" if stats.path != "json" else "the file has no records",
            hint=NO_ROWS_HINT,
            file_name=target.label,
        )
    ratio = stats.rows_rejected / records
    if ratio > target.max_reject_ratio or partial:
        examples = "; ".join(r.summary() for r in stats.examples)
        scope = "of the first " if partial else "of "
        raise TooManyRejects(
            f"{stats.rows_rejected} {scope}{records} rows are bad ({ratio:.1%}, above the "
            f"{target.max_reject_ratio:.1%} allowed). First problems: {examples}",
            hint="Fix the rows and drop the file again, or raise MAX_REJECT_RATIO "
            "(or the dataset's max_reject_ratio)",
            file_name=target.label,
        )


def _order(reject: Reject) -> int:
    return reject.record_no or 0


def chunks_of(built: Iterable[tuple[int, int | None, list[Value] | Reject]]) -> Iterator[Chunk]:
    """Chunks of rows (and the rejects among them) from (record_no, line_no, row or reject)
    items; a chunk is full with CHUNK_ROWS rows and rejects together."""
    chunk = Chunk()
    for record_no, line_no, row in built:
        chunk.records += 1
        if isinstance(row, Reject):
            chunk.rejects.append(row)
        else:
            chunk.add(row, record_no, line_no, None)
        if chunk.full():
            yield chunk
            chunk = Chunk()
    yield chunk
