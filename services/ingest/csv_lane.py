"""The CSV fast path: one pass over the file, each record sent to COPY behind its `_file_id` and
`_record_no`, a block of lines at a time.

What would stop COPY halfway is looked for in whole blocks of bytes (csv_blocks.py, numpy): a
field too many or too few (each line's delimiters against the header's), an empty or blank field
(which a required column or an "at least one of" group may not have), a blank line, a NUL byte, a
quote. A block with a line of the wrong shape has that line set aside and the rest numbered whole;
only a block with a gap or a quote is read line by line. Bad lines become rejects, worded as the
robust path words them. Values PostgreSQL cannot type are skipped by COPY itself (`ON_ERROR
ignore`, PostgreSQL 17+), which names each one in a notice.

The lines go out in COPY statements of SEGMENT_BYTES; the rejects of each are written before the
next starts, so memory stays bounded whatever the file. Anything else that stops COPY (a quote COPY
would read otherwise than the csv module, a broken encoding, a bad line inside a quoted record,
a bad value before PostgreSQL 17) rolls this pass back, and the robust path reads the file.

Why this process numbers the records, not the staging table's defaults as it used to: the server
evaluated `nextval() - current_setting()` and `current_setting()` for every row, about 0.3 s a
million rows, on the core that COPY is bound by; here reading, checking and numbering cost about
0.15 s of CPU a million rows in a thread, and the server only parses the two numbers (about
0.07 s). A skipped row would also have shifted every number after it (benchmarks/README.md).
"""

from __future__ import annotations

import asyncio
import bisect
import codecs
import contextlib
import csv
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from itertools import accumulate

import asyncpg
import numpy as np

from app.db import unless_connection_lost, widen_send_buffer
from app.schema import quote_ident, table_name
from models.headers import HeaderMap
from services.ingest import ledger
from services.ingest.csv_blocks import Seen, line_count, line_ends, numbered, see, without
from services.ingest.csv_dialect import Dialect
from services.ingest.csv_load import (
    MAX_LINE_BYTES,
    MAX_RECORD_LINES,
    ONE_RECORD_A_LINE,
    PG_ENCODINGS,
    CsvRows,
    same_as_copy,
)
from services.ingest.rows import (
    CHUNK_ROWS,
    LoadStats,
    Reject,
    SkippedRows,
    Target,
    check_ratio,
    expectation,
    stop_early_if_hopeless,
)
from services.ingest.source import Stream, line_too_long

SEGMENT_BYTES = 8 << 20  # lines sent by one COPY statement: kept until its skipped rows are named
SEGMENT_REJECTS = CHUNK_ROWS  # rejects held before the statement ends and they are written
AHEAD = 4  # blocks made before COPY takes them
BATCH = 4  # blocks made in one trip to the thread
MAX_RECORD_BYTES = 16 << 20  # a record over several lines (a statement cannot end inside one)
BLOCK_LINES = CHUNK_ROWS  # lines looked at a time: a block of short bad lines stays small
# Bytes read at a time: blocks this size stay in the CPU's cache while they are checked and
# numbered (1M rows, four runs each, alternating: 1.00–1.02 s in a running process against
# 1.04–1.13 s with 1 MiB reads).
# No more than MAX_LINE_BYTES, so that only a line begun in an earlier read can be too long.
READ_SIZE = 1 << 18


class QuoteRunsOn(asyncpg.DataError):  # type: ignore[misc]
    """A quoted field stays open past MAX_RECORD_LINES lines or MAX_RECORD_BYTES: a statement cannot
    end inside it, so its lines would pile up. The robust path reads the file (and rejects the
    line the quote opened on)."""


class LaneCannotName(asyncpg.DataError):  # type: ignore[misc]
    """PostgreSQL skipped a row of a statement that holds a record over several lines, whose
    line numbers this pass does not follow: the robust path takes the file."""


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass
class Block:
    """Complete lines of the file, as read: joined by LF (the last one's is not in `data`)."""

    data: bytes
    count: int  # lines
    first_line: int = 0  # the physical line number of the first
    split: list[bytes] | None = None

    @property
    def lines(self) -> list[bytes]:
        """The lines, without their LF (split only for a block read line by line)."""
        if self.split is None:
            self.split = self.data.split(b"\n")
        return self.split


