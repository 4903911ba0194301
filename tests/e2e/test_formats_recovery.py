"""kill -9 in the middle of loading a workbook or a Parquet file, then a restart: the file loads
exactly once, as for CSV (test_watcher_recovery.py)."""

from __future__ import annotations

import io
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.e2e.helpers import Watchers, drop_atomically, ledger, processed_files, wait_until, waiting_files
from tests.integration.workbooks import xlsx
from tests.pg import fetch, fetchval

pytestmark = pytest.mark.slow  # large files and kills: seconds each

XLSX_ROWS = 60_000
PARQUET_ROWS = 1_000_000


def big_workbook() -> bytes:
    header = ["JobNumber", "ShipmentNumber", "ShipZip", "IsPartial", "ScheduledShipDate", "ShipName"]
    rows = [
        [f"J{i:06d}", f"S{i:07d}", f"{i % 99999:05d}", i % 2 == 0, date(2024, 6, 1 + i % 28), f"Customer {i}"]
        for i in range(XLSX_ROWS)
    ]
    return xlsx({"Shipments": [header, *rows]})


def big_parquet() -> bytes:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    table = pa.table(
        {
            "meter_id": [f"M{i % 200:03d}" for i in range(PARQUET_ROWS)],
            "reading_at": pa.array(
                [start + timedelta(minutes=10 * (i // 200)) for i in range(PARQUET_ROWS)],
                pa.timestamp("s", "UTC"),
            ),
            "power_w": pa.array(range(PARQUET_ROWS), pa.int64()),
        }
    )
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


@pytest.mark.parametrize(
    ("name", "make", "table", "rows"),
    [
        ("shipments_big.xlsx", big_workbook, "shipments", XLSX_ROWS),
        ("meter_readings_big.parquet", big_parquet, "meter_readings", PARQUET_ROWS),
    ],
    ids=["xlsx", "parquet"],
)
@pytest.mark.parametrize("delay", [0.0, 0.5], ids=lambda d: f"kill-after-{d}s")
def test_kill_9_during_a_load_then_restart_loads_the_file_exactly_once(
    dsn: str, workdir: Path, watchers: Watchers, name: str, make: object, table: str, rows: int, delay: float
) -> None:
    imports = workdir / "imports"
    assert callable(make)
    content = make()
    drop_atomically(imports, name, content)
    first = watchers.start(dsn, workdir)
    first.wait_for(rf"loading {name} \(#\d+\) as {table}", timeout=60)
    time.sleep(delay)
    first.kill()

    # Right after the kill the database holds all of the file or none of it.
    files = [tuple(f) for f in fetch(dsn, "SELECT status, rows_loaded FROM ingest.files")]
    loaded = fetchval(dsn, f"SELECT count(*) FROM staging.{table}")
    assert (files, loaded) in [([], 0), ([("loaded", rows)], rows)]

    second = watchers.start(dsn, workdir)
    wait_until(
        lambda: (
            fetchval(dsn, "SELECT count(*) FROM ingest.files WHERE moved_to IS NOT NULL") == 1
            and not waiting_files(imports)
        ),
        120,
        "the file loaded and moved after the restart",
    )
    assert second.stop() == 0

    assert ledger(dsn) == [(name, "loaded", rows, 0)]
    assert fetchval(dsn, f"SELECT count(*) FROM staging.{table}") == rows
    assert fetchval(dsn, f"SELECT count(DISTINCT _record_no) FROM staging.{table}") == rows
    assert [p.read_bytes() == content for p in processed_files(imports)] == [True]
    assert "Traceback" not in second.output
