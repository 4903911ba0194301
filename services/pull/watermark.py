"""Watermarks: the newest version of an ERP table a pull has loaded, kept in PostgreSQL.

A watermark is whatever the ERP's watermark column holds (a SQL Server rowversion arrives as
8 bytes, a modified time as a datetime, a counter as an int). It is stored as text with its kind,
and bound back as the same Python type, so the ERP compares it with its own column's type.

The stored value moves only inside the transaction that loads the rows it covers; the update is
conditional on the row read before the pull, so two processes can never both advance it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

import asyncpg

from app.errors import WatermarkMoved

_KINDS: dict[str, type] = {
    "int": int,
    "decimal": Decimal,
    "float": float,
    "binary": bytes,
    "datetime": datetime,
    "date": date,
    "text": str,
}


def kind_of(python_type: type) -> str:
    """How a column whose values arrive as `python_type` is kept as a watermark."""
    if issubclass(python_type, bool):
        raise ValueError("a yes/no column cannot be a watermark")
    if issubclass(python_type, bytearray | memoryview):
        python_type = bytes
    for kind, kept_as in _KINDS.items():
        if kind == "date" and issubclass(python_type, datetime):
            continue  # a datetime is a date too; it was matched as one before
        if issubclass(python_type, kept_as):
            return kind
    raise ValueError(
        f"a {python_type.__name__} column cannot be a watermark: use a rowversion, a number, "
        "or a date/time column that grows on every write"
    )


# How each kind's text is read back (the inverse of Watermark.text).
_PARSERS: dict[str, Callable[[str], object]] = {
    "int": int,
    "decimal": Decimal,
    "float": float,
    "binary": bytes.fromhex,
    "datetime": datetime.fromisoformat,
    "date": date.fromisoformat,
    "text": str,
}


@dataclass(frozen=True)
class Watermark:
    """How far a dataset's pull has read: a value of the ERP's watermark column, and its kind."""

    kind: str
    value: object

    @classmethod
    def of(cls, value: object) -> Watermark:
        """The watermark of an ERP value (its kind follows the Python type the driver gave)."""
        if isinstance(value, bytearray | memoryview):
            value = bytes(value)
        return cls(kind_of(type(value)), value)

    def text(self) -> str:
        """The value as stored in ingest.pull_watermarks."""
        value = self.value
        if isinstance(value, bytes):
            return value.hex()
        if isinstance(value, date):  # date and datetime
            return value.isoformat()
        return str(value)

    @classmethod
    def parse(cls, kind: str, text: str) -> Watermark:
        """The ODBC parameter for the value (bytes, int, datetime, ...), read back from its text."""
        return cls(kind, _PARSERS[kind](text))

    def __str__(self) -> str:
        return "0x" + self.text().upper() if self.kind == "binary" else self.text()


@dataclass(frozen=True)
class Stored:
    """A watermark row as read at the start of a pull (for the compare-and-set at its end)."""

    source: str
    watermark: Watermark
    file_id: int


async def load(conn: asyncpg.Connection, dataset: str) -> Stored | None:
    """The stored watermark of a dataset for this source, or None (the pull reads everything)."""
    row = await conn.fetchrow(
        "SELECT source, kind, value, file_id FROM ingest.pull_watermarks WHERE dataset = $1", dataset
    )
    if row is None:
        return None
    return Stored(row["source"], Watermark.parse(row["kind"], row["value"]), row["file_id"])


async def advance(
    conn: asyncpg.Connection,
    dataset: str,
    source: str,
    watermark: Watermark,
    *,
    file_id: int,
    rows: int,
    expected_file_id: int | None,
) -> None:
    """Move the watermark to `watermark`, if it is still what the pull started from."""
    moved = await conn.fetchval(
        """
        INSERT INTO ingest.pull_watermarks AS w (dataset, source, kind, value, file_id, rows_pulled)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (dataset) DO UPDATE
            SET source = excluded.source, kind = excluded.kind, value = excluded.value,
                file_id = excluded.file_id, rows_pulled = excluded.rows_pulled, updated_at = now()
            WHERE w.file_id IS NOT DISTINCT FROM $7
        RETURNING true
        """,
        dataset,
        source,
        watermark.kind,
        watermark.text(),
        file_id,
        rows,
        expected_file_id,
    )
    if not moved:
        raise WatermarkMoved(
            f"another process advanced the {dataset} watermark during this pull",
            hint="This pull is rolled back; the next one reads from the new watermark",
        )
