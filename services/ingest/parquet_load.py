"""Parquet files (`.parquet`) as a format: record batches into staging, memory bounded by a batch.

pyarrow reads the file through `os.pread` on the loader's descriptor (the schema is at the end),
one record batch at a time, with page-sized buffering rather than whole row groups in memory.
Columns map by name as CSV headers do. A batch becomes COPY's CSV in C++ (pyarrow's CSV writer):
time-zone-aware timestamps keep their instant, naive ones are read in SOURCE_TIMEZONE, decimals
keep every digit. Python looks at rows only when it must: a batch with a rule broken (a required
value missing), a value with a line break, fields for `_extra`, or text that needs converting.
Row numbers (from 1) are the record numbers of the rejects.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
from array import array
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import asyncpg

from app.db import unless_connection_lost
from app.errors import MalformedFile
from models.datasets import DatasetRegistry, DatasetSpec
from models.headers import HeaderMap
from services.ingest import ledger
from services.ingest.csv_load import extra_names, extras_warnings, map_header
from services.ingest.rows import (
    Chunk,
    LoadStats,
    Reject,
    RobustCopy,
    RowPlan,
    Target,
    check_ratio,
    json_text,
    prefetched,
    stop_early_if_hopeless,
)
from services.ingest.source import Source
from services.ingest.values import is_fixed_offset

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

log = logging.getLogger(__name__)

_MAGIC = b"PAR1"
_MAX_HELD_REJECTS = 10_000  # rule-breaking rows the one-COPY attempt holds until it commits
_BUFFER = 1 << 20
BATCH_ROWS = 8_192  # rows a batch: smaller batches, less memory; below this, COPY overhead shows
_HINT = "Write the file again (it may be cut off), or give it the extension of what it is"


def open_parquet(source: Source) -> pq.ParquetFile:
    """The Parquet file behind the descriptor; MalformedFile when it is not Parquet."""
    reader = source.random_access()
    head = reader.read(4)
    reader.seek(-4, io.SEEK_END)
    tail = reader.read(4)
    reader.seek(0)
    if head != _MAGIC or tail != _MAGIC or source.size < 12:
        raise MalformedFile(
            f"the file is not Parquet (a Parquet file starts and ends with PAR1; this one starts "
            f"with {head!r} and ends with {tail!r})",
            hint=_HINT,
            file_name=source.label,
        )
    # Imported only for a file that looks like Parquet: pyarrow (with numpy) costs 63 MB.
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Arrow's own allocator (mimalloc) keeps freed batches for reuse, about 20 MB more at the peak
    # than the C library's, which Python shares.
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        return pq.ParquetFile(reader, buffer_size=_BUFFER, pre_buffer=False)
    except (pa.ArrowException, OSError) as exc:
        raise MalformedFile(
            f"the Parquet file is damaged ({_first_line(exc)})", hint=_HINT, file_name=source.label
        ) from None


class ParquetFormat:
    """Parquet (.parquet): record batches through pread, COPY lines written by Arrow."""

    kind = "parquet"
    extensions = (".parquet",)
    compressible = False

    def field_names(self, source: Source, dataset: DatasetSpec | None) -> list[str]:
        """The file's column names, for detection by header."""
        return list(open_parquet(source).schema_arrow.names)

    async def load(
        self, conn: asyncpg.Connection, source: Source, target: Target, registry: DatasetRegistry
    ) -> LoadStats:
        """One COPY of every batch first (the server types values while the next batch is
        written); if PostgreSQL refuses a value, that attempt rolls back and the batches go
        again one COPY each, so that every refused row is found and recorded."""
        parquet = open_parquet(source)
        header = map_header(list(parquet.schema_arrow.names), target.dataset, target.label)
        rows = BatchRows(header, target, in_utc=_timestamps_typed(parquet, header))
        if rows.in_utc:
            # Timestamps go as UTC wall-clock text, which Arrow writes 20 times faster than text
            # with an offset; the session reads them in UTC for this load only.
            await conn.execute("SELECT set_config('TimeZone', 'UTC', true)")
        try:
            async with conn.transaction():
                stats = await _copy_whole(conn, rows, parquet, source.label)
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            log.info(
                "%s: COPY refused a value (%s); loading batch by batch", target.label, type(exc).__name__
            )
            stats = await _copy_batches(conn, rows, open_parquet(source), source.label)
        if rows.in_utc:  # (a load that fails rolls back, and the setting with it)
            await conn.execute("SELECT set_config('TimeZone', $1, true)", target.source_timezone)
        if header.extras:
            stats.warnings.extend(extras_warnings(header, stats.rows_loaded))
        check_ratio(stats, target)
        return stats


