"""An ERP-like database for the pull tests, read through pyodbc and the PostgreSQL ODBC driver.

It lives on the test PostgreSQL server in a database of its own, shaped like the EPMS tables:
`dbo."Shipment"` and `dbo."Package"`, each with a `RowVersion` that grows on every insert and
update (as SQL Server's rowversion does) and `RowStamp`, the same number as 8 big-endian bytes
(the binary shape a rowversion arrives in). loadbay reads it as `erp_reader`, a login that may
only SELECT: any write loadbay attempted would fail.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import pytest

from tests.pg import execute, fetchval

DRIVER = "PostgreSQL Unicode"
READER = f"erp_reader_{os.getpid()}"
READER_PASSWORD = "erp-reader-pw-7Q"

# dbo."Shipment": (column, type and constraints), as an ERP table might have it.
SHIPMENT_TABLE = (
    ("JobNumber", "varchar(20) NOT NULL"),
    ("ShipmentNumber", "varchar(20) PRIMARY KEY"),
    ("ShipName", "varchar(60)"),
    ("ShipAddress1", "varchar(60)"),
    ("ShipCity", "varchar(40)"),
    ("ShipCountry", "varchar(40)"),
    ("ShipVia", "varchar(10)"),
    ("IsPartial", "boolean"),
    ("Shipped", "boolean"),
    ("ScheduledShipDate", "timestamp"),
    ("ScheduledShipQuantity", "integer"),
    ("CreatedBy", "varchar(20)"),
    ("RowVersion", "bigint NOT NULL DEFAULT nextval('dbo.rowversion')"),
    ("RowStamp", 'bytea GENERATED ALWAYS AS (int8send("RowVersion")) STORED'),
)


# Its columns as ERP users write them (RowVersion and RowStamp are the database's).
SHIPMENT_COLUMNS = tuple(name for name, _ in SHIPMENT_TABLE if not name.startswith("Row"))


def column_list(table: tuple[tuple[str, str], ...]) -> str:
    return ",\n    ".join(f'"{name}" {definition}' for name, definition in table)


SCHEMA = f"""
CREATE SCHEMA dbo;
CREATE SEQUENCE dbo.rowversion;
CREATE FUNCTION dbo.bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW."RowVersion" := nextval('dbo.rowversion');
    RETURN NEW;
END $$;
CREATE TABLE dbo."Shipment" (
    {column_list(SHIPMENT_TABLE)}
);
CREATE TABLE dbo."Package" (
    "PackageID"       varchar(20) PRIMARY KEY,
    "ShipmentNumber"  varchar(20),
    "JobNumber"       varchar(20) NOT NULL,
    "TotalQtyShipped" integer,
    "Description"     varchar(100),
    "RowVersion"      bigint NOT NULL DEFAULT nextval('dbo.rowversion'),
    "RowStamp"        bytea GENERATED ALWAYS AS (int8send("RowVersion")) STORED
);
CREATE TRIGGER bump BEFORE UPDATE ON dbo."Shipment" FOR EACH ROW EXECUTE FUNCTION dbo.bump();
CREATE TRIGGER bump BEFORE UPDATE ON dbo."Package" FOR EACH ROW EXECUTE FUNCTION dbo.bump();
GRANT USAGE ON SCHEMA dbo TO "{READER}";
GRANT SELECT ON ALL TABLES IN SCHEMA dbo TO "{READER}";
ALTER DEFAULT PRIVILEGES IN SCHEMA dbo GRANT SELECT ON TABLES TO "{READER}";
"""


def ensure_reader(admin_dsn: str) -> None:
    """The read-only login (roles belong to the server, so it is made once per test process)."""
    execute(
        admin_dsn,
        f"""
        DO $$ BEGIN
            CREATE ROLE "{READER}" LOGIN PASSWORD '{READER_PASSWORD}';
        EXCEPTION WHEN duplicate_object THEN NULL;
        END $$
        """,
    )


def require_odbc() -> None:
    """pyodbc needs unixODBC's libodbc, and these tests read through psqlODBC: say so plainly."""
    hint = "install the Debian packages unixodbc and odbc-postgresql (.ci/run does)"
    try:
        import pyodbc
    except ImportError as exc:
        pytest.fail(f"the ERP pull tests need unixODBC ({exc}): {hint}", pytrace=False)
    if DRIVER not in pyodbc.drivers():
        pytest.fail(f"the ODBC driver {DRIVER!r} is not installed: {hint}", pytrace=False)


def connection_string(dsn: str, user: str = READER, password: str = READER_PASSWORD, **extra: str) -> str:
    """The ODBC connection string of `dsn`'s server and database for psqlODBC."""
    url = urlparse(dsn)
    query = parse_qs(url.query)
    host = query.get("host", [url.hostname or "localhost"])[0]
    port = query.get("port", [str(url.port or 5432)])[0]
    database = unquote(url.path.lstrip("/"))
    pairs = {
        "Driver": "{" + DRIVER + "}",
        "Server": host,
        "Port": port,
        "Database": database,
        "Uid": user,
        "Pwd": password,
        **extra,
    }
    return ";".join(f"{k}={v}" for k, v in pairs.items()) + ";"


class Erp:
    """The ERP database: created with its tables, changed by the tests as ERP users would."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        execute(dsn, SCHEMA)

    def odbc(self, **extra: str) -> str:
        return connection_string(self.dsn, **extra)

    def add_shipment(self, number: str, job: str = "J100", **values: Any) -> None:
        row: dict[str, Any] = {
            "JobNumber": job,
            "ShipmentNumber": number,
            "ShipName": "Print Customer Ltd",
            "ShipAddress1": "1 Test Street",
            "ShipCity": "Testville",
            "ShipCountry": "GB",
            "ShipVia": "10005",
            "IsPartial": True,
            "Shipped": False,
            "ScheduledShipQuantity": 1,
            "CreatedBy": "erp-user",
        }
        row.update(values)
        self._insert("Shipment", row)

    def add_package(self, package_id: str, shipment: str, job: str = "J100", **values: Any) -> None:
        row: dict[str, Any] = {
            "PackageID": package_id,
            "ShipmentNumber": shipment,
            "JobNumber": job,
            "TotalQtyShipped": 1,
            "Description": "Box",
        }
        row.update(values)
        self._insert("Package", row)

    def _insert(self, table: str, row: dict[str, Any]) -> None:
        columns = ", ".join(f'"{c}"' for c in row)
        marks = ", ".join(f"${i}" for i in range(1, len(row) + 1))
        execute(self.dsn, f'INSERT INTO dbo."{table}" ({columns}) VALUES ({marks})', *row.values())

    def update(self, table: str, key: str, key_value: str, **values: Any) -> None:
        sets = ", ".join(f'"{c}" = ${i}' for i, c in enumerate(values, start=2))
        execute(self.dsn, f'UPDATE dbo."{table}" SET {sets} WHERE "{key}" = $1', key_value, *values.values())

    def row_version(self, table: str, key: str, key_value: str) -> int:
        version: int = fetchval(
            self.dsn, f'SELECT "RowVersion" FROM dbo."{table}" WHERE "{key}" = $1', key_value
        )
        return version
