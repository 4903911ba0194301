"""Several watcher processes on one folder: every file is loaded by exactly one of them."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.e2e.helpers import (
    Watchers,
    drop_atomically,
    meter_csv,
    meter_summary,
    processed_files,
    wait_until,
    waiting_files,
)
from tests.pg import fetch, fetchval

pytestmark = pytest.mark.slow  # real uploads, kills and outages: seconds each

FILES = 30
STOPPED = re.compile(r"stopped watching: (\d+) loaded, (\d+) duplicates, (\d+) failed")


def test_three_watchers_on_one_folder_load_each_of_30_files_exactly_once(
    dsn: str, workdir: Path, watchers: Watchers
) -> None:
    imports = workdir / "imports"
    started = [watchers.start(dsn, workdir, ready=False) for _ in range(3)]
    for watcher in started:
        watcher.wait_ready()

    # Different sizes, meters and days; half written in place, half renamed in when complete.
    expected: dict[str, int] = {}
    for k in range(FILES):
        name, rows = f"meter_readings_{k:02d}.csv", 40 + 97 * k
        content = meter_csv(
            rows,
            meters=1 + k % 4,
            first_meter=10 * k,
            start=datetime(2024, 3, 1, tzinfo=UTC) + timedelta(days=k),
        )
        if k % 2:
            drop_atomically(imports, name, content)
        else:
            (imports / name).write_bytes(content)
        expected[name] = rows

    def all_done() -> bool:
        moved = fetchval(dsn, "SELECT count(*) FROM ingest.files WHERE moved_to IS NOT NULL")
        return moved >= FILES and not waiting_files(imports)

    wait_until(all_done, 60, f"{FILES} files loaded and moved")
    codes = [watcher.stop() for watcher in started]

    assert codes == [0, 0, 0]
    files = fetch(dsn, "SELECT id, name, status, rows_loaded, moved_to FROM ingest.files ORDER BY name")
    assert [(f["name"], f["status"], f["rows_loaded"]) for f in files] == [
        (name, "loaded", rows) for name, rows in sorted(expected.items())
    ]
    total = sum(expected.values())
    assert meter_summary(dsn)[:2] == (total, total)
    per_file = fetch(
        dsn,
        "SELECT _file_id, count(*), min(_record_no), max(_record_no), min(meter_id) "
        "FROM staging.meter_readings GROUP BY _file_id",
    )
    assert sorted(tuple(r) for r in per_file) == sorted(
        (f["id"], f["rows_loaded"], 1, f["rows_loaded"], f"M{10 * int(f['name'][15:17]):04d}") for f in files
    )
    assert sorted(str(p) for p in processed_files(imports)) == sorted(f["moved_to"] for f in files)
    assert sorted(p.name for p in processed_files(imports)) == sorted(expected)
    assert waiting_files(imports) == []
    assert not (imports / "failed").exists()

    # Every watcher says what it did; together they loaded each file once and nothing else.
    results = [tuple(map(int, STOPPED.findall(w.output)[-1])) for w in started]
    assert sum(loaded for loaded, _, _ in results) == FILES
    assert [(duplicates, failed) for _, duplicates, failed in results] == [(0, 0)] * 3
    loaders = Counter(
        m.group(1) for w in started for m in re.finditer(r"loaded (meter_readings_\d+\.csv) \(#", w.output)
    )
    assert loaders == Counter(list(expected))
    assert all("Traceback" not in w.output for w in started)


def test_watchers_rescanning_a_busy_folder_survive_files_vanishing_under_them(
    dsn: str, workdir: Path, watchers: Watchers
) -> None:
    """Rescanning every 10 ms, three watchers list the folder while the others move files out
    of it: a file listed a moment ago is gone when it is looked at. None may stop over that."""
    imports = workdir / "imports"
    started = [watchers.start(dsn, workdir, ready=False, WATCH_RESCAN_SECONDS="0.01") for _ in range(3)]
    for watcher in started:
        watcher.wait_ready()
    count = 200
    for k in range(count):
        drop_atomically(imports, f"meter_readings_{k:03d}.csv", meter_csv(5 + k, meters=1, first_meter=k))

    wait_until(
        lambda: (
            fetchval(dsn, "SELECT count(*) FROM ingest.files WHERE moved_to IS NOT NULL") >= count
            and not waiting_files(imports)
        ),
        60,
        f"{count} files loaded and moved",
    )

    dead = [w.output[-3000:] for w in started if not w.alive()]
    assert dead == [], "\n\n".join(dead)
    assert [w.stop() for w in started] == [0, 0, 0]
    summary = fetch(dsn, "SELECT count(*), count(DISTINCT name), min(status), max(status) FROM ingest.files")
    assert tuple(summary[0]) == (count, count, "loaded", "loaded")
    assert meter_summary(dsn)[:2] == (sum(5 + k for k in range(count)),) * 2
    assert sum(int(STOPPED.findall(w.output)[-1][0]) for w in started) == count
    assert all("Traceback" not in w.output for w in started)