class LineReader:
    """A stream's complete lines, a block of at most BLOCK_LINES at a time, none longer than
    MAX_LINE_BYTES."""

    def __init__(self, stream: Stream, label: str) -> None:
        self._stream = stream
        self._label = label
        self._lines = 1  # physical lines read: the header is line 1
        self._pending: list[Block] = []  # blocks read and not handed out, in reverse order
        self._tail = b""  # the start of a line whose end is not read yet
        self._crlf: bool | None = None  # the first line ends in CR LF

    @property
    def bytes_read(self) -> int:
        """Bytes of the file read so far (for an estimate of how many records it holds)."""
        return self._stream.raw.bytes_read

    def next_block(self) -> Block | None:
        """The next lines; None at the end."""
        if not self._pending and not self._fill():
            return None
        block = self._pending.pop()
        block.first_line = self._lines + 1
        self._lines += block.count
        return block

    def _fill(self) -> bool:
        """Read up to the last newline of a read (or the end); False when nothing is left."""
        parts, size = [self._tail], len(self._tail)
        while True:
            read = self._stream.read(READ_SIZE)
            if not read:
                data = b"".join(parts)
                if data and self._crlf and data[-1:] != b"\r":
                    data += b"\r"  # COPY wants every line ended alike: the last one as the first
                self._tail = b""
                self._pending = [Block(data, 1)] if data else []
                return bool(data)
            end = read.rfind(b"\n")
            if end >= 0:
                break
            parts.append(read)
            size += len(read)
            if size > MAX_LINE_BYTES:
                raise line_too_long(self._lines + 1, MAX_LINE_BYTES, self._label, ONE_RECORD_A_LINE)
        self._tail = read[end + 1 :]
        body = b"".join([*parts, memoryview(read)[:end]])  # one copy of what was read
        first_end = body.find(b"\n")
        if first_end < 0:  # one line
            first_end = len(body)
        if self._crlf is None:
            self._crlf = body[first_end - 1 : first_end] == b"\r"
        # Only the first line can hold earlier reads: any other ends inside the last read
        # (READ_SIZE is no more than MAX_LINE_BYTES).
        if first_end > MAX_LINE_BYTES:
            raise line_too_long(self._lines + 1, MAX_LINE_BYTES, self._label, ONE_RECORD_A_LINE)
        count = line_count(body)
        if count <= BLOCK_LINES:
            self._pending = [Block(body, count)]
        else:  # short lines (blank ones, say): a block of bad ones stays small
            lines = body.split(b"\n")
            chunks = [lines[at : at + BLOCK_LINES] for at in range(0, count, BLOCK_LINES)]
            self._pending = [Block(b"\n".join(chunk), len(chunk), split=chunk) for chunk in reversed(chunks)]
        return True


@dataclass
class Statement:
    """One COPY statement's share of the file: the lines sent, the records they hold, what was set
    aside meanwhile, and how to tell a record's line."""

    shift: int  # lines before its first record that hold no record's start (blank, inside a record)
    rejects: list[Reject] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)  # kept to name the rows PostgreSQL skips
    records: int = 0  # records sent
    size: int = 0  # bytes sent
    multi_line: bool = False  # a record over several lines was sent
    read: int = 0  # records read when it ended, set-aside ones included
    read_bytes: int = 0  # bytes of the file read when it ended
    marks: list[int] = field(default_factory=lambda: [0])  # from these records on…
    shifts: list[int] = field(default_factory=list)  # …their lines are shifted this much

    def __post_init__(self) -> None:
        self.shifts.append(self.shift)

    def line_of(self, record: int) -> int:
        """The physical line a record sent in this statement starts on."""
        return record + 1 + self.shifts[bisect.bisect_right(self.marks, record) - 1]


