"""The pure parts of `--pull`: schedule, SQL text, identifier checks, value and watermark codecs."""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

import pytest
from pydantic import ValidationError

from app.errors import ConfigError, ErpError
from app.settings import Settings
from models.datasets import DatasetRegistry
from services.pull import _off_loop, tables
from services.pull.erp import build_query, check_query, json_value, quote_name, redact
from services.pull.schedule import PullSchedule
from services.pull.watermark import Watermark


def test_the_wait_doubles_from_one_second_while_nothing_arrives_up_to_the_longest() -> None:
    schedule = PullSchedule(longest=60)
    waits = [schedule.next_wait(rows_arrived=False) for _ in range(9)]
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert schedule.next_wait(rows_arrived=True) == 1
    assert schedule.next_wait(rows_arrived=False) == 2


def test_the_old_systems_five_minute_ceiling_is_one_setting_away() -> None:
    schedule = PullSchedule(longest=300)
    assert [schedule.next_wait(False) for _ in range(11)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]


def test_a_ceiling_under_a_second_is_kept() -> None:
    schedule = PullSchedule(longest=0.5)
    assert [schedule.next_wait(False), schedule.next_wait(True)] == [0.5, 0.5]


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ("dbo.Shipment", '"dbo"."Shipment"'),
        ("Enterprise32.dbo.Shipment", '"Enterprise32"."dbo"."Shipment"'),
        ('[ERP Data].dbo.[Ship "Log"]', '"ERP Data"."dbo"."Ship ""Log"""'),
        ('"Ship Table"', '"Ship Table"'),
    ],
)
def test_erp_names_are_quoted_part_by_part(name: str, quoted: str) -> None:
    assert quote_name(name) == quoted


