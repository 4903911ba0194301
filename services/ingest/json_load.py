"""JSON and NDJSON files (optionally gzipped) into staging, streamed record by record.

A `.json` file is a top-level array, an object wrapping the array under `data`, `records`,
`items` or `results`, or a single object. Records are parsed by ijson's C backend as they are
read, so memory does not grow with the file. Nested objects flatten to `parent__child`; an array
of objects that the dataset declares as a child becomes rows of the child dataset (a shipment's
`Packages` become `packages` rows, inheriting JobNumber and ShipmentNumber); other arrays are kept
as JSON text. Numbers keep every digit; `false`, `0` and `""` keep their meaning. Fields the
dataset does not know go to `_extra` and are listed in the ledger's warnings.

Nesting deeper than MAX_JSON_DEPTH is refused on the raw bytes before ijson or json sees it (see
json_nesting): in a `.json` file it fails the file, on an NDJSON line it rejects that line. So
every record that reaches `flatten`, `plain` or `json_text` nests at most that deep.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from contextlib import aclosing
from dataclasses import dataclass, field
from decimal import Decimal

import asyncpg
import ijson

from app.errors import MalformedFile
from models.datasets import ChildSpec, DatasetRegistry, DatasetSpec, normalise_header
from services.ingest import ledger
from services.ingest.files import FileFormat
from services.ingest.json_nesting import MAX_JSON_DEPTH, NestingCounter, first_offset_too_deep
from services.ingest.rows import (
    Chunk,
    LoadStats,
    Reject,
    RobustCopy,
    RowPlan,
    Target,
    Value,
    check_ratio,
    json_text,
    prefetched,
    raw_text,
    stop_early_if_hopeless,
)
from services.ingest.source import Source, Stream, decode_line, numbered_lines

WRAPPER_KEYS = ("data", "records", "items", "results")
MAX_NDJSON_LINE = 16 << 20
MAX_RECORD_BYTES = MAX_NDJSON_LINE  # a record of a .json file: the same bound as an NDJSON line
_HINT = "Check that the file is complete (not cut off) and is JSON; a CSV file must be named .csv"
_TOO_DEEP = f"nests arrays and objects deeper than {MAX_JSON_DEPTH} levels"
_DEEP_HINT = (
    f"loadbay reads at most {MAX_JSON_DEPTH} levels of arrays and objects inside each other; "
    "check the program that wrote the file"
)


class JsonSource:
    """The records of a JSON or NDJSON stream, with their record and line numbers."""

    def __init__(self, stream: Stream, fmt: FileFormat, label: str) -> None:
        self.stream = _Tail(stream, label)
        self.kind = fmt.kind
        self.label = label
        self.line_no: int | None = None

    def records(self) -> Iterator[object]:
        """Each record as parsed; a line of NDJSON that is not JSON comes as `_BadLine`."""
        if self.kind == "ndjson":
            yield from self._ndjson()
            return
        first = self.stream.first_char()
        if first not in ("[", "{"):
            shown = self.stream.head(40)
            raise MalformedFile(
                f"the file is not JSON: it starts with {shown!r}",
                hint="A CSV file must be named .csv; JSON starts with [ or {",
                file_name=self.label,
            )
        prefix = "item" if first == "[" else None
        try:
            if prefix is None:
                prefix = self._object_prefix()
            self.stream.record_limit = MAX_RECORD_BYTES
            for record in ijson.items(self.stream, prefix, use_float=False, buf_size=65536):
                yield record
                self.stream.mark()
        except ijson.JSONError as exc:
            raise self._malformed(exc) from None

    def _object_prefix(self) -> str:
        """`data.item` (etc.) for a wrapper object, or "" when the object is itself the record."""
        probe = _Tail(self.stream.reopen(), self.label)
        depth = 0
        key = None
        for prefix, event, value in ijson.parse(probe, buf_size=65536):
            if event in ("start_map", "start_array"):
                if depth == 1 and event == "start_array" and key in WRAPPER_KEYS:
                    return f"{key}.item"
                depth += 1
            elif event in ("end_map", "end_array"):
                depth -= 1
            elif event == "map_key" and depth == 1 and prefix == "":
                key = value
        return ""

    def _ndjson(self) -> Iterator[object]:
        self.line_no = 0
        lines = numbered_lines(
            self.stream.readline, MAX_NDJSON_LINE, self.label, "NDJSON has one record a line"
        )
        for self.line_no, raw in lines:
            text = decode_line(raw, "utf-8", self.line_no, self.label)
            if not text.strip():
                continue
            text = text.rstrip("\r\n")
            too_deep = first_offset_too_deep(raw)
            if too_deep is not None:
                column = len(raw[:too_deep].decode("utf-8-sig", errors="replace")) + 1
                yield _BadLine(text, f"the line {_TOO_DEEP} (at column {column})")
                continue
            try:
                yield _DECODER.decode(text)
            except json.JSONDecodeError as exc:
                yield _BadLine(text, f"not valid JSON: {exc.msg} at column {exc.colno}")

    def _malformed(self, exc: Exception) -> MalformedFile:
        message = str(exc).split("\n")[0].strip()
        offset = self.stream.locate(str(exc))
        return MalformedFile(
            f"the JSON is not valid at byte {offset}: {message}", hint=_HINT, file_name=self.label
        )


@dataclass(frozen=True)
class _BadLine:
    text: str
    reason: str


class _Tail:
    """A stream reader that remembers the last bytes it handed out, to place a parse error, and
    refuses to hand out JSON that nests too deep for the parser."""

    def __init__(self, stream: Stream, label: str) -> None:
        self._stream = stream
        self._label = label
        self.consumed = 0
        self._tail = b""
        self._started = False
        self._nesting = NestingCounter()
        # The parser builds a whole record before handing it out: a record may not run longer.
        self.record_limit: int | None = None
        self._record_start = 0

    def reopen(self) -> Stream:
        return self._stream.reopen()

    def read(self, n: int = 65536) -> bytes:
        data = self._stream.read(n)
        if not self._started:
            self._started = True
            data = data.removeprefix(b"\xef\xbb\xbf")
        too_deep = self._nesting.feed(data)
        if too_deep is not None:
            raise MalformedFile(
                f"the JSON {_TOO_DEEP} at byte {self.consumed + too_deep}",
                hint=_DEEP_HINT,
                file_name=self._label,
            )
        self.consumed += len(data)
        if self.record_limit is not None and self.consumed - self._record_start > self.record_limit:
            raise MalformedFile(
                f"a record runs past byte {self.consumed}, longer than {self.record_limit >> 20} MiB",
                hint="A record this large is not a data row; split the data into records",
                file_name=self._label,
            )
        self._tail = (self._tail + data)[-(2 * 65536) :]
        return data

    def mark(self) -> None:
        """A record was handed out: the next one starts here."""
        self._record_start = self.consumed

    def readline(self, limit: int) -> bytes:
        line = self._stream.readline(limit)
        self.consumed += len(line)
        return line

    def first_char(self) -> str:
        head = self._stream.peek(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
        return chr(head[0]) if head else ""

    def head(self, n: int) -> str:
        return self._stream.peek(n).decode("utf-8", errors="replace")[:n]

    def locate(self, message: str) -> int:
        """The byte offset yajl's message points at, or how far the parser had read."""
        lines = message.split("\n")
        if len(lines) >= 3 and "^" in lines[2]:
            shown, pointer = lines[1], lines[2].index("^")
            snippet = shown.strip()
            if snippet:
                start = shown.index(snippet)
                haystack = self._tail.translate(bytes.maketrans(b"\n\r\t", b"   "))
                found = haystack.rfind(snippet.encode("utf-8", errors="replace"))
                if found >= 0:
                    return self.consumed - len(self._tail) + found + (pointer - start)
        return self.consumed


