"""The ERP side of a pull: read-only ODBC, one SELECT per table, rows streamed to a spool file.

Everything here is blocking (pyodbc); callers run it in a thread. pyodbc is imported when a pull
starts, so loadbay runs without unixODBC installed as long as nobody pulls.

A table's rows are selected through a derived table, so a custom query and a plain table read
the same way. Its columns are looked at first (`WHERE 1 = 0`, no row read), then only the
columns that feed the dataset, and the watermark, are read:

    SELECT src."JobNumber", …, src."<watermark>"
    FROM (<EPMS_*_QUERY, or SELECT * FROM <EPMS_*_TABLE>>) src
    WHERE src."<watermark>" > ?            -- not on the first pull
    ORDER BY src."<watermark>"

On SQL Server a rowversion watermark also gets `AND src.<watermark> < MIN_ACTIVE_ROWVERSION()`:
a transaction still open in the ERP may hold a lower rowversion than rows already committed, and
without the bound the watermark would pass it and its row would never be pulled.
"""

from __future__ import annotations

import json
import math
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

from app.errors import ConfigError, ErpError, PullCancelled
from models.datasets import DatasetSpec
from models.headers import HeaderProblem, match_header
from services.pull.watermark import Watermark, kind_of

LOGIN_TIMEOUT_S = 30
QUERY_TIMEOUT_S = 600
FETCH_ROWS = 5_000

# One encoder for every row: json.dumps with any non-default option builds a new one per call.
_to_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_PART = re.compile(r'[A-Za-z_@#][A-Za-z0-9_@#$]*|\[[^\]]+\]|"[^"]+"')
_SECRET_KEYS = {"pwd", "password"}


def quote_name(name: str) -> str:
    """`dbo.Shipment` → `"dbo"."Shipment"`; [bracketed] and "quoted" parts keep their text.

    Double quotes are standard SQL: SQL Server's ODBC driver sets QUOTED_IDENTIFIER on."""
    return ".".join(quote_identifier(_unquote(part)) for part in _PART.findall(name))


def quote_identifier(raw: str) -> str:
    """A column name quoted for the ERP's SQL (brackets or double quotes kept as given)."""
    return '"' + raw.replace('"', '""') + '"'


def _unquote(part: str) -> str:
    return part[1:-1] if part[:1] in '["' else part


def check_query(query: str, variable: str) -> str:
    """A custom query is one SELECT (or WITH … SELECT): loadbay never writes to the ERP."""
    body = query.strip().rstrip(";").strip()
    if not re.match(r"(?is)^(select|with)\b", body) or ";" in body:
        raise ConfigError(
            f"{variable} must be a single SELECT statement",
            hint="loadbay only reads the ERP; give a SELECT without ';' (its rows, with the "
            "watermark column, are what --pull reads)",
        )
    if re.search(r"(?i)\border\s+by\b[^)]*$", body):
        raise ConfigError(
            f"{variable} ends in ORDER BY",
            hint="Leave the order out: loadbay wraps the query and orders by the watermark column itself",
        )
    return body


def redact(text: str, connection_string: str) -> str:
    """`text` with every password of the connection string replaced by ***."""
    for key, value in _pairs(connection_string):
        if key.lower() in _SECRET_KEYS and value:
            text = text.replace(value, "***")
    return text


def _pairs(connection_string: str) -> Iterator[tuple[str, str]]:
    # ODBC connection strings: KEY=value pairs separated by ';', values optionally in {braces}
    # (where '}}' is a literal brace).
    for match in re.finditer(r"\s*([^=;]+?)\s*=\s*(\{(?:[^}]|\}\})*\}|[^;]*)", connection_string):
        key, value = match.group(1), match.group(2)
        yield key, value[1:-1].replace("}}", "}") if value.startswith("{") else value.strip()


@dataclass(frozen=True)
class Table:
    """What one dataset pulls: from which SELECT, with which watermark column."""

    dataset: DatasetSpec
    select: str  # the rows: the custom query, or SELECT * FROM the table
    label: str  # the table's name, or the variable holding the custom query
    watermark_column: str

    @property
    def source(self) -> str:
        """Names what the stored watermark belongs to; a change starts the pull over."""
        return f"{self.label} by {self.watermark_column}"


@dataclass
class Fetched:
    """One batch of ERP rows and the largest watermark among them."""

    rows: int
    watermark: Watermark | None
    ignored_columns: list[str]


def driver_manager() -> Any:
    """The pyodbc module; it needs unixODBC's libodbc at import."""
    try:
        import pyodbc
    except ImportError as exc:
        raise ConfigError(
            f"pyodbc cannot load the ODBC driver manager ({exc})",
            hint="Install unixODBC and the ERP's ODBC driver (the Docker image has both)",
        ) from None
    return pyodbc