@pytest.mark.parametrize("table", ["dbo.Shipment; DROP TABLE x", "dbo.Ship ment", "a.b.c.d", "dbo.", "1abc"])
def test_a_table_setting_that_is_no_plain_name_is_refused(table: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(_env_file=None, epms_shipment_table=table)
    assert f"{table!r} is not a table name: use schema.table (e.g. dbo.Shipment)" in str(raised.value)


def test_a_watermark_column_must_be_one_name() -> None:
    assert Settings(_env_file=None, epms_watermark_column="[Row Version]").epms_watermark_column == (
        "[Row Version]"
    )
    with pytest.raises(ValidationError, match="'Row Version' is not a column name"):
        Settings(_env_file=None, epms_watermark_column="Row Version")


def test_a_custom_query_is_one_select_without_its_own_order() -> None:
    assert (
        check_query("  SELECT a FROM t WHERE b = 1;  ", "EPMS_SHIPMENT_QUERY")
        == "SELECT a FROM t WHERE b = 1"
    )
    assert check_query("with x as (select a from t order by a) select * from x", "Q").startswith("with x")
    with pytest.raises(ConfigError) as writes:
        check_query("DELETE FROM dbo.Shipment", "EPMS_SHIPMENT_QUERY")
    assert str(writes.value) == (
        "EPMS_SHIPMENT_QUERY must be a single SELECT statement. loadbay only reads the ERP; give a "
        "SELECT without ';' (its rows, with the watermark column, are what --pull reads)"
    )
    with pytest.raises(ConfigError, match="must be a single SELECT statement"):
        check_query("SELECT 1; DROP TABLE dbo.Shipment", "EPMS_SHIPMENT_QUERY")
    with pytest.raises(ConfigError) as ordered:
        check_query("SELECT * FROM dbo.Package ORDER BY PackageID", "EPMS_PACKAGE_QUERY")
    assert str(ordered.value) == (
        "EPMS_PACKAGE_QUERY ends in ORDER BY. Leave the order out: loadbay wraps the query and orders "
        "by the watermark column itself"
    )


SELECT_TABLE = 'SELECT * FROM "dbo"."Shipment"'
COLUMNS = ["JobNumber", "ShipmentNumber", "Ship Name"]
READ = (
    'SELECT src."JobNumber", src."ShipmentNumber", src."Ship Name", src."{0}" '
    'FROM (SELECT * FROM "dbo"."Shipment") src'
)


@pytest.mark.parametrize(
    ("column", "dbms", "first", "binary", "query"),
    [
        ("RowVersion", "PostgreSQL", True, False, READ + ' ORDER BY src."RowVersion"'),
        (
            "RowVersion",
            "PostgreSQL",
            False,
            True,
            READ + ' WHERE src."RowVersion" > ? ORDER BY src."RowVersion"',
        ),
        # SQL Server: a rowversion read stops below the oldest transaction still open in the ERP
        (
            "RowVersion",
            "Microsoft SQL Server",
            False,
            True,
            READ + ' WHERE src."RowVersion" > ? AND src."RowVersion" < MIN_ACTIVE_ROWVERSION() '
            'ORDER BY src."RowVersion"',
        ),
        ("Modified", "Microsoft SQL Server", True, False, READ + ' ORDER BY src."Modified"'),
    ],
)
def test_the_read_lists_the_columns_and_filters_by_the_watermark_after_the_first_pull(
    column: str, dbms: str, first: bool, binary: bool, query: str
) -> None:
    built = build_query(SELECT_TABLE, [*COLUMNS, column], column, dbms, first=first, binary=binary)
    assert built == query.format(column)


def test_passwords_of_the_connection_string_never_reach_a_message() -> None:
    connection = "Driver={ODBC Driver 18 for SQL Server};Server=erp,1433;UID=loadbay;PWD={p;w}}d};Encrypt=yes"
    assert redact("Login failed: PWD=p;w}d was refused", connection) == "Login failed: PWD=*** was refused"
    assert redact("no secret here", "Driver=x;Password=hunter2") == "no secret here"
    assert redact("hunter2!", "Driver=x; Password = hunter2 ;") == "***!"


def test_odbc_values_become_json_that_keeps_what_the_erp_had() -> None:
    assert json_value(None) is None
    assert json_value(False) is False
    assert json_value(0) == 0
    assert json_value("") == ""
    assert json_value(Decimal("12.3400")) == "12.3400"
    assert json_value(1.5) == 1.5
    assert json_value(float("inf")) == "inf"
    assert json_value(datetime(2026, 11, 27, 8, 30)) == "2026-11-27T08:30:00"
    assert json_value(datetime(2026, 11, 27, 8, 30, tzinfo=timezone(timedelta(hours=1)))) == (
        "2026-11-27T08:30:00+01:00"
    )
    assert json_value(date(2026, 11, 27)) == "2026-11-27"
    assert json_value(time(8, 30)) == "08:30:00"
    assert json_value(bytearray(b"\x00\x01\xff")) == "0x0001FF"
    assert json_value(uuid.UUID(int=1)) == "00000000-0000-0000-0000-000000000001"


@pytest.mark.parametrize(
    ("value", "kind", "text"),
    [
        (2001, "int", "2001"),
        (bytearray(b"\x00\x00\x00\x00\x00\x00\x07\xd1"), "binary", "00000000000007d1"),
        (datetime(2026, 11, 26, 14, 0, 1, 500), "datetime", "2026-11-26T14:00:01.000500"),
        (date(2026, 11, 26), "date", "2026-11-26"),
        (Decimal("10.50"), "decimal", "10.50"),
        ("000123", "text", "000123"),
    ],
)
def test_a_watermark_is_stored_as_text_and_read_back_as_the_same_value(
    value: object, kind: str, text: str
) -> None:
    mark = Watermark.of(value)
    assert (mark.kind, mark.text()) == (kind, text)
    back = Watermark.parse(kind, text)
    assert back == mark
    assert type(back.value) is type(mark.value)


def test_a_yes_no_column_is_no_watermark() -> None:
    with pytest.raises(ValueError, match="a yes/no column cannot be a watermark"):
        Watermark.of(True)
    with pytest.raises(ValueError, match="a time column cannot be a watermark"):
        Watermark.of(time(8, 0))


def test_a_binary_watermark_shows_as_hex() -> None:
    assert str(Watermark.of(b"\x00\x00\x07\xd1")) == "0x000007D1"


def test_a_custom_query_wins_over_the_table() -> None:
    settings = Settings(
        _env_file=None,
        epms_package_table="[ERP].dbo.Package",
        epms_shipment_query="SELECT * FROM dbo.ShipmentView WHERE ShipVia = '10005'",
    )
    shipments, packages = tables(settings, DatasetRegistry.from_toml({}))
    assert (shipments.select, shipments.label, shipments.source) == (
        "SELECT * FROM dbo.ShipmentView WHERE ShipVia = '10005'",
        "EPMS_SHIPMENT_QUERY",
        "EPMS_SHIPMENT_QUERY by RowVersion",
    )
    assert (packages.select, packages.label, packages.source) == (
        'SELECT * FROM "ERP"."dbo"."Package"',
        "[ERP].dbo.Package",
        "[ERP].dbo.Package by RowVersion",
    )
    assert shipments.dataset.name == "shipments"


def test_blocking_erp_work_runs_off_the_loop_and_a_cancelled_wait_leaves_it_harmless() -> None:
    release = threading.Event()
    finished = threading.Event()

    def slow() -> str:
        release.wait(5)
        finished.set()
        return "late"

    def broken() -> None:
        raise ErpError("the ERP refused the read of dbo.Shipment: [42000] denied")

    async def go() -> tuple[str, str]:
        assert await _off_loop(lambda a, b: a + b, "a", "b") == "ab"
        with pytest.raises(ErpError) as raised:
            await _off_loop(broken)
        waiting = asyncio.create_task(_off_loop(slow))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        release.set()
        await asyncio.to_thread(finished.wait, 5)
        await asyncio.sleep(0.05)  # its late result arrives on the loop and is dropped quietly
        return str(raised.value), threading.current_thread().name

    message, thread = asyncio.run(go())
    assert message == "the ERP refused the read of dbo.Shipment: [42000] denied"
    assert thread == "MainThread" and finished.is_set()