class Lane:
    """The file's remaining lines → blocks of COPY lines, and the rejects set aside on the way."""

    def __init__(self, stream: Stream, header: HeaderMap, target: Target) -> None:
        self._rows = CsvRows(header, target)
        self._specs = self._rows.plan.specs
        self._dataset = target.dataset.name
        self._encoding = target.dataset.encoding
        self._dialect = dialect = Dialect.of(target.dataset)
        self._delimiter = dialect.delimiter.encode()
        self._quote = dialect.quote.encode()
        self._format = b"%b%d" + self._delimiter.replace(b"%", b"%%") + b"%b\n"
        self._head = b"%d" % target.file_id + self._delimiter
        self.types_as_copy = not any(self._rows.plan.converters)  # PostgreSQL types every value
        self.keep_sent = False  # keep this statement's lines, to name the rows it skips
        self.records = 0  # records read, rejected ones included
        self.finished = False
        self._reader = LineReader(stream, target.label)
        self._inside = False  # a quoted field is open at the end of the last line looked at
        self._open_lines = self._open_bytes = 0  # of the quoted record still open
        self._shift = 0  # lines so far that hold no record's start (blank, or inside a record)
        self.statement = Statement(shift=0)

    def next_block(self) -> bytes | None:
        """The next block of COPY lines (empty when all its lines were set aside); None at the end."""
        block = self._reader.next_block()
        if block is None:
            self.finished = True
            return None
        data = block.data
        if self._inside or self._quote in data or b"\x00" in data:
            payload = self._line_by_line(block)
        else:
            seen = see(data, block.count, self._delimiter, self._rows.width)
            payload = self._line_by_line(block) if seen.gaps else self._whole(block, seen)
        if self.keep_sent and payload:
            self.statement.sent.append(payload)
        self.statement.size += len(payload)
        return payload

    def statement_full(self) -> bool:
        """Time to end the COPY statement (never inside a record)."""
        statement = self.statement
        return not self._inside and (
            statement.size >= SEGMENT_BYTES or len(statement.rejects) >= SEGMENT_REJECTS
        )

    def close_statement(self) -> Statement:
        """The statement so far; the next block starts another."""
        done, self.statement = self.statement, Statement(shift=self._shift)
        done.read, done.read_bytes = self.records, self._reader.bytes_read
        return done

    # --- a block at a time ---------------------------------------------------------------------

    def _whole(self, block: Block, seen: Seen) -> bytes:
        """Lines without quotes, blank lines or empty fields: those with a field too many or too
        few are set aside, the others numbered."""
        first = self.records + 1
        self.records += block.count
        self._mark(first)
        data, ends, numbers = block.data, seen.ends, np.arange(first, first + block.count)
        if seen.wrong.size:
            data, taken = without(data, ends, seen.wrong)
            for i, line in zip(seen.wrong.tolist(), taken, strict=True):
                body = line.removesuffix(b"\r")
                reject = self._rows.check(body.split(self._delimiter), body, first + i, block.first_line + i)
                assert reject is not None  # a field too many or too few
                self.statement.rejects.append(reject)
            if not data:
                return b""
            ends, numbers = line_ends(data), np.delete(numbers, seen.wrong)
        self.statement.records += numbers.size
        return numbered(data, ends, self._head, self._delimiter, numbers)

    def _line_by_line(self, block: Block) -> bytes:
        """Quotes, blank lines, empty fields: each line on its own, as the robust path reads it."""
        lines, first_line = block.lines, block.first_line
        parts: list[bytes] = []
        rows, delimiter, quote = self._rows, self._delimiter, self._quote
        for i, line in enumerate(lines):
            if self._inside:  # a line of a record that began above
                self._shift += 1
                self._open_lines += 1
                self._open_bytes += len(line)
                if self._open_lines > MAX_RECORD_LINES or self._open_bytes > MAX_RECORD_BYTES:
                    raise QuoteRunsOn(f"a quote opened {self._open_lines} lines before line {first_line + i}")
                self.statement.multi_line = True
                if quote in line:
                    self._inside = same_as_copy(line, True, self._dialect)
                parts.append(line + b"\n")
                continue
            body = line.removesuffix(b"\r")
            if not body:
                self._shift += 1
                continue
            self.records += 1
            record = self.records
            self._mark(record)
            self._open_lines = self._open_bytes = 0
            if quote in body:
                # Checked by COPY alone: a bad quoted record stops it, and the robust path reads it.
                self._inside = same_as_copy(line, False, self._dialect)
            else:
                fields = body.split(delimiter)
                if rows.suspect(fields, body):
                    reject = rows.check(fields, body, record, first_line + i)
                    if reject is not None:
                        self.statement.rejects.append(reject)
                        continue
            parts.append(self._format % (self._head, record, line))
            self.statement.records += 1
        return b"".join(parts)

    def _mark(self, record: int) -> None:
        """Note where the lines that hold no record's start put `record` and those after it."""
        statement = self.statement
        if self._shift != statement.shifts[-1]:
            statement.marks.append(record)
            statement.shifts.append(self._shift)

    # --- what PostgreSQL skipped -----------------------------------------------------------------

    def skipped(self, statement: Statement, named: list[tuple[int, str]]) -> list[Reject]:
        """Rejects for the rows a statement skipped, from (line of its input, column)."""
        if not named:
            return []
        if statement.multi_line:
            raise LaneCannotName("a row was skipped next to a record over several lines")
        ends = list(accumulate(block.count(b"\n") for block in statement.sent))
        split: dict[int, list[bytes]] = {}
        rejects = []
        for line, column in named:
            at = bisect.bisect_left(ends, line)
            lines = split.get(at) or split.setdefault(at, statement.sent[at].split(b"\n"))
            text = lines[line - 1 - (ends[at - 1] if at else 0)]
            _, number, body = text.split(self._delimiter, 2)
            record = int(number)
            value = self._value(body.removesuffix(b"\r"), column)
            reason = f"not {expectation(self._specs, column)}"
            rejects.append(Reject(record, statement.line_of(record), column, value, reason, self._dataset))
        return rejects

    def _value(self, body: bytes, column: str) -> str:
        text = body.decode(self._encoding, errors="replace")
        dialect = self._dialect
        if dialect.quote in text:
            fields = next(csv.reader([text], delimiter=dialect.delimiter, quotechar=dialect.quote))
        else:
            fields = text.split(dialect.delimiter)
        return fields[next(i for i, spec in enumerate(self._specs) if spec.column == column)]