class Erp:
    """One read-only ODBC connection to the ERP."""

    def __init__(self, connection_string: str) -> None:
        self._connection_string = connection_string
        self._pyodbc = pyodbc = driver_manager()
        # A pull cancelled mid-read asks to close while its read still runs on another thread:
        # the read then closes the connection when it ends, never two threads on one handle.
        self._state = threading.Lock()
        self._reading = self._close_requested = False
        with self._errors("could not connect to the ERP"):
            self.connection = pyodbc.connect(
                connection_string, autocommit=False, readonly=True, timeout=LOGIN_TIMEOUT_S
            )
        try:
            self.connection.timeout = QUERY_TIMEOUT_S
        except pyodbc.Error:
            pass  # not every driver has query timeouts (psqlODBC has none)
        with self._errors("the ERP connection does not answer"):
            self.dbms = str(self.connection.getinfo(pyodbc.SQL_DBMS_NAME))

    def close(self) -> None:
        """Close the ODBC connection."""
        with self._state:
            if self._reading:
                self._close_requested = True
                return
        self._close_now()

    def _close_now(self) -> None:
        try:
            self.connection.rollback()  # nothing was written; end the read transaction
            self.connection.close()
        except self._pyodbc.Error:
            pass  # the connection is gone already

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except self._pyodbc.Error as exc:
            detail = " ".join(" ".join(str(arg) for arg in exc.args[1:]).split()) or str(exc)
            raise ErpError(redact(f"{what}: {detail}", self._connection_string)) from None

    def fetch(self, table: Table, after: Watermark | None, spool: Path, cancel: threading.Event) -> Fetched:
        """Write the rows changed since `after` to `spool` as NDJSON, one object per row.

        NDJSON keeps what the ERP said: NULL apart from '', numbers with every digit, booleans.
        Only the dataset's columns are read; the others are named in `ignored_columns`."""
        with self._state:
            self._reading = True
        try:
            cursor = self.connection.cursor()
            try:
                return self._fetch(cursor, table, after, spool, cancel)
            finally:
                cursor.close()
        finally:
            with self._state:
                self._reading = False
                close = self._close_requested
            if close:
                self._close_now()

    def _fetch(
        self, cursor: Any, table: Table, after: Watermark | None, spool: Path, cancel: threading.Event
    ) -> Fetched:
        # The columns first, without reading a row (the ERP plans `WHERE 1 = 0` and stops):
        # the watermark column and the dataset's required fields are checked before any read.
        with self._errors(f"the ERP refused the read of {table.label}"):
            cursor.execute(f"SELECT * FROM ({table.select}) src WHERE 1 = 0")
            description = cursor.description
        names = [d[0] for d in description]
        position = self._watermark_position(table, names)
        header = self._header(table, names)
        try:
            binary = kind_of(description[position][1]) == "binary"
        except ValueError as exc:
            raise ErpError(f"{table.label}: {names[position]} (EPMS_WATERMARK_COLUMN): {exc}") from None
        wanted = [(i, column.source) for i, column in header.mapped()]
        columns = [names[i] for i, _ in wanted]
        if header.targets[position] is None:  # read for the watermark, not loaded
            columns.append(names[position])
        mark_at = columns.index(names[position])
        query = build_query(
            table.select, columns, names[position], self.dbms, first=after is None, binary=binary
        )
        # Text, integers and booleans are JSON as they come; other types need converting.
        fields = [
            (k, source, None if description[i][1] in (str, int, bool) else json_value)
            for k, (i, source) in enumerate(wanted)
        ]
        rows = 0
        newest: Any = None
        with self._errors(f"reading {table.label} failed"), spool.open("w", encoding="utf-8") as out:
            cursor.execute(query, *([after.value] if after is not None else []))
            while batch := cursor.fetchmany(FETCH_ROWS):
                if cancel.is_set():
                    raise PullCancelled("loadbay is stopping; the pull in hand rolls back")
                lines = []
                for row in batch:
                    mark = row[mark_at]
                    if mark is not None and (newest is None or mark > newest):
                        newest = mark
                    record = {
                        key: row[i] if convert is None else convert(row[i]) for i, key, convert in fields
                    }
                    lines.append(_to_json(record))
                out.write("\n".join(lines) + "\n")
                rows += len(batch)
        ignored = [names[i] for i in header.extras if i != position]
        return Fetched(rows, Watermark.of(newest) if newest is not None else after, ignored)

    def _watermark_position(self, table: Table, names: list[str]) -> int:
        wanted = _unquote(table.watermark_column).lower()
        for i, name in enumerate(names):
            if name.lower() == wanted:
                return i
        raise ErpError(
            f"{table.label} has no column {table.watermark_column} (EPMS_WATERMARK_COLUMN). "
            f"Its columns: {', '.join(names)}"
        )

    def _header(self, table: Table, names: list[str]) -> Any:
        try:
            return match_header(names, table.dataset)
        except HeaderProblem as exc:
            raise ErpError(f"{table.label} cannot feed dataset {table.dataset.name}: {exc.message}") from None


def build_query(
    select: str, columns: list[str], watermark: str, dbms: str, *, first: bool, binary: bool
) -> str:
    """The read of `columns` (the dataset's and the watermark) of the rows after the watermark."""
    column = "src." + quote_identifier(watermark)
    conditions = [] if first else [f"{column} > ?"]
    if binary and "sql server" in dbms.lower():
        conditions.append(f"{column} < MIN_ACTIVE_ROWVERSION()")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    listed = ", ".join("src." + quote_identifier(c) for c in columns)
    return f"SELECT {listed} FROM ({select}) src{where} ORDER BY {column}"


def json_value(value: object) -> object:
    """An ODBC value as JSON that the loader types exactly as the ERP had it."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal):
        return str(value)  # as text: every digit kept; PostgreSQL types it
    if isinstance(value, datetime | date | time):
        return value.isoformat()  # a datetime without offset is in SOURCE_TIMEZONE, as in a drop
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex().upper()
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)