async def _copy_whole(
    conn: asyncpg.Connection, rows: BatchRows, parquet: pq.ParquetFile, label: str
) -> LoadStats:
    target = rows.target
    stats = LoadStats(path="parquet")
    rejects: list[Reject] = []

    async def blocks() -> AsyncIterator[bytes]:
        # The next batch is written in a thread while this one goes to the server.
        async with aclosing(prefetched(rows.chunks(parquet, label))) as chunks:
            async for chunk in chunks:
                stats.records += chunk.records
                stats.rows_loaded += len(chunk.rows)
                rejects.extend(chunk.rejects)
                if len(rejects) > _MAX_HELD_REJECTS:
                    raise _TooManyToHold()
                yield chunk.payload()

    specs = [c.column for c in rows.plan.specs]
    try:
        copy = conn.copy_to_table(
            target.dataset.table,
            schema_name=target.schema,
            source=blocks(),
            columns=rows.plan.columns,
            format="csv",
            force_null=specs,
        )
        await unless_connection_lost(conn, copy)
    except _TooManyToHold:
        raise _RowsRefused() from None
    await ledger.write_rejects(conn, target.file_id, rejects)
    stats.note_rejects(rejects)
    return stats


class _TooManyToHold(Exception):
    """More rows broke the rules than the one-COPY attempt keeps in memory."""


class _RowsRefused(asyncpg.DataError):  # type: ignore[misc]
    """The one-COPY attempt gives way to batch by batch (many bad rows)."""


async def _copy_batches(
    conn: asyncpg.Connection, rows: BatchRows, parquet: pq.ParquetFile, label: str
) -> LoadStats:
    copier = RobustCopy(conn, rows.plan, empty_is_null=True)
    stats = LoadStats(path="parquet, batch by batch")
    total = parquet.metadata.num_rows
    async with aclosing(prefetched(rows.chunks(parquet, label))) as chunks:
        async for chunk in chunks:
            loaded, refused = await copier.copy(chunk)
            stats.rows_loaded += loaded
            stats.records += chunk.records
            rejects = sorted([*chunk.rejects, *refused], key=lambda r: r.record_no or 0)
            await ledger.write_rejects(conn, rows.target.file_id, rejects)
            stats.note_rejects(rejects)
            stop_early_if_hopeless(stats, stats.records, total, rows.target)
    return stats