def lane_statement(header: HeaderMap, target: Target, skip_bad: bool) -> str:
    """The COPY statement the lane's lines go to."""
    dialect = Dialect.of(target.dataset)
    data = [quote_ident(c.column) for _, c in header.mapped()]
    options = [
        "FORMAT csv",
        f"DELIMITER {_literal(dialect.delimiter)}",
        f"QUOTE {_literal(dialect.quote)}",
        f"ENCODING {_literal(PG_ENCODINGS[codecs.lookup(target.dataset.encoding).name])}",
        f"FORCE_NULL ({', '.join(data)})",
    ]
    if skip_bad:
        options += ["ON_ERROR ignore", "LOG_VERBOSITY verbose"]
    table = table_name(target.schema, target.dataset.table)
    return f"COPY {table} (_file_id, _record_no, {', '.join(data)}) FROM STDIN WITH ({', '.join(options)})"


async def copy_lane(conn: asyncpg.Connection, stream: Stream, header: HeaderMap, target: Target) -> LoadStats:
    """Load the rest of the stream (the header is read) in one pass; rejects are recorded."""
    lane = Lane(stream, header, target)
    widen_send_buffer(conn)
    # A value the robust path would convert (a lone decimal comma in a `;` file) must stop COPY.
    skip_bad = conn.get_server_version().major >= 17 and lane.types_as_copy
    lane.keep_sent = skip_bad
    copy = lane_statement(header, target, skip_bad)
    stats = LoadStats()
    producer = Producer(lane)
    try:
        with SkippedRows(conn) as skipped:
            last = False
            while not last:
                loaded, statement, last = await _copy_statement(conn, copy, producer)
                named = await skipped.named(statement.records - loaded) if loaded < statement.records else []
                rejects = sorted([*statement.rejects, *lane.skipped(statement, named)], key=_record_no)
                await ledger.write_rejects(conn, target.file_id, rejects)
                stats.rows_loaded += loaded
                stats.records, read_bytes = statement.read, statement.read_bytes
                stats.note_rejects(rejects)
                del statement, rejects  # its lines, before the next statement's pile up
                stop_early_if_hopeless(stats, read_bytes, stream.raw.size, target)
                producer.next_statement()
    finally:
        await producer.stop()
    check_ratio(stats, target)
    return stats


