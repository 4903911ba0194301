"""The watcher survives what production does to it: kill -9 in the middle of a load, and a
database that goes away and comes back."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.helpers import (
    BIG_POWER_SUM,
    BIG_ROWS,
    BIG_SIZE,
    StoppablePostgres,
    Watchers,
    drop_atomically,
    ledger,
    meter_csv,
    meter_summary,
    processed_files,
    wait_until,
    waiting_files,
)
from tests.pg import fetch, fetchval

pytestmark = pytest.mark.slow  # real uploads, kills and outages: seconds each

LOADING_BIG = r"loading meter_readings_big\.csv \(#\d+\) as meter_readings"


def all_moved(dsn: str, imports: Path, count: int) -> bool:
    moved = fetchval(dsn, "SELECT count(*) FROM ingest.files WHERE moved_to IS NOT NULL")
    return moved >= count and not waiting_files(imports)


# -- kill -9 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("delay", [0.0, 0.15, 0.35, 0.6, 0.9, 1.3], ids=lambda d: f"kill-after-{d}s")
def test_kill_9_during_a_large_load_then_restart_loads_the_file_exactly_once(
    dsn: str, workdir: Path, watchers: Watchers, drop_big: Callable[[], Path], delay: float
) -> None:
    imports = workdir / "imports"
    drop_big()
    first = watchers.start(dsn, workdir)  # finds the file in its start-up scan
    first.wait_for(LOADING_BIG, timeout=30)
    time.sleep(delay)
    first.kill()

    # Right after the kill the database holds all of the file or none of it.
    files = fetch(dsn, "SELECT status, rows_loaded FROM ingest.files")
    rows = fetchval(dsn, "SELECT count(*) FROM staging.meter_readings")
    assert ([tuple(f) for f in files], rows) in [([], 0), ([("loaded", BIG_ROWS)], BIG_ROWS)]

    second = watchers.start(dsn, workdir)
    wait_until(lambda: all_moved(dsn, imports, 1), 60, "the big file loaded and moved after the restart")
    assert second.stop() == 0

    assert ledger(dsn) == [("meter_readings_big.csv", "loaded", BIG_ROWS, 0)]
    file_id, moved_to = fetch(dsn, "SELECT id, moved_to FROM ingest.files")[0]
    assert meter_summary(dsn) == (BIG_ROWS, BIG_ROWS, 1, BIG_ROWS, 1, BIG_POWER_SUM)
    assert fetchval(dsn, "SELECT DISTINCT _file_id FROM staging.meter_readings") == file_id
    assert fetchval(dsn, "SELECT count(*) FROM ingest.rejected_rows") == 0
    assert [str(p) for p in processed_files(imports)] == [moved_to]
    assert Path(moved_to).stat().st_size == BIG_SIZE
    assert waiting_files(imports) == []
    assert not (imports / "failed").exists()
    assert "Traceback" not in second.output


# -- the database goes away ---------------------------------------------------------------------


def test_files_dropped_while_the_database_is_down_wait_and_load_once_it_is_back(
    stoppable_pg: StoppablePostgres, outage_dsn: str, workdir: Path, watchers: Watchers
) -> None:
    dsn, imports = outage_dsn, workdir / "imports"
    watcher = watchers.start(dsn, workdir)
    drop_atomically(imports, "meter_readings_before.csv", meter_csv(10, meters=1))
    wait_until(lambda: all_moved(dsn, imports, 1), 30, "the first file loaded")  # the pool is warm

    stoppable_pg.stop()
    drops = {
        "meter_readings_during_1.csv": meter_csv(20, meters=2, first_meter=10),
        "meter_readings_during_2.csv": meter_csv(30, meters=3, first_meter=20),
    }
    for name, content in drops.items():
        (imports / name).write_bytes(content)
    mark = len(watcher.lines)
    for name in drops:  # each is tried, fails for want of the database, and is tried again
        watcher.wait_for(rf"{name} will be tried again in \d+ s", timeout=30, start=mark)
    watcher.wait_for(r"meter_readings_during_1\.csv will be tried again in [2-9] s", timeout=30, start=mark)

    assert watcher.alive()
    assert waiting_files(imports) == sorted(drops)
    assert not (imports / "failed").exists()

    stoppable_pg.start()
    wait_until(
        lambda: all_moved(dsn, imports, 3), 60, "the waiting files loaded after the database came back"
    )
    assert watcher.stop() == 0

    files = ledger(dsn)
    assert files[0] == ("meter_readings_before.csv", "loaded", 10, 0)
    assert sorted(files[1:]) == [
        ("meter_readings_during_1.csv", "loaded", 20, 0),
        ("meter_readings_during_2.csv", "loaded", 30, 0),
    ]
    assert meter_summary(dsn)[:5] == (60, 60, 1, 30, 3)
    assert sorted(p.name for p in processed_files(imports)) == sorted(["meter_readings_before.csv", *drops])
    assert not (imports / "failed").exists()
    assert fetchval(dsn, "SELECT count(*) FROM ingest.error_log") == 0
    assert "unexpected error" not in watcher.output and "Traceback" not in watcher.output
    assert watcher.output.rstrip().endswith("stopped watching: 3 loaded, 0 duplicates, 0 failed")


def test_the_database_going_away_in_the_middle_of_a_load_rolls_it_back_and_it_loads_later(
    stoppable_pg: StoppablePostgres,
    outage_dsn: str,
    workdir: Path,
    watchers: Watchers,
    drop_big: Callable[[], Path],
) -> None:
    dsn, imports = outage_dsn, workdir / "imports"
    watcher = watchers.start(dsn, workdir)
    drop_big()
    watcher.wait_for(LOADING_BIG, timeout=30)
    time.sleep(0.3)

    stoppable_pg.stop()
    # The lost connection must be noticed (the load rolled back, the file put back to wait).
    watcher.wait_for(r"meter_readings_big\.csv will be tried again in \d+ s", timeout=15)
    assert watcher.alive()
    assert waiting_files(imports) == ["meter_readings_big.csv"]
    assert not (imports / "failed").exists()

    stoppable_pg.start()
    wait_until(lambda: all_moved(dsn, imports, 1), 60, "the big file loaded after the database came back")
    assert watcher.stop() == 0

    assert ledger(dsn) == [("meter_readings_big.csv", "loaded", BIG_ROWS, 0)]
    assert meter_summary(dsn) == (BIG_ROWS, BIG_ROWS, 1, BIG_ROWS, 1, BIG_POWER_SUM)
    assert not (imports / "failed").exists()
    assert "unexpected error" not in watcher.output and "Traceback" not in watcher.output
    assert watcher.output.rstrip().endswith("stopped watching: 1 loaded, 0 duplicates, 0 failed")
