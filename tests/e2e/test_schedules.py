"""Schedules in watch mode: two watchers with the same schedules run each tick once, and
--status shows each stage's last run and when it is due next."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.e2e.helpers import Watchers, wait_until
from tests.pg import fetch, fetchval


@pytest.mark.slow
def test_two_watchers_with_the_same_schedules_run_each_tick_once(
    dsn: str, workdir: Path, watchers: Watchers
) -> None:
    first = watchers.start(dsn, workdir, PIPELINE_SCHEDULE="1", ANALYSIS_SCHEDULE="3", LOG_LEVEL="DEBUG")
    second = watchers.start(dsn, workdir, PIPELINE_SCHEDULE="1", ANALYSIS_SCHEDULE="3", LOG_LEVEL="DEBUG")
    wait_until(
        lambda: (
            fetchval(dsn, "SELECT count(*) FROM ops.stage_runs WHERE stage = 'analysis' AND outcome = 'ok'")
            >= 2
        ),
        60,
        "two scheduled analysis runs",
    )
    time.sleep(2)
    assert first.stop() == 0 and second.stop() == 0

    rows = fetch(dsn, "SELECT stage, trigger, tick, runner, outcome FROM ops.stage_runs ORDER BY stage, tick")
    assert {(r["trigger"], r["outcome"] in ("ok", "skipped")) for r in rows} == {("schedule", True)}
    for stage, seconds in (("pipeline", 1), ("analysis", 3)):
        ticks = [r["tick"] for r in rows if r["stage"] == stage]
        assert len(ticks) == len(set(ticks)) >= 2
        assert all(t.timestamp() % seconds == 0 for t in ticks)  # on the shared grid, not each host's start
        # Every run either watcher logged has its own row: no tick ran twice.
        logged = sum(w.output.count(f"{stage} run (schedule) done") for w in (first, second))
        assert logged == sum(1 for r in rows if r["stage"] == stage and r["outcome"] == "ok")
    claimed_elsewhere = first.output.count("claimed by another process") + second.output.count(
        "claimed by another process"
    )
    assert claimed_elsewhere >= 1  # both watchers reached for ticks; the database said who had each

    status = run_cli(dsn, workdir, "--status", PIPELINE_SCHEDULE="1", ANALYSIS_SCHEDULE="0 * * * *")
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    section = lines[lines.index("Stages (ops.stage_runs):") + 1 :]
    assert re.match(r"stage\s+last run \(UTC\)\s+trigger\s+outcome\s+seconds\s+next due \(UTC\)$", section[0])
    assert re.match(
        r"pipeline\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+schedule\s+ok\s+\d+\.\d\s+.*\(every 1 s\)$", section[1]
    )
    assert re.match(r"dispatch\s+never\s+-\s+-\s+-\s+-$", section[2])
    assert re.match(
        r"analysis\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+schedule\s+ok\s+\d+\.\d\s+\d{4}-\d\d-\d\d \d\d:00:00 "
        r'\(cron "0 \* \* \* \*" \(UTC\)\)$',
        section[3],
    )