def _record_no(reject: Reject) -> int:
    return reject.record_no or 0


@dataclass
class _End:
    """The end of a statement's blocks (and, when `last`, of the file)."""

    statement: Statement
    last: bool


class Producer:
    """The lane's blocks, made in a thread up to AHEAD blocks before COPY takes them, across the
    ends of statements: the server waits for this process neither between blocks nor between
    statements, and two loads in one process each keep their server busy while the other's
    blocks are made."""

    def __init__(self, lane: Lane) -> None:
        self._lane = lane
        self._queue: asyncio.Queue[bytes | _End | BaseException] = asyncio.Queue(AHEAD)
        # A statement ends only once the one before it is written: a file of bad lines holds the
        # rejects of two statements at most.
        self._written = asyncio.Semaphore(1)
        self._stopped = False
        self._task = asyncio.ensure_future(self._run())

    async def get(self) -> bytes | _End:
        """The next block, or the end of a statement; raises what making a block raised."""
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def stop(self) -> None:
        """Stop making blocks and wait for the thread: it reads the file, which closes after."""
        self._stopped = True
        while not self._task.done():
            while not self._queue.empty():  # it may wait to put a block…
                self._queue.get_nowait()
            self.next_statement()  # …or to end a statement
            await asyncio.wait({self._task}, timeout=0.05)

    def next_statement(self) -> None:
        """The statement taken last is written: the next may end."""
        if self._written.locked():
            self._written.release()

    def _some_blocks(self) -> tuple[list[bytes], bool]:
        """Up to BATCH blocks, made in one trip to the thread (each trip costs the event loop about
        as much as checking and numbering a block), up to the end of the statement; and whether
        the file has ended."""
        lane, made = self._lane, list[bytes]()
        while len(made) < BATCH and not self._stopped:
            block = lane.next_block()
            if block is None:
                return made, True
            if block:
                made.append(block)
            if lane.statement_full():
                break
        return made, False

    async def _run(self) -> None:
        lane, put = self._lane, self._queue.put
        try:
            while not self._stopped:
                made, ended = await asyncio.to_thread(self._some_blocks)
                for block in made:
                    await put(block)
                if ended:
                    await put(_End(lane.close_statement(), last=True))
                    return
                if lane.statement_full():
                    await self._written.acquire()
                    await put(_End(lane.close_statement(), last=False))
        except Exception as exc:  # handed to the load, which raises it
            await put(exc)


async def _copy_statement(
    conn: asyncpg.Connection, copy: str, producer: Producer
) -> tuple[int, Statement, bool]:
    """One COPY statement of the producer's blocks, up to the end of a statement: the rows loaded,
    the statement, and whether it was the file's last."""
    first = await producer.get()
    if isinstance(first, _End):  # nothing to send: every line of it was set aside
        return 0, first.statement, first.last
    ended: list[_End] = []

    async def blocks() -> AsyncGenerator[bytes, None]:
        item: bytes | _End = first
        while isinstance(item, bytes):
            yield item
            item = await producer.get()
        ended.append(item)

    source = blocks()
    try:
        # asyncpg's public copy_to_table cannot pass ON_ERROR / LOG_VERBOSITY; _copy_in is the call
        # behind it, with our own statement.
        status = await unless_connection_lost(conn, conn._copy_in(copy, source, None))
    finally:
        with contextlib.suppress(RuntimeError):  # still running: it ends with the COPY task
            await source.aclose()
    return int(status.split()[-1]), ended[0].statement, ended[0].last
