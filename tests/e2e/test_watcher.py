"""The watcher as users run it: `python main.py --watch`, real files, real PostgreSQL.

Drops while it runs, slow uploads (a file kept open and written in chunks, as an SFTP server
does), `.part` uploads renamed when done, and stopping with SIGTERM / SIGINT.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from tests.e2e.helpers import (
    METER_HEADER,
    Watchers,
    big_file_loaded_once_or_not_at_all,
    ledger,
    meter_csv,
    processed_files,
    wait_until,
    waiting_files,
)
from tests.pg import fetch, fetchval


def wait_loaded(dsn: str, count: int = 1, timeout: float = 30) -> None:
    wait_until(
        lambda: fetchval(dsn, "SELECT count(*) FROM ingest.files WHERE moved_to IS NOT NULL") >= count,
        timeout,
        f"{count} file(s) loaded and moved",
    )


def test_a_meter_file_dropped_while_watching_becomes_typed_rows_once(
    dsn: str, workdir: Path, watchers: Watchers
) -> None:
    imports = workdir / "imports"
    watcher = watchers.start(dsn, workdir)
    content = (
        METER_HEADER
        + "M1,2024-01-15T00:00:00Z,100.000,0\n"
        + "M1,2024-01-15T00:30:00+01:00,100.5,\n"
        + "M2,2024-01-15 00:10:00Z,,250.5\n"
    )
    (imports / "meter_readings_20240115.csv").write_text(content)

    wait_loaded(dsn)

    rows = fetch(
        dsn,
        "SELECT _file_id, _record_no, meter_id, reading_at, register_kwh, power_w "
        "FROM staging.meter_readings ORDER BY _record_no",
    )
    file = fetch(dsn, "SELECT * FROM ingest.files")[0]
    assert [tuple(r) for r in rows] == [
        (file["id"], 1, "M1", datetime(2024, 1, 15, 0, 0, tzinfo=UTC), Decimal("100.000"), Decimal("0")),
        (file["id"], 2, "M1", datetime(2024, 1, 14, 23, 30, tzinfo=UTC), Decimal("100.5"), None),
        (file["id"], 3, "M2", datetime(2024, 1, 15, 0, 10, tzinfo=UTC), None, Decimal("250.5")),
    ]
    types = fetch(
        dsn,
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'staging' AND table_name = 'meter_readings' AND column_name NOT LIKE '\\_%' "
        "ORDER BY ordinal_position",
    )
    assert [tuple(t) for t in types] == [
        ("meter_id", "text"),
        ("reading_at", "timestamp with time zone"),
        ("register_kwh", "numeric"),
        ("power_w", "numeric"),
    ]
    assert (file["name"], file["dataset"], file["status"], file["rows_loaded"], file["rows_rejected"]) == (
        "meter_readings_20240115.csv",
        "meter_readings",
        "loaded",
        3,
        0,
    )
    day = file["loaded_at"].astimezone(UTC).strftime("%Y-%m-%d")
    moved = imports / "processed" / day / "meter_readings_20240115.csv"
    assert Path(file["moved_to"]) == moved
    assert moved.read_text() == content
    assert waiting_files(imports) == []
    assert not (imports / "failed").exists()

    assert watcher.stop(signal.SIGTERM) == 0
    assert re.search(
        r"loaded meter_readings_20240115\.csv \(#\d+\) into staging\.meter_readings: 3 rows, 0 rejected",
        watcher.output,
    )
    assert watcher.output.rstrip().endswith("stopped watching: 1 loaded, 0 duplicates, 0 failed")


# -- slow uploads -------------------------------------------------------------------------------

SLOW_ROWS = 3000


def chunked(content: bytes, parts: int) -> list[bytes]:
    """`content` cut into `parts` pieces at arbitrary byte offsets (mid-line, as a network does)."""
    size = -(-len(content) // parts)
    pieces = [content[i : i + size] for i in range(0, len(content), size)]
    assert len(pieces) == parts
    return pieces


def write_slowly(path: Path, content: bytes, parts: int, gap: float, dsn: str) -> None:
    """Create `path`, then write `content` into the open file in `parts` chunks, pausing `gap` s
    before each chunk and before the close, flushing and syncing every chunk. At each pause the
    watcher must not have taken the file."""
    with open(path, "wb") as handle:
        for piece in [*chunked(content, parts), b""]:
            time.sleep(gap)
            assert ledger(dsn) == [], f"{path.name} was taken while it was still being written"
            assert path.exists()
            handle.write(piece)
            handle.flush()
            os.fsync(handle.fileno())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("polling", "settle", "gap"),
    [
        # inotify: the writer's close-write says when the file is complete, however long it
        # pauses between chunks (here longer than WATCH_SETTLE_SECONDS).
        pytest.param(False, "0.5", 0.8, id="inotify-pauses-longer-than-settle"),
        # polling sees no close events: only the settle time tells, so pauses are shorter.
        pytest.param(True, "2", 0.7, id="polling"),
    ],
)
def test_a_file_written_slowly_is_loaded_once_and_completely(
    dsn: str, workdir: Path, watchers: Watchers, polling: bool, settle: str, gap: float
) -> None:
    imports = workdir / "imports"
    watcher = watchers.start(dsn, workdir, WATCH_POLLING=str(polling).lower(), WATCH_SETTLE_SECONDS=settle)
    assert f"({'polling' if polling else 'inotify'}, 2 workers)" in watcher.output
    content = meter_csv(SLOW_ROWS, meters=3)

    write_slowly(imports / "meter_readings_sftp.csv", content, parts=7, gap=gap, dsn=dsn)
    wait_loaded(dsn)
    time.sleep(1.0)  # time enough for a second, wrong take of the same file to show

    assert ledger(dsn) == [("meter_readings_sftp.csv", "loaded", SLOW_ROWS, 0)]
    stats = fetch(
        dsn,
        "SELECT count(*), count(DISTINCT _record_no), min(_record_no), max(_record_no), "
        "sum(register_kwh), count(DISTINCT meter_id) FROM staging.meter_readings",
    )[0]
    # 3 meters with 1000 readings each, the register rising 0.25 kWh a reading from 0
    assert tuple(stats) == (SLOW_ROWS, SLOW_ROWS, 1, SLOW_ROWS, 3 * Decimal("0.25") * sum(range(1000)), 3)
    assert [p.read_bytes() == content for p in processed_files(imports)] == [True]
    assert waiting_files(imports) == []
    assert watcher.stop() == 0
    assert watcher.output.rstrip().endswith("stopped watching: 1 loaded, 0 duplicates, 0 failed")


@pytest.mark.slow
@pytest.mark.parametrize(
    "polling",
    [
        # inotify: no close-write for longer than WATCH_RESCAN_SECONDS, the fallback that once
        # took such a file in part
        pytest.param(False, id="inotify-pauses-longer-than-rescan"),
        # polling: the settle time passes at every pause
        pytest.param(True, id="polling-pauses-longer-than-settle"),
    ],
)
def test_a_stalled_upload_is_never_loaded_in_part(
    dsn: str, workdir: Path, watchers: Watchers, polling: bool
) -> None:
    """The writer still holds the file open, so it is not taken, whatever the clocks say."""
    imports = workdir / "imports"
    watcher = watchers.start(
        dsn,
        workdir,
        WATCH_POLLING=str(polling).lower(),
        WATCH_SETTLE_SECONDS="0.3",
        WATCH_RESCAN_SECONDS="1",
    )
    content = meter_csv(SLOW_ROWS, meters=3)

    write_slowly(imports / "meter_readings_stalled.csv", content, parts=3, gap=2.5, dsn=dsn)
    wait_loaded(dsn)
    time.sleep(1.0)

    assert ledger(dsn) == [("meter_readings_stalled.csv", "loaded", SLOW_ROWS, 0)]
    assert fetchval(dsn, "SELECT count(DISTINCT _record_no) FROM staging.meter_readings") == SLOW_ROWS
    assert [p.read_bytes() == content for p in processed_files(imports)] == [True]
    assert watcher.stop() == 0


def test_a_file_renamed_in_is_taken_without_waiting_for_the_settle_time(
    dsn: str, workdir: Path, watchers: Watchers
) -> None:
    """A rename into the folder publishes a finished file (DESIGN §3.2): no settle time."""
    imports = workdir / "imports"
    watcher = watchers.start(dsn, workdir, WATCH_SETTLE_SECONDS="30")
    staged = workdir / "meter_readings_renamed.csv"
    staged.write_bytes(meter_csv(100, meters=2))
    os.rename(staged, imports / staged.name)
    wait_loaded(dsn, timeout=10)  # far less than the 30 s settle time
    assert ledger(dsn) == [("meter_readings_renamed.csv", "loaded", 100, 0)]
    assert watcher.stop() == 0


@pytest.mark.slow
def test_a_file_renamed_in_while_its_writer_still_writes_is_not_loaded_in_part(
    dsn: str, workdir: Path, watchers: Watchers
) -> None:
    """Renamed in too early, through a handle that stays open: the read lease refuses it until the
    writer closes, then it loads whole."""
    imports = workdir / "imports"
    watcher = watchers.start(dsn, workdir, WATCH_SETTLE_SECONDS="0.3", WATCH_RESCAN_SECONDS="1")
    content = meter_csv(SLOW_ROWS, meters=3)
    staged = workdir / "meter_readings_early.csv"
    with open(staged, "wb") as writer:
        writer.write(content[:5000])
        writer.flush()
        os.rename(staged, imports / staged.name)
        watcher.wait_for(r"meter_readings_early\.csv will be tried again in \d+ s: another process still")
        time.sleep(2.5)  # past the settle time and two rescans: still not taken
        assert ledger(dsn) == []
        writer.write(content[5000:])
    wait_loaded(dsn)
    time.sleep(0.5)
    assert ledger(dsn) == [("meter_readings_early.csv", "loaded", SLOW_ROWS, 0)]
    assert [p.read_bytes() == content for p in processed_files(imports)] == [True]
    assert watcher.stop() == 0


@pytest.mark.slow
@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "polling"])
def test_a_part_file_is_loaded_once_after_the_rename_and_never_before(
    dsn: str, workdir: Path, watchers: Watchers, polling: bool
) -> None:
    imports = workdir / "imports"
    watcher = watchers.start(dsn, workdir, WATCH_POLLING=str(polling).lower())
    content = meter_csv(SLOW_ROWS, meters=3)
    part = imports / "meter_readings_upload.csv.part"

    write_slowly(part, content, parts=4, gap=0.7, dsn=dsn)  # pauses longer than the 0.5 s settle time
    time.sleep(1.5)  # closed and settled: still a temporary name, so still not taken
    assert ledger(dsn) == [] and part.exists()

    os.rename(part, imports / "meter_readings_upload.csv")
    wait_loaded(dsn)
    time.sleep(1.0)

    assert ledger(dsn) == [("meter_readings_upload.csv", "loaded", SLOW_ROWS, 0)]
    assert fetchval(dsn, "SELECT count(DISTINCT _record_no) FROM staging.meter_readings") == SLOW_ROWS
    assert [(p.name, p.read_bytes() == content) for p in processed_files(imports)] == [
        ("meter_readings_upload.csv", True)
    ]
    assert waiting_files(imports) == []
    assert watcher.stop() == 0


# -- stopping ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_an_idle_watcher_cleanly(
    dsn: str, workdir: Path, watchers: Watchers, sig: int
) -> None:
    watcher = watchers.start(dsn, workdir)

    assert watcher.stop(sig, timeout=15) == 0
    assert watcher.output.rstrip().endswith("stopped watching: 0 loaded, 0 duplicates, 0 failed")
    assert "Traceback" not in watcher.output


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "delay"),
    [(signal.SIGTERM, 0.1), (signal.SIGINT, 0.1), (signal.SIGTERM, 0.5)],
    ids=["SIGTERM-0.1s", "SIGINT-0.1s", "SIGTERM-0.5s"],
)
def test_a_signal_during_a_load_finishes_the_file_in_hand_or_rolls_it_back(
    dsn: str, workdir: Path, watchers: Watchers, drop_big: Callable[[], Path], sig: int, delay: float
) -> None:
    imports = workdir / "imports"
    watcher = watchers.start(dsn, workdir)
    drop_big()
    watcher.wait_for(r"loading meter_readings_big\.csv \(#\d+\) as meter_readings", timeout=30)
    time.sleep(delay)

    assert watcher.stop(sig, timeout=30) == 0

    assert "finishing 1 file(s) in hand before stopping" in watcher.output
    loaded = big_file_loaded_once_or_not_at_all(dsn, imports)
    assert watcher.output.rstrip().endswith(f"stopped watching: {int(loaded)} loaded, 0 duplicates, 0 failed")
    assert "Traceback" not in watcher.output
