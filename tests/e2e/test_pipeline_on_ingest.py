"""PIPELINE_ON_INGEST=true: the watcher builds the warehouse after each loaded file."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.helpers import Watchers, wait_until
from tests.integration.helpers import METER_HEADER, meter_rows
from tests.pg import fetchval


def test_each_loaded_file_is_followed_by_a_pipeline_run(dsn: str, workdir: Path, watchers: Watchers) -> None:
    watcher = watchers.start(dsn, workdir, PIPELINE_ON_INGEST="true")
    imports = workdir / "imports"

    (imports / "meter_first.csv").write_text(METER_HEADER + meter_rows(7))
    wait_until(
        lambda: fetchval(dsn, "SELECT count(*) FROM warehouse.fact_energy_interval") == 2,
        30,
        "the half-hours of the first file",
    )
    (imports / "meter_second.csv").write_text(METER_HEADER + meter_rows(4, meter="M2"))
    wait_until(
        lambda: fetchval(dsn, "SELECT count(*) FROM warehouse.pipeline_files WHERE step = 'energy'") == 2,
        30,
        "the second file applied",
    )

    assert watcher.stop() == 0
    # M1: readings 00:00–01:00, two full half-hours; M2: 00:00–00:30, one full half-hour.
    assert (
        fetchval(
            dsn,
            "SELECT string_agg(meter_id || ' ' || quality, ', ' ORDER BY meter_id, interval_start) "
            "FROM warehouse.fact_energy_interval",
        )
        == "M1 ACTUAL, M1 ACTUAL, M2 ACTUAL"
    )
    assert "pipeline energy: 1 new files" in watcher.output
