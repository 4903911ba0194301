"""Excel workbooks (`.xlsx`, `.xlsm`) as a format: one sheet's rows into staging.

The sheet is the dataset's `sheet` or the first; the header is its first non-empty row, or the
dataset's `header_row`. Cells arrive as the sheet shows them (see xlsx_reader) and go the way of
CSV values: the header maps them, Python checks the row rules, PostgreSQL types them. A bad row
is recorded with its place as Excel names it (`Sheet1!C17: not a whole number`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import aclosing
from dataclasses import dataclass

import asyncpg

from app.errors import EmptyFile, MalformedFile
from models.datasets import DatasetRegistry, DatasetSpec
from models.headers import HeaderMap
from services.ingest import ledger
from services.ingest.csv_load import extra_names, extras_warnings, map_header
from services.ingest.rows import (
    NO_ROWS_HINT,
    Chunk,
    LoadStats,
    Reject,
    RobustCopy,
    RowPlan,
    Target,
    check_ratio,
    chunks_of,
    prefetched,
    stop_early_if_hopeless,
)
from services.ingest.source import Source
from services.ingest.xlsx_reader import CellError, SheetRow, Workbook, cell_reference, column_letter


@dataclass(frozen=True)
class Sheet:
    """The sheet being read: its name, its header and the rows after it."""

    name: str
    header_row: int
    first_column: int  # the header's span of columns, from 0
    fields: list[str]
    rows: Iterator[SheetRow]

    @property
    def span(self) -> str:
        """The header's columns as Excel names them (`A:M`)."""
        last = self.first_column + len(self.fields) - 1
        return f"{column_letter(self.first_column)}:{column_letter(last)}"


def open_sheet(source: Source, dataset: DatasetSpec | None) -> Sheet:
    """The dataset's sheet (or the first) with its header row found."""
    book = Workbook(io.BufferedReader(source.random_access(), buffer_size=1 << 16), source.label)
    name, part = book.sheet_part(dataset.sheet if dataset else None)
    rows = book.rows(part, book.shared_strings())
    wanted = dataset.header_row if dataset else None
    for row in rows:
        if wanted is not None and row.number < wanted:
            continue
        if wanted is not None and row.number > wanted:
            break
        first, last = min(row.cells), max(row.cells)
        fields = [str(row.cells.get(c) or "") for c in range(first, last + 1)]
        return Sheet(name, row.number, first, fields, rows)
    if wanted is not None:
        raise MalformedFile(
            f"row {wanted} of sheet {name!r} (the dataset's header_row) is empty",
            hint="Set header_row in datasets.toml to the row that holds the column names",
            file_name=source.label,
        )
    raise EmptyFile(f"sheet {name!r} of the workbook has no rows", hint=NO_ROWS_HINT, file_name=source.label)


class XlsxFormat:
    """Excel workbooks (.xlsx, .xlsm): a streaming reader, cells as they show."""

    kind = "xlsx"
    extensions = (".xlsx", ".xlsm")
    compressible = False

    def field_names(self, source: Source, dataset: DatasetSpec | None) -> list[str]:
        """The header row's names, for detection by header."""
        return open_sheet(source, dataset).fields

    async def load(
        self, conn: asyncpg.Connection, source: Source, target: Target, registry: DatasetRegistry
    ) -> LoadStats:
        """Load the sheet's rows into staging, rejects named by their cell."""
        sheet = open_sheet(source, target.dataset)
        header = map_header(sheet.fields, target.dataset, target.label)
        rows = SheetRows(sheet, header, target)
        copier = RobustCopy(conn, rows.plan, empty_is_null=True)
        stats = LoadStats(path="xlsx")
        async with aclosing(prefetched(rows.chunks())) as chunks:
            async for chunk in chunks:
                loaded, refused = await copier.copy(chunk)
                stats.rows_loaded += loaded
                stats.records += chunk.records
                rejects = sorted(
                    [*chunk.rejects, *map(rows.located, refused)], key=lambda r: r.record_no or 0
                )
                await ledger.write_rejects(conn, target.file_id, rejects)
                stats.note_rejects(rejects)
                stop_early_if_hopeless(stats, 1, 1, target)
        if header.extras:
            stats.warnings.extend(extras_warnings(header, stats.rows_loaded))
        check_ratio(stats, target)
        return stats


class SheetRows:
    """Sheet rows → staging rows, the way CsvRows turns records into them."""

    def __init__(self, sheet: Sheet, header: HeaderMap, target: Target) -> None:
        self.sheet = sheet
        mapped = header.mapped()
        self.plan = RowPlan([c for _, c in mapped], target)
        self.indexes = [i for i, _ in mapped]
        self.extras = list(zip(header.extras, extra_names(header), strict=True))
        self.columns = {c.column: sheet.first_column + i for i, c in mapped}
        self.dataset = target.dataset.name

    def chunks(self) -> Iterator[Chunk]:
        """The sheet's rows as chunks for COPY, each row built or rejected with its cell."""
        return chunks_of(
            (record_no, row.number, self._row(row, record_no))
            for record_no, row in enumerate(self.sheet.rows, start=1)
        )

    def _row(self, row: SheetRow, record_no: int) -> list[str | int | None] | Reject:
        first, width = self.sheet.first_column, len(self.sheet.fields)
        outside = [c for c in row.cells if not first <= c < first + width]
        if outside:
            where = cell_reference(self.sheet.name, min(outside), row.number)
            return Reject(
                record_no,
                row.number,
                None,
                str(row.cells[min(outside)]),
                f"{where}: a value outside the header's columns ({self.sheet.span})",
                self.dataset,
            )
        cells = [row.cells.get(first + i) for i in range(width)]
        for i, cell in enumerate(cells):
            if isinstance(cell, CellError):
                where = cell_reference(self.sheet.name, first + i, row.number)
                return Reject(
                    record_no,
                    row.number,
                    None,
                    str(cell),
                    f"{where}: the cell holds the error {cell}",
                    self.dataset,
                )
        values: list[str | None] = [cells[i] for i in self.indexes]
        extra = json.dumps({name: cells[i] for i, name in self.extras}) if self.extras else None
        built = self.plan.row(values, record_no, row.number, extra)
        return self.located(built) if isinstance(built, Reject) else built

    def located(self, reject: Reject) -> Reject:
        """The reject with its place as Excel names it at the start of its reason."""
        if reject.line_no is None:
            return reject
        column = self.columns.get(reject.column) if reject.column else None
        where = cell_reference(self.sheet.name, column, reject.line_no)
        return Reject(
            reject.record_no,
            reject.line_no,
            reject.column,
            reject.value,
            f"{where}: {reject.reason}",
            reject.dataset,
            reject.raw,
        )