class BatchRows:
    """Record batches → chunks of COPY lines (or of rows built in Python, where needed)."""

    def __init__(self, header: HeaderMap, target: Target, *, in_utc: bool = False) -> None:
        """`in_utc`: every timestamp goes to the server as UTC wall-clock time (the session
        reads them in UTC), naive ones first placed in SOURCE_TIMEZONE."""
        mapped = header.mapped()
        self.in_utc = in_utc
        self.header = header
        self.target = target
        self.plan = RowPlan([c for _, c in mapped], target)
        self.indexes = [i for i, _ in mapped]
        self.extras = list(zip(header.extras, extra_names(header), strict=True))
        self.zone = target.source_timezone
        self.dataset = target.dataset.name
        # Rows built in Python: a naive time is placed in a zone without daylight saving here;
        # in one with it, the row plan's converter does it (and rejects a time that never was).
        self._naive_zone = ZoneInfo(self.zone) if in_utc and is_fixed_offset(self.zone) else None

    def chunks(self, parquet: pq.ParquetFile, label: str) -> Iterator[Chunk]:
        """The file's batches as chunks for COPY, each row numbered as in the file."""
        import pyarrow as pa

        first = 1
        batches = parquet.iter_batches(batch_size=BATCH_ROWS, use_threads=False)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (pa.ArrowException, OSError) as exc:
                raise MalformedFile(
                    f"the Parquet file is damaged after row {first - 1} ({_first_line(exc)})",
                    hint=_HINT,
                    file_name=label,
                ) from None
            yield self._chunk(batch, first)
            first += batch.num_rows

    def _chunk(self, batch: pa.RecordBatch, first: int) -> Chunk:
        columns = [batch.column(i) for i in self.indexes]
        if self.extras or any(
            self.plan.converters[k] is not None and _is_text(c) for k, c in enumerate(columns)
        ):
            return self._rows_in_python(batch, first)
        placed = [self._placed(column) for column in columns]
        if any(column is None for column in placed) or self._breaks_a_rule(columns):
            return self._rows_in_python(batch, first)  # the rows say which value is wrong
        block = self._copy_lines([c for c in placed if c is not None], first, batch.num_rows)
        if block is None:
            return self._rows_in_python(batch, first)  # a value with a line break: lines are not rows
        return LinesChunk(block, first, batch.num_rows)

    def _placed(self, column: pa.Array) -> pa.Array | None:
        """The column as COPY takes it (timestamps placed in their zone), or None when a value
        needs Python: a local time that does not exist or happens twice, a type Arrow cannot
        write as text."""
        # pyarrow.compute is used only for naive timestamps in a zone with daylight saving: its
        # first call sets up every kernel (+45 MB), so the checks stay in plain pyarrow.
        import pyarrow as pa

        if not pa.types.is_timestamp(column.type):
            return column if _writable(column.type) else None
        naive = column.type.tz is None
        if self.in_utc:
            if naive and not _is_utc(self.zone):
                column = _assume_zone(column, self.zone)
                if column is None:
                    return None
            return column.view(pa.timestamp(column.type.unit))  # the same instants, in UTC
        if naive and not is_fixed_offset(self.zone):
            return _assume_zone(column, self.zone)
        return column if _writable(column.type) else None

    def _copy_lines(self, columns: list[pa.Array], first: int, n: int) -> bytes | None:
        """The batch as COPY's CSV lines behind `_file_id` and `_record_no`; None if a value holds
        a line break (then lines are not rows)."""
        import pyarrow as pa
        import pyarrow.csv as pa_csv

        # Arrays from buffers: pa.array() of a Python list would import pandas (+50 MB) to ask
        # whether the list is one of its kinds.
        file_ids = pa.Array.from_buffers(
            pa.int64(), n, [None, pa.py_buffer(array("q", [self.target.file_id]) * n)]
        )
        record_nos = pa.Array.from_buffers(
            pa.int64(), n, [None, pa.py_buffer(array("q", range(first, first + n)))]
        )
        table = pa.table([file_ids, record_nos, *columns, pa.nulls(n, pa.string())], names=self.plan.columns)
        out = io.BytesIO()
        pa_csv.write_csv(table, out, pa_csv.WriteOptions(include_header=False))
        block = out.getvalue()
        return block if block.count(b"\n") == n else None

    def _breaks_a_rule(self, columns: list[pa.Array]) -> bool:
        """Some row lacks a required value, or has none of an "at least one of" group."""

        def empty(column: pa.Array) -> list[bool] | None:
            """Per row, whether the value is missing; None when none is (told from the
            buffers where possible: a Python object per value costs more than the COPY)."""
            if _is_text(column) and not column.null_count and _no_blank_text(column):
                return None
            if not _is_text(column) and not column.null_count:
                return None
            values = column.to_pylist()
            if _is_text(column):
                return [v is None or not v.strip(" ") for v in values]
            return [v is None for v in values]

        for k, spec in enumerate(self.plan.specs):
            if spec.required and (missing := empty(columns[k])) is not None and any(missing):
                return True
        for group in self.plan.any_groups:
            missing_all: list[bool] | None = None
            for k in group:
                missing = empty(columns[k])
                if missing is None:
                    break
                missing_all = (
                    missing
                    if missing_all is None
                    else [a and b for a, b in zip(missing_all, missing, strict=True)]
                )
            else:
                if group and missing_all is not None and any(missing_all):
                    return True
        return False

    def _rows_in_python(self, batch: pa.RecordBatch, first: int) -> Chunk:
        chunk = Chunk()
        names = batch.schema.names
        for offset, record in enumerate(batch.to_pylist()):
            record_no = first + offset
            chunk.records += 1
            cells = [record[names[i]] for i in range(len(names))]
            values = [_text(cells[i], self._naive_zone) for i in self.indexes]
            extra = (
                json.dumps({name: _text(cells[i]) for i, name in self.extras}, ensure_ascii=False)
                if self.extras
                else None
            )
            row = self.plan.row(values, record_no, None, extra)
            if isinstance(row, Reject):
                chunk.rejects.append(row)
            else:
                chunk.add(row, record_no, None, None)
        return chunk


