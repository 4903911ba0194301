"""PROCESSED_RETENTION_DAYS: old day folders of processed/ go at start, recent ones and failed/
stay, and a removed file dropped again is still a duplicate."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.conftest import run_cli
from tests.e2e.helpers import Watchers, drop_atomically, ledger, wait_until
from tests.integration.helpers import METER_HEADER, meter_rows


def test_old_folders_go_recent_stay_and_a_re_drop_is_a_duplicate(
    dsn: str, workdir: Path, watchers: Watchers
) -> None:
    imports = workdir / "imports"
    content = (METER_HEADER + meter_rows(5)).encode()
    drop_atomically(imports, "meter_old.csv", content)
    assert run_cli(dsn, workdir, "--ingest", str(imports)).returncode == 0
    today = datetime.now(UTC).date()
    processed = imports / "processed"
    # the file loaded today, moved as if 40 days ago; one folder 30 days old (kept at 30), one odd name
    old = processed / (today - timedelta(days=40)).isoformat()
    os.rename(processed / today.isoformat(), old)
    kept = processed / (today - timedelta(days=30)).isoformat()
    kept.mkdir()
    (kept / "meter_kept.csv").write_bytes(b"x" * 10)
    (processed / "notes").mkdir()
    (imports / "failed").mkdir()
    (imports / "failed" / "old_failure.csv").write_bytes(b"y")
    os.utime(imports / "failed" / "old_failure.csv", (0, 0))

    watcher = watchers.start(dsn, workdir, PROCESSED_RETENTION_DAYS="30")
    wait_until(lambda: not old.exists(), 30, "the old day folder removed")
    assert sorted(p.name for p in processed.iterdir()) == [kept.name, "notes"]
    assert (imports / "failed" / "old_failure.csv").exists()
    watcher.wait_for(rf"retention: removed {old} \(1 files, {len(content)} bytes; older than 30 days\)")

    drop_atomically(imports, "meter_again.csv", content)
    wait_until(lambda: len(ledger(dsn)) == 2, 30, "the re-drop recorded")
    assert watcher.stop() == 0
    assert ledger(dsn) == [("meter_old.csv", "loaded", 5, 0), ("meter_again.csv", "duplicate", 0, 0)]
