"""Delimited text (`.csv`, `.tsv`, `.txt`, optionally gzipped) as a format: its dialect and
encoding found, then the fast path (COPY of the bytes as they are) or the robust path."""

from __future__ import annotations

import asyncio
import logging
import re

import asyncpg

from app.errors import EmptyFile, EncodingError
from app.schema import quote_ident, table_name
from models.datasets import SQL_TYPES, DatasetRegistry, DatasetSpec
from models.headers import HeaderMap
from services.ingest.csv_dialect import (
    Dialect,
    bom_encoding,
    needs_transcoding,
    sniff_delimiter,
    with_likely_encoding,
)
from services.ingest.csv_load import (
    MAX_LINE_BYTES,
    copy_fast,
    copy_possible,
    copy_robust,
    map_header,
    numbers_to_convert,
    parse_header,
    read_header,
    read_header_line,
)
from services.ingest.rows import NO_ROWS_HINT, LoadStats, Target
from services.ingest.source import Source, Stream

log = logging.getLogger(__name__)

_SAMPLE_BYTES = 1 << 18  # what the encoding detector reads of a file that failed to decode


class CsvFormat:
    """Delimited text (.csv, .tsv, .txt): COPY fast path, robust path with rejects."""

    kind = "csv"
    extensions = (".csv", ".tsv", ".txt")
    compressible = True

    def field_names(self, source: Source, dataset: DatasetSpec | None) -> list[str]:
        """The header line's fields, for detection by header."""
        stream = source.stream()
        declared = dataset.encoding if dataset else "utf-8"
        marked = bom_encoding(stream.peek(4)) is not None
        encoding = _read_as(stream, declared)
        # Until the dataset is known, latin-1 decodes any bytes (unless a BOM said what they are);
        # the dataset's encoding applies when loading.
        text = read_header_line(stream, encoding if marked else "latin-1", source.label)
        quote = dataset.quote if dataset else '"'
        delimiter = (dataset.delimiter if dataset else None) or sniff_delimiter(text, quote)
        return parse_header(text, Dialect(delimiter, quote), source.label)

    async def load(
        self, conn: asyncpg.Connection, source: Source, target: Target, registry: DatasetRegistry
    ) -> LoadStats:
        """Load the file into its staging table, rejecting bad rows as it goes."""
        stream = source.stream()
        read_as = target.for_dataset(_as_read(stream, target.dataset, source.label))
        try:
            stats, stream = await load_csv(conn, stream, read_as)
        except EncodingError as exc:
            sample = await asyncio.to_thread(source.stream().read, _SAMPLE_BYTES)
            raise with_likely_encoding(exc, sample, target.dataset) from None
        # The bytes loaded must be the bytes hashed: a file still being written is taken again later.
        await asyncio.to_thread(stream.verify, source.sha256)
        return stats


def _read_as(stream: Stream, declared: str) -> str:
    """The encoding the rest of the stream is read in: a BOM's, else the declared one; one that
    is not ASCII-compatible is transcoded to UTF-8 from here on."""
    encoding = bom_encoding(stream.peek(4)) or declared
    if needs_transcoding(encoding):
        stream.transcode(encoding)
        return "utf-8"
    return encoding


def _as_read(stream: Stream, dataset: DatasetSpec, label: str) -> DatasetSpec:
    """The dataset with the file's own encoding and delimiter filled in, where it did not
    declare them, so that every reader after this one reads the file the same way."""
    encoding = _read_as(stream, dataset.encoding)
    delimiter: str | None = dataset.delimiter
    if delimiter is None:
        head = stream.peek(MAX_LINE_BYTES + 1)
        end = min((i for i in (head.find(b"\n"), head.find(b"\r")) if i >= 0), default=len(head))
        delimiter = sniff_delimiter(head[:end].decode(encoding, errors="replace"), dataset.quote)
        log.debug("%s: delimiter %r found in the header line", label, delimiter)
    return dataset.model_copy(update={"encoding": encoding, "delimiter": delimiter})