class LinesChunk(Chunk):
    """A batch as one block of COPY lines, one a row: no Python object per row (a million of
    them would fragment the heap for good)."""

    def __init__(self, block: bytes, first: int, n: int) -> None:
        super().__init__(record_nos=list(range(first, first + n)), line_nos=[None] * n)
        self.records = n
        self.rows = _Lines(block, n)  # type: ignore[assignment]
        self._block = block

    def payload(self, start: int = 0, stop: int | None = None) -> bytes:
        """The COPY lines of rows `start` to `stop`."""
        lines: _Lines = self.rows  # type: ignore[assignment]
        return self._block[lines.offset(start) : lines.offset(len(lines) if stop is None else stop)]

    def row_at_line(self, line: int, start: int) -> int:
        """The row a COPY line names (one line a row)."""
        return start + max(line, 1) - 1  # one line a row


class _Lines:
    """The lines of a block, by index, found when first asked for."""

    def __init__(self, block: bytes, n: int) -> None:
        self._block = block
        self._n = n
        self._ends: array[int] | None = None

    def __len__(self) -> int:
        return self._n

    def offset(self, index: int) -> int:
        if index == 0:
            return 0
        if index == self._n:
            return len(self._block)
        if self._ends is None:
            ends, at = array("q"), self._block.find(b"\n")
            while at >= 0:
                ends.append(at + 1)
                at = self._block.find(b"\n", at + 1)
            self._ends = ends
        return self._ends[index - 1]

    def __getitem__(self, index: int) -> bytes:
        return self._block[self.offset(index) : self.offset(index + 1)]


def _timestamps_typed(parquet: pq.ParquetFile, header: HeaderMap) -> bool:
    """Every timestamptz column the file feeds comes from a Parquet timestamp (none from text,
    which must be read in SOURCE_TIMEZONE), and there is at least one."""
    import pyarrow as pa

    schema = parquet.schema_arrow
    feeding = [schema.field(i).type for i, c in header.mapped() if c.type == "timestamptz"]
    return bool(feeding) and all(pa.types.is_timestamp(t) for t in feeding)


def _is_utc(zone: str) -> bool:
    return is_fixed_offset(zone) and datetime(2000, 1, 1, tzinfo=ZoneInfo(zone)).utcoffset() == timedelta(0)


def _no_blank_text(column: pa.Array) -> bool:
    """True when no value of a string array without nulls is empty or only spaces, read from its
    buffers: no empty value (two equal offsets), and no space anywhere, or else a closer look."""
    import pyarrow as pa

    width = "q" if pa.types.is_large_string(column.type) else "i"
    _, offsets, data = column.buffers()
    ends = array(width, offsets.to_pybytes()[column.offset * len(array(width, [0]).tobytes()) :])[
        : len(column) + 1
    ]
    if any(a == b for a, b in itertools.pairwise(ends)):
        return False
    return data is None or b" " not in data.to_pybytes()[ends[0] : ends[-1]]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _is_text(column: pa.Array) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_string(column.type) or pa.types.is_large_string(column.type))


def _writable(kind: pa.DataType) -> bool:
    """Types pyarrow's CSV writer writes the way PostgreSQL reads them."""
    import pyarrow as pa

    return bool(
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_decimal(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_date(kind)
        or pa.types.is_timestamp(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_null(kind)
    )


def _text(value: Any, naive_zone: ZoneInfo | None = None) -> str | None:
    """A Parquet value as PostgreSQL reads it; an empty string is NULL, as in every format. A
    naive time is placed in `naive_zone` when one is given."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime) and value.tzinfo is None and naive_zone is not None:
        return value.replace(tzinfo=naive_zone).isoformat()
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # 42.0 is 42, as the batch path writes it
    if isinstance(value, int | float | Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    return json_text(value)


def _assume_zone(column: pa.Array, zone: str) -> pa.Array | None:
    """Naive timestamps read as local times in `zone`; None if one does not exist or is ambiguous."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        placed: pa.Array = pc.assume_timezone(column, zone, ambiguous="raise", nonexistent="raise")
    except pa.ArrowInvalid:
        return None
    return placed
