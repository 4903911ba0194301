"""Alerts to a real local HTTP endpoint through Apprise's `json://`: a failed file is one message
naming it, a burst of failures is coalesced, and a hanging endpoint never holds back a load."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import Watchers, drop_atomically, wait_until
from tests.integration.helpers import METER_HEADER, meter_rows
from tests.pg import fetchval


class AlertSink:
    """Records every JSON message posted to it; with `hang` set, holds each request unanswered
    until `release` is set."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.received = 0
        self.answered = 0
        self.hang = False
        self.release = threading.Event()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                sink.received += 1
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if sink.hang:
                    sink.release.wait(60)
                sink.messages.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                sink.answered += 1

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"json://127.0.0.1:{self.server.server_address[1]}/alerts"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sink() -> Iterator[AlertSink]:
    started = AlertSink()
    yield started
    started.close()


def unknown_file(n: int) -> bytes:
    return f"colour,size\nred,{n}\n".encode()


def test_a_failed_file_produces_one_message_naming_it(
    dsn: str, workdir: Path, watchers: Watchers, sink: AlertSink
) -> None:
    watcher = watchers.start(dsn, workdir, ALERT_URLS=sink.url)
    drop_atomically(workdir / "imports", "mystery_export.csv", unknown_file(1))
    wait_until(lambda: sink.messages, 30, "the alert")
    assert watcher.stop() == 1  # a file failed

    assert len(sink.messages) == 1
    message = sink.messages[0]
    assert message["title"] == "loadbay: 1 file(s) failed"
    lines = message["message"].splitlines()
    assert lines[0].startswith("- mystery_export.csv (dataset unknown, ledger #1): ")
    assert lines[0].endswith(f"; see {workdir / 'imports' / 'failed' / 'mystery_export.csv.error.json'}")
    assert lines[-1] == "Details: python main.py --status (docker compose exec app python main.py --status)"
    assert "alert sent: loadbay: 1 file(s) failed" in watcher.output


@pytest.mark.slow
def test_fifty_failed_files_within_a_minute_produce_at_most_two_messages(
    dsn: str, workdir: Path, watchers: Watchers, sink: AlertSink
) -> None:
    watcher = watchers.start(dsn, workdir, ALERT_URLS=sink.url)
    for n in range(50):
        drop_atomically(workdir / "imports", f"mystery_{n:02d}.csv", unknown_file(n))
    wait_until(
        lambda: fetchval(dsn, "SELECT count(*) FROM ingest.files WHERE status = 'failed'") == 50,
        60,
        "50 failed",
    )
    assert watcher.stop() == 1  # files failed; what was folded in is sent on the way out

    assert len(sink.messages) == 2
    first, second = sink.messages
    first_count = int(first["title"].split()[1])
    assert first["title"] == f"loadbay: {first_count} file(s) failed"
    assert second["title"] == f"loadbay: {50 - first_count} file(s) failed"
    if 50 - first_count > 10:
        assert f"… and {50 - first_count - 10} more" in second["message"]


@pytest.mark.slow
def test_a_hanging_alert_endpoint_never_holds_back_a_load(
    dsn: str, workdir: Path, watchers: Watchers, sink: AlertSink
) -> None:
    """20 drops with rejects above ALERT_REJECT_RATIO load while the endpoint holds the first alert
    unanswered; the time is measured beside a watcher without alerts."""
    bad = "M9,not-a-time,1,1\n"
    seconds: dict[str, float] = {}
    for label, urls in (("without alerts", ""), ("alerts, endpoint hanging", sink.url)):
        sink.hang = True
        imports = workdir / "imports"
        watcher = watchers.start(dsn, workdir, ALERT_URLS=urls)
        offset = len(seconds) * 20
        time.sleep(3)  # running for a while, as in service (Apprise's plugins load at start)
        started = time.monotonic()
        for n in range(20):
            drop_atomically(
                imports,
                f"meter_{offset + n:02d}.csv",
                (METER_HEADER + meter_rows(9, f"M{offset + n}") + bad).encode(),
            )
        expected = offset + 20
        loaded = "SELECT count(*) FROM ingest.files WHERE status = 'loaded_with_rejects'"
        wait_until(
            lambda: fetchval(dsn, loaded) == expected,  # noqa: B023 (called before the loop moves on)
            60,
            "20 loads",
            interval=0.01,
        )
        seconds[label] = time.monotonic() - started
        if urls:
            # every load committed while no alert had been answered; the first is then held
            assert sink.answered == 0
            wait_until(lambda: sink.received == 1, 30, "the first alert at the hanging endpoint")
            assert sink.answered == 0
        sink.release.set()
        assert watcher.stop() == 0
        sink.release.clear()
    print(f"20 drops: {seconds}")
    assert sink.messages[0]["title"] == "loadbay: 1 file(s) loaded with many rejected rows"