def flatten(record: dict[str, object], prefix: str = "", depth: int = 1) -> dict[str, object]:
    """Nested objects as `parent__child` fields; arrays stay values."""
    _within_limit(depth)
    flat: dict[str, object] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}__", depth + 1))
        else:
            flat[name] = value
    return flat


def _within_limit(depth: int) -> None:
    # Records from JsonSource never get here too deep; this bounds the recursive walks for any
    # other caller, before Python's own recursion limit would.
    if depth > MAX_JSON_DEPTH:
        raise MalformedFile(f"a record {_TOO_DEEP}", hint=_DEEP_HINT)


class Number(str):
    """A JSON number with a fraction or exponent, kept as written: every digit survives."""


_DECODER = json.JSONDecoder(parse_float=Number)


def as_text(value: object) -> str | None:
    """A JSON value as COPY text: false stays false, 0 stays 0, "" stays an empty string."""
    if isinstance(value, str):
        return value
    if value is None:
        return None
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int | Decimal | float):
        return str(value)
    return json_text(plain(value))


def plain(value: object, depth: int = 1) -> object:
    """`Number` strings back to numbers, so that `_extra` and JSON text keep them numeric."""
    if isinstance(value, Number):
        return Decimal(value)
    if isinstance(value, dict):
        _within_limit(depth)
        return {k: plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        _within_limit(depth)
        return [plain(v, depth + 1) for v in value]
    return value


class JsonRows:
    """Records of one dataset → staging rows, and rows of its child datasets."""

    def __init__(self, target: Target, registry: DatasetRegistry) -> None:
        dataset = target.dataset
        self.plan = RowPlan(list(dataset.columns), target)
        self._columns = {n: k for k, c in enumerate(dataset.columns) for n in c.matches()}
        self._children = {normalise_header(c.field): c for c in dataset.children}
        self.children = {
            c.field: JsonRows(target.for_dataset(registry.get(c.dataset)), registry) for c in dataset.children
        }
        self.unknown: Counter[str] = Counter()
        self._lookup: dict[str, int | ChildSpec] = {}

    def build(
        self, record: object, record_no: int, line_no: int | None
    ) -> tuple[list[Value] | Reject, dict[str, list[dict[str, object]]]]:
        """The staging row (or its rejection) and the child records found in it, by child field."""
        dataset = self.plan.target.dataset.name
        if isinstance(record, _BadLine):
            return Reject(record_no, line_no, None, None, record.reason, dataset, record.text[:10_000]), {}
        if not isinstance(record, dict):
            kind = type(record).__name__
            return Reject(
                record_no, line_no, None, None, f"a record must be an object, not {kind}", dataset
            ), {}
        values: list[str | None] = [None] * len(self.plan.specs)
        extra: dict[str, object] = {}
        children: dict[str, list[dict[str, object]]] = {}
        items = flatten(record) if dict in map(type, record.values()) else record
        for key, value in items.items():
            target = self._lookup.get(key)
            if target is None:
                target = self._lookup[key] = self._resolve(key)
            if isinstance(target, ChildSpec):
                if isinstance(value, list):
                    children[target.field] = [_inherit(item, record, target) for item in value]
                    continue
            elif target >= 0 and values[target] is None:
                values[target] = value if type(value) is str else as_text(value)
                continue
            extra[key] = value
        if extra:
            self.unknown.update(extra.keys())
        row = self.plan.row(values, record_no, line_no, json_text(plain(extra)) if extra else None)
        return row, children

    def _resolve(self, key: str) -> int | ChildSpec:
        """What a field name feeds: a column's index, a child dataset, or -1 for `_extra`."""
        normal = normalise_header(key)
        child = self._children.get(normal)
        if child is not None:
            return child
        return self._columns.get(normal, -1)


def _inherit(item: object, parent: dict[str, object], child: ChildSpec) -> dict[str, object]:
    if not isinstance(item, dict):
        return {"_value": item}
    merged = dict(item)
    known = {normalise_header(k) for k in item}
    for name in child.inherit:
        if normalise_header(name) not in known:
            value = next(
                (v for k, v in parent.items() if normalise_header(k) == normalise_header(name)), None
            )
            merged[name] = value
    return merged


@dataclass
class _Batch:
    """Up to CHUNK_ROWS parent rows and the child rows that came with them."""

    parent: Chunk = field(default_factory=lambda: Chunk(keep_empty_strings=True))
    children: dict[str, Chunk] = field(default_factory=dict)
    child_parents: dict[str, list[int]] = field(default_factory=dict)


def _batches(source: JsonSource, rows: JsonRows) -> Iterator[_Batch]:
    batch = _Batch()
    for record_no, record in enumerate(source.records(), start=1):
        batch.parent.records += 1
        row, children = rows.build(record, record_no, source.line_no)
        if isinstance(row, Reject):
            batch.parent.rejects.append(row if row.raw else _with_raw(row, record))
        else:
            batch.parent.add(row, record_no, source.line_no, record)
            _add_children(batch, rows, children, record_no, source.line_no)
        if batch.parent.full():
            yield batch
            batch = _Batch()
    yield batch


def _add_children(
    batch: _Batch,
    rows: JsonRows,
    children: dict[str, list[dict[str, object]]],
    record_no: int,
    line_no: int | None,
) -> None:
    """The child rows of one parent record (a shipment's packages) into the batch."""
    for name, items in children.items():
        child_rows = rows.children[name]
        chunk = batch.children.setdefault(name, Chunk(keep_empty_strings=True))
        for item in items:
            chunk.records += 1
            child_row, _ = child_rows.build(item, record_no, line_no)
            if isinstance(child_row, Reject):
                chunk.rejects.append(_with_raw(child_row, item))
            else:
                chunk.add(child_row, record_no, line_no, item)


def _with_raw(reject: Reject, item: object) -> Reject:
    return Reject(
        reject.record_no,
        reject.line_no,
        reject.column,
        reject.value,
        reject.reason,
        reject.dataset,
        raw_text(item),
    )


async def copy_json(
    conn: asyncpg.Connection, stream: Stream, fmt: FileFormat, target: Target, registry: DatasetRegistry
) -> LoadStats:
    """Load a JSON or NDJSON stream into staging (and its child datasets), with rejects."""
    rows = JsonRows(target, registry)
    source = JsonSource(stream, fmt, target.label)
    copier = RobustCopy(conn, rows.plan)
    child_copiers = {name: RobustCopy(conn, child.plan) for name, child in rows.children.items()}
    stats = LoadStats(path="json")
    async with aclosing(prefetched(_batches(source, rows))) as batches:
        async for batch in batches:
            loaded, refused = await copier.copy(batch.parent)
            stats.rows_loaded += loaded
            stats.records += batch.parent.records
            await ledger.write_rejects(conn, target.file_id, batch.parent.rejects + refused)
            stats.note_rejects(batch.parent.rejects + refused)
            dropped = {r.record_no for r in refused}
            for name, chunk in batch.children.items():
                if dropped:
                    chunk.drop_records(dropped)
                child_loaded, child_refused = await child_copiers[name].copy(chunk)
                stats.rows_loaded += child_loaded
                stats.records += chunk.records
                await ledger.write_rejects(conn, target.file_id, chunk.rejects + child_refused)
                stats.note_rejects(chunk.rejects + child_refused)
            stop_early_if_hopeless(stats, stream.raw.bytes_read, stream.raw.size, target)
    _warn_unknown(stats, rows)
    check_ratio(stats, target)
    return stats


def _warn_unknown(stats: LoadStats, rows: JsonRows) -> None:
    for child in (rows, *rows.children.values()):
        if child.unknown:
            stats.warnings.append(
                {"dataset": child.plan.target.dataset.name, "unknown_fields": dict(child.unknown)}
            )


class JsonFormat:
    """`.json` (an array, a wrapped array or one object) or NDJSON, optionally gzipped."""

    compressible = True

    def __init__(self, kind: str, extensions: tuple[str, ...]) -> None:
        self.kind = kind
        self.extensions = extensions

    def field_names(self, source: Source, dataset: DatasetSpec | None) -> list[str]:
        """The first record's flattened field names, for detection by header."""
        return first_record_keys(source.stream(), source.fmt, source.label)

    async def load(
        self, conn: asyncpg.Connection, source: Source, target: Target, registry: DatasetRegistry
    ) -> LoadStats:
        """Load the file's records into staging, rejecting bad ones as it goes."""
        stream = source.stream()
        stats = await copy_json(conn, stream, source.fmt, target, registry)
        # The bytes loaded must be the bytes hashed: a file still being written is taken again later.
        await asyncio.to_thread(stream.verify, source.sha256)
        return stats


def first_record_keys(stream: Stream, fmt: FileFormat, label: str) -> list[str]:
    """The flattened field names of the first record, to recognise the dataset by its fields."""
    for record in JsonSource(stream, fmt, label).records():
        return list(flatten(record)) if isinstance(record, dict) else []
    return []
