"""Watch mode's `/healthz` and `/metrics` on HEALTH_PORT (DESIGN §8, issue 7): the health check
follows the database going away and coming back, and the metrics count a drop."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import psutil
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.helpers import StoppablePostgres, Watchers, drop_atomically, ledger, meter_csv, wait_until

OK = {"status": "ok", "problems": []}
DB_DOWN = {"status": "unhealthy", "problems": ["database not reachable"]}
ROWS = 250


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        port: int = sock.getsockname()[1]
        return port


def get(port: int, path: str) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{port}{path}", timeout=5)


def healthz(port: int) -> tuple[int, object]:
    response = get(port, "/healthz")
    assert response.headers["Content-Type"] == "application/json"
    return response.status_code, response.json()


def metrics(port: int) -> dict[str, float]:
    """Every sample of /metrics, keyed `name` or `name{label="value",...}`."""
    response = get(port, "/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


@pytest.mark.slow
def test_healthz_follows_the_database_and_metrics_count_a_drop(
    stoppable_pg: StoppablePostgres, outage_dsn: str, workdir: Path, watchers: Watchers
) -> None:
    dsn, imports, port = outage_dsn, workdir / "imports", free_port()
    watcher = watchers.start(dsn, workdir, HEALTH_PORT=str(port))
    assert f"serving /healthz and /metrics on 127.0.0.1 port {port}" in watcher.output

    # healthy once the first probe has reached the database (at once after start-up)
    wait_until(lambda: healthz(port) == (200, OK), 15, "/healthz 200")
    not_found = get(port, "/nope")
    assert (not_found.status_code, not_found.text) == (404, "not found\n")
    assert get(port, "/healthz/extra").status_code == 404

    before = metrics(port)
    assert before["loadbay_database_up"] == 1.0
    assert [name for name in before if name.startswith("loadbay_files_total")] == []
    assert before["loadbay_ingest_duration_seconds_count"] == 0.0

    # -- a drop is counted
    dropped_at = time.time()
    drop_atomically(imports, "meter_readings_health.csv", meter_csv(ROWS, meters=5))

    def counted_once() -> dict[str, float]:
        samples = metrics(port)
        return samples if 'loadbay_files_total{status="loaded"}' in samples else {}

    counted = wait_until(counted_once, 30, "the loaded file counted in /metrics")
    assert ledger(dsn) == [("meter_readings_health.csv", "loaded", ROWS, 0)]
    assert {name: value for name, value in counted.items() if name.startswith("loadbay_files_total")} == {
        'loadbay_files_total{status="loaded"}': 1.0
    }
    assert counted["loadbay_rows_loaded_total"] == ROWS
    assert counted["loadbay_rows_rejected_total"] == 0.0
    assert counted["loadbay_ingest_duration_seconds_count"] == 1.0
    assert 0 < counted["loadbay_ingest_duration_seconds_sum"] < 30
    assert counted['loadbay_ingest_duration_seconds_bucket{le="+Inf"}'] == 1.0
    assert dropped_at <= counted["loadbay_last_success_timestamp_seconds"] <= time.time()
    assert counted["loadbay_database_up"] == 1.0
    # the gauge follows the watcher's loop (a tick behind the count)
    wait_until(lambda: metrics(port)["loadbay_queue_depth"] == 0.0, 5, "queue depth back to 0")

    # -- the database stops: 503 within a probe interval, the metrics still served
    stoppable_pg.stop()
    wait_until(lambda: healthz(port) == (503, DB_DOWN), 15, "/healthz 503 with the database stopped")
    down = metrics(port)
    assert down["loadbay_database_up"] == 0.0
    assert down['loadbay_files_total{status="loaded"}'] == 1.0
    assert watcher.alive()

    # -- and comes back: 200 again
    stoppable_pg.start()
    wait_until(lambda: healthz(port) == (200, OK), 15, "/healthz 200 after the database came back")
    assert metrics(port)["loadbay_database_up"] == 1.0

    assert watcher.stop() == 0
    assert "Traceback" not in watcher.output
    assert watcher.output.rstrip().endswith("stopped watching: 1 loaded, 0 duplicates, 0 failed")
    with pytest.raises(requests.ConnectionError):  # the endpoint went with the process
        get(port, "/healthz")


def test_health_port_0_serves_nothing(dsn: str, workdir: Path, watchers: Watchers) -> None:
    port = free_port()
    watcher = watchers.start(dsn, workdir, HEALTH_PORT="0")

    assert "serving /healthz" not in watcher.output
    with pytest.raises(requests.ConnectionError):
        get(port, "/healthz")
    assert watcher.stop() == 0


@pytest.mark.slow
def test_a_file_held_open_by_its_writer_is_counted_as_waiting_until_it_is_closed(
    dsn: str, workdir: Path, watchers: Watchers
) -> None:
    imports, port = workdir / "imports", free_port()
    watcher = watchers.start(dsn, workdir, "--watch", WATCH_POLLING="true", HEALTH_PORT=str(port))
    content = meter_csv(ROWS)
    with open(imports / "meter_held.csv", "wb") as writer:
        writer.write(content[:1000])
        writer.flush()
        # polling settles it after 0.5 s, then the loader finds the writer still there
        watcher.wait_for(
            r"meter_held\.csv will be tried again in \d+ s: another process still has the file open"
        )
        wait_until(
            lambda: metrics(port).get('loadbay_files_waiting{reason="writer_open"}') == 1.0, 10, "gauge"
        )
        assert ledger(dsn) == []
        writer.write(content[1000:])
    wait_until(lambda: ledger(dsn) == [("meter_held.csv", "loaded", ROWS, 0)], 30, "the file loaded")
    wait_until(lambda: metrics(port).get('loadbay_files_waiting{reason="writer_open"}') == 0.0, 10, "gauge 0")


def listening_on(pid: int, port: int) -> list[str]:
    """The local addresses process `pid` listens on at TCP `port`."""
    return [
        c.laddr.ip
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    ]


def test_health_binds_loopback_by_default(dsn: str, workdir: Path, watchers: Watchers) -> None:
    port = free_port()
    watcher = watchers.start(dsn, workdir, HEALTH_PORT=str(port))

    assert f"serving /healthz and /metrics on 127.0.0.1 port {port}" in watcher.output
    assert listening_on(watcher.pid, port) == ["127.0.0.1"]
    assert watcher.stop() == 0


def test_health_host_sets_the_address(dsn: str, workdir: Path, watchers: Watchers) -> None:
    port = free_port()
    watcher = watchers.start(dsn, workdir, HEALTH_PORT=str(port), HEALTH_HOST="0.0.0.0")

    assert f"serving /healthz and /metrics on 0.0.0.0 port {port}" in watcher.output
    assert listening_on(watcher.pid, port) == ["0.0.0.0"]
    wait_until(lambda: healthz(port) == (200, OK), 15, "/healthz 200")
    assert watcher.stop() == 0