async def load_csv(conn: asyncpg.Connection, stream: Stream, target: Target) -> tuple[LoadStats, Stream]:
    """Fast path first (one pass of COPY, through a landing table when numbers need converting);
    when PostgreSQL stops it, the robust path from the start.

    Returns the statistics and the stream that was read to the end."""
    dataset = target.dataset
    dialect = Dialect.of(dataset)
    header = map_header(read_header(stream, dataset.encoding, target.label, dialect), dataset, target.label)
    if copy_possible(header, target):
        # numpy comes with the lane: imported for the first CSV file, not by every command.
        from services.ingest.csv_lane import copy_lane

        try:
            async with conn.transaction():
                if numbers_to_convert(header, target):
                    rows = await copy_landed(conn, stream, header, target)
                    if rows == 0:
                        raise EmptyFile("the file has a header but no data rows", hint=NO_ROWS_HINT)
                    stats = LoadStats(rows_loaded=rows, records=rows)
                else:
                    stats = await copy_lane(conn, stream, header, target)
            return stats, stream
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            log.info(
                "%s: COPY refused the file as it is (%s); reading it row by row",
                target.label,
                type(exc).__name__,
            )
        stream = stream.reopen()
        read_header(stream, dataset.encoding, target.label, dialect)
    return await copy_robust(conn, stream, header, target, stream.raw.size), stream


async def copy_landed(conn: asyncpg.Connection, stream: Stream, header: HeaderMap, target: Target) -> int:
    """COPY into a temporary table of text, then one INSERT … SELECT that converts the numbers
    written the dataset's way (`1.234,56`) in SQL. A value written any other way makes the cast
    fail, so the file goes to the robust path, which rejects that row naming the column."""
    columns = [c for _, c in header.mapped()]
    landing = "lb_landing"
    await conn.execute(f"DROP TABLE IF EXISTS {landing}")
    await conn.execute(
        f"CREATE TEMPORARY TABLE {landing} (_n bigint GENERATED ALWAYS AS IDENTITY, "
        + ", ".join(f"{quote_ident(c.column)} text" for c in columns)
        + ") ON COMMIT DROP"
    )
    await copy_fast(conn, stream, header, target, into=landing)
    converting = {c.column for c in numbers_to_convert(header, target)}
    pattern, strip = _number_style(target.dataset)
    params: list[object] = [target.dataset.decimal_mark]  # $1
    stripped = "{}"
    if strip:
        params.append(strip)
        stripped = f"translate({{}}, ${len(params)}, '')"
    # Without thousands, a value is in style unless it holds a point (LIKE costs far less than a
    # regular expression; numeric's own input then checks the rest, as on the robust path).
    test = "NOT LIKE '%.%'"
    if target.dataset.thousands:
        params.append(pattern)
        test = f"~ ${len(params)}"
    values = [
        f"(CASE WHEN {quote_ident(c.column)} {test} THEN replace({stripped.format(quote_ident(c.column))}, "
        f"$1, '.') ELSE {quote_ident(c.column)} || ' is not in the declared style' END)::{SQL_TYPES[c.type]}"
        if c.column in converting
        else f"{quote_ident(c.column)}::{SQL_TYPES[c.type]}"
        for c in columns
    ]
    params.append(target.file_id)
    status = await conn.execute(
        f"INSERT INTO {table_name(target.schema, target.dataset.table)} "
        f"(_file_id, _record_no, {', '.join(quote_ident(c.column) for c in columns)}) "
        f"SELECT ${len(params)}::bigint, _n, {', '.join(values)} FROM {landing}",
        *params,
    )
    await conn.execute(f"DROP TABLE {landing}")
    return int(status.split()[-1])


def _number_style(dataset: DatasetSpec) -> tuple[str, str]:
    """The dataset's way of writing numbers as a PostgreSQL regular expression, and the
    characters to remove before the decimal mark becomes a point."""
    decimal, thousands = dataset.decimal_mark, dataset.thousands
    groups = "[ \u00a0\u202f]" if thousands == " " else re.escape(thousands)
    whole = f"(\\d{{1,3}}({groups}\\d{{3}})+|\\d+)" if thousands else "\\d+"
    mark = re.escape(decimal)
    pattern = f"^\\s*[+-]?({whole}({mark}\\d*)?|{mark}\\d+)\\s*$"
    strip = " \u00a0\u202f" if thousands == " " else thousands
    return pattern, strip
