"""The formats loadbay reads, one module each, behind one interface.

A format (a) reads a file's field names, so a file can be recognised by its header, and (b) loads
the file into its dataset's staging table, recording every bad row. The loader looks the format up
here by the file's extension and never asks which one it is. Adding a format is one module with a
class that has the members of `Format`, and one line in `FORMATS` below.

Formats read the file through the descriptor the loader opened and hashed: streamed formats
(delimited text, JSON) through `Source.stream()`, which hashes what it reads so the loader knows
the bytes loaded are the bytes hashed; formats that need random access (an `.xlsx` is a zip, a
`.parquet` file has its schema at the end) through `os.pread` on the same descriptor, checked by
the loader's identity check (inode, size, mtime) before the commit.
"""

from __future__ import annotations

import os
from typing import Protocol

import asyncpg

from app.errors import UnsupportedFormat
from models.datasets import DatasetRegistry, DatasetSpec
from services.ingest.csv_format import CsvFormat
from services.ingest.files import FileFormat
from services.ingest.json_load import JsonFormat
from services.ingest.parquet_load import ParquetFormat
from services.ingest.rows import LoadStats, Target
from services.ingest.source import Source
from services.ingest.xlsx_load import XlsxFormat

__all__ = ["FORMATS", "Format", "Source", "format_named", "format_of"]


class Format(Protocol):
    """One file format: how its field names are read and how a file of it is loaded."""

    @property
    def kind(self) -> str:
        """The format's name in logs and the ledger (`csv`, `xlsx`, …)."""

    @property
    def extensions(self) -> tuple[str, ...]:
        """Lower-case file name endings, with their dot (`.csv`)."""

    @property
    def compressible(self) -> bool:
        """Read as a stream, so it may also come gzipped (`.csv.gz`)."""

    def field_names(self, source: Source, dataset: DatasetSpec | None) -> list[str]:
        """The file's field names (its header), for recognising the dataset. `dataset` is the
        dataset the name matched, when one did (its options say how to read the file)."""

    async def load(
        self, conn: asyncpg.Connection, source: Source, target: Target, registry: DatasetRegistry
    ) -> LoadStats:
        """Load the whole file into `target` in the caller's transaction, rejects recorded."""


# One line per format: its module's class, in the order the README's table lists them.
FORMATS: tuple[Format, ...] = (
    CsvFormat(),
    JsonFormat("json", (".json",)),
    JsonFormat("ndjson", (".ndjson", ".jsonl")),
    XlsxFormat(),
    ParquetFormat(),
)

_BY_EXTENSION = {ext: fmt for fmt in FORMATS for ext in fmt.extensions}
_BY_KIND = {fmt.kind: fmt for fmt in FORMATS}


def _extensions_hint() -> str:
    streamed = [e for f in FORMATS if f.compressible for e in f.extensions]
    whole = [e for f in FORMATS if not f.compressible for e in f.extensions]
    return f"Drop {_listed(streamed)} files, optionally gzipped (.gz), or {_listed(whole)} files"


def _listed(items: list[str]) -> str:
    return ", ".join(items[:-1]) + " or " + items[-1] if len(items) > 1 else "".join(items)


def format_of(name: str) -> FileFormat:
    """The format a file name says the file has; UnsupportedFormat for any other name."""
    lowered = name.lower()
    compressed = lowered.endswith(".gz")
    base = lowered[:-3] if compressed else lowered
    suffix = os.path.splitext(base)[1]
    fmt = _BY_EXTENSION.get(suffix)
    if fmt is None or (compressed and not fmt.compressible):
        shown = (suffix + ".gz" if compressed else suffix) or "(no extension)"
        raise UnsupportedFormat(
            f"{shown} files are not read by loadbay", hint=_extensions_hint(), file_name=name
        )
    return FileFormat(fmt.kind, compressed)


def format_named(fmt: FileFormat) -> Format:
    """The format module of a file format."""
    return _BY_KIND[fmt.kind]
