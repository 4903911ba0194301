"""Delimited text (`.csv`, `.tsv`, `.txt`, optionally gzipped) as a format: its dialect and
encoding found, then the fast path (COPY of the bytes as they are) or the robust path."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from app.errors import EmptyFile, EncodingError
from app.schema import record_sequence
from models.datasets import DatasetRegistry, DatasetSpec
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
    copy_robust,
    fast_path_possible,
    map_header,
    parse_header,
    read_header,
    read_header_line,
)
from services.ingest.rows import NO_ROWS_HINT, LoadStats, Target
from services.ingest.source import Source, Stream

log = logging.getLogger(__name__)

_TABLE_LOCK_SPACE = 0x6C6F6164  # "load": advisory-lock namespace for per-table load serialisation
_SAMPLE_BYTES = 1 << 18  # what the encoding detector reads of a file that failed to decode


class CsvFormat:
    kind = "csv"
    extensions = (".csv", ".tsv", ".txt")
    compressible = True

    def field_names(self, source: Source, dataset: DatasetSpec | None) -> list[str]:
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
    """Fast path first; on any refusal by PostgreSQL, the robust path from the start.

    Returns the statistics and the stream that was read to the end."""
    schema, dataset = target.schema, target.dataset
    dialect = Dialect.of(dataset)
    header = map_header(read_header(stream, dataset.encoding, target.label, dialect), dataset, target.label)
    if fast_path_possible(header, target):
        # Loads of one table take turns so that the table's record sequence restarts at 1.
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))", _TABLE_LOCK_SPACE, f"{schema}.{dataset.table}"
        )
        await conn.execute("SELECT setval($1::regclass, 1, false)", record_sequence(schema, dataset))
        try:
            async with conn.transaction():
                rows = await copy_fast(conn, stream, header, target)
                if rows == 0:
                    raise EmptyFile("the file has a header but no data rows", hint=NO_ROWS_HINT)
            return LoadStats(rows_loaded=rows, records=rows), stream
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            log.info(
                "%s: COPY refused the file as it is (%s); reading it row by row",
                target.label,
                type(exc).__name__,
            )
        stream = stream.reopen()
        read_header(stream, dataset.encoding, target.label, dialect)
    return await copy_robust(conn, stream, header, target, stream.raw.size), stream
