"""`--analysis` and `--demo`: views, CSV exports, charts and a report a browser shows."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib import image

from services.analysis import VIEWS
from tests.conftest import run_cli, start_cli
from tests.integration.energy_helpers import VECTORS
from tests.integration.helpers import drop, meter_rows
from tests.integration.test_pipeline import meter_csv
from tests.pg import fetch

CHARTS = ["energy_daily", "energy_half_hour_profile", "dispatch_outcomes", "ingest_quality"]


@pytest.fixture
def demo(dsn: str, workdir: Path) -> Path:
    result = run_cli(dsn, workdir, "--demo", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Open {workdir / 'exports' / 'report.html'};" in result.stdout
    return workdir / "exports"


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def test_demo_fills_every_view_and_exports_each_one(dsn: str, demo: Path) -> None:
    for view, order in VIEWS.items():
        rows = fetch(dsn, f"SELECT * FROM analysis.{view} ORDER BY {order}")
        assert rows, f"analysis.{view} is empty after --demo"
        with (demo / f"{view}.csv").open(newline="") as exported:
            lines = list(csv.reader(exported))
        assert lines[0] == list(rows[0].keys())
        assert lines[1:] == [[_text(v) for v in r.values()] for r in rows]


def test_demo_charts_are_pngs_that_are_not_blank(demo: Path) -> None:
    for name in CHARTS:
        path = demo / f"{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = image.imread(path)
        assert pixels.shape[0] > 300 and pixels.shape[1] > 600
        # A blank chart is one colour; a drawn one has lines, bars and text in many.
        assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 50, name


def test_report_is_self_contained(demo: Path) -> None:
    page = (demo / "report.html").read_text()

    sources = re.findall(r"""(?:src|href)=['"]([^'"]*)['"]""", page)
    assert len(sources) == len(CHARTS)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert re.search(r"data last loaded \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC", page)
    assert "Example Park" not in page and "example.com" not in page  # no personal data


@pytest.mark.slow
def test_the_report_renders_in_headless_chromium(demo: Path, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is needed (Debian package `chromium`, installed by .ci/run)"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    url = (demo / "report.html").resolve().as_uri()
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<img") == len(CHARTS)
    assert dom.stdout.count("<table>") == 5
    assert "Ingest quality" in dom.stdout and "Dispatch outcomes" in dom.stdout

    shot = tmp_path / "report.png"
    taken = subprocess.run(
        [browser, *flags, f"--screenshot={shot}", "--window-size=1280,2400", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert taken.returncode == 0, taken.stderr[-2000:]
    pixels = image.imread(shot)
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 50


@pytest.mark.slow
def test_analysis_twice_and_while_files_load(dsn: str, workdir: Path) -> None:
    drop(workdir / "imports", "meter_small.csv", "meter_id,reading_at,register_kwh,power_w\n" + meter_rows(7))
    assert run_cli(dsn, workdir, "--ingest", "imports", "--pipeline").returncode == 0
    big = "meter_id,reading_at,register_kwh,power_w\n" + "".join(
        meter_rows(144, meter=f"B{m}") for m in range(300)
    )
    drop(workdir / "imports", "meter_big.csv", big)
    loading = start_cli(dsn, workdir, "--ingest", "imports", "--pipeline")
    try:
        first = run_cli(dsn, workdir, "--analysis")
        second = run_cli(dsn, workdir, "--analysis")
    finally:
        assert loading.wait(timeout=120) == 0
    assert (first.returncode, second.returncode) == (0, 0), first.stdout + second.stdout
    third = run_cli(dsn, workdir, "--analysis")
    assert third.returncode == 0
    daily = {r["meter_id"] for r in fetch(dsn, "SELECT meter_id FROM analysis.energy_daily")}
    assert "M1" in daily and len(daily) == 301
    assert re.search(r"^energy_daily +301 rows → energy_daily\.csv$", third.stdout, re.MULTILINE)


def test_energy_daily_agrees_with_the_half_hours(dsn: str, workdir: Path) -> None:
    readings = [dict(r, meter_id=f"{case['name'][:12]}") for case in VECTORS for r in case["readings"]]
    readings.sort(key=lambda r: (r["meter_id"], r["ingest_seq"]))
    drop(workdir / "imports", "meter_vectors.csv", meter_csv(readings))
    result = run_cli(
        dsn, workdir, "--ingest", "imports", "--pipeline", "--analysis", ENERGY_SETTLEMENT_TZ="Europe/London"
    )
    assert result.returncode == 0, result.stdout + result.stderr

    expected = fetch(
        dsn,
        "SELECT meter_id, settlement_date AS day, round(sum(kwh), 3) AS kwh, count(*) AS n "
        "FROM warehouse.fact_energy_interval GROUP BY 1, 2 ORDER BY 1, 2",
    )
    actual = fetch(dsn, "SELECT meter_id, day, kwh, half_hours AS n FROM analysis.energy_daily ORDER BY 1, 2")
    assert [tuple(r) for r in actual] == [tuple(r) for r in expected]
    assert len(actual) >= 10
    normal = next(r for r in actual if r["meter_id"] == "normal_monot")
    assert normal["kwh"] == Decimal("0.600")  # 0.35 + 0.25, the vector's two half-hours
