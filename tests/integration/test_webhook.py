"""POST /detrack/webhook against a real PostgreSQL, fed by the DeTrack stand-in's pushes: each
refused request is answered as specified and changes nothing; a known job's push writes its
status and proof of delivery once, and an older push never overwrites a newer one."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from app.db import Database, asyncpg_dsn
from app.settings import Settings
from services.handsfree.webhook import WebhookListener
from tests.conftest import make_settings
from tests.detrack_standin import DetrackStandin
from tests.integration.test_dispatch import KEY, VEHICLES, dispatch, load_warehouse, shipment
from tests.pg import fetch

USER, PASSWORD = "detrack", "hook-secret-71"
SIGNATURE = "https://detrack.example/signatures/J0001.png"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Serving:
    """A WebhookListener on its own event loop thread, as watch mode runs it."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.db = Database(asyncpg_dsn(settings.database_url.get_secret_value()))
        self.listener = WebhookListener(settings, self.db)
        self.stop_event = self.call(self._event())
        self.task = asyncio.run_coroutine_threadsafe(self.listener.run(self.stop_event), self.loop)
        self.url = f"http://127.0.0.1:{settings.detrack_webhook_port}/detrack/webhook"
        for _ in range(200):
            if self.listener.port:
                break
            threading.Event().wait(0.01)

    async def _event(self) -> asyncio.Event:
        return asyncio.Event()

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.task.result(30)
        self.call(self.db.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def api() -> Iterator[DetrackStandin]:
    with DetrackStandin(KEY, vehicles=VEHICLES, rate_limit_per_minute=None) as standin:
        yield standin


@pytest.fixture
def hook(dsn: str, workdir: Path, api: DetrackStandin) -> Iterator[tuple[Settings, Serving]]:
    settings = make_settings(
        dsn,
        workdir,
        detrack_api_key=KEY,
        detrack_base_url=api.base_url,
        dispatch_rules=workdir / "dispatch_rules.toml",
        detrack_webhook_port=free_port(),
        detrack_webhook_host="127.0.0.1",
        detrack_webhook_user=USER,
        detrack_webhook_password=PASSWORD,
    )
    load_warehouse(settings, shipment(1) + shipment(2))
    dispatch(settings)
    serving = Serving(settings)
    yield settings, serving
    serving.close()


def state(dsn: str) -> list[tuple[Any, ...]]:
    """Everything a push may change: the outbox, the shipments' delivery, the error log."""
    jobs = fetch(
        dsn,
        "SELECT do_number, status, detrack_status, detrack_status_at, pod_at, received_by, signature_url, "
        "photo_urls, failure_reason, updated_at FROM warehouse.detrack_jobs ORDER BY do_number",
    )
    facts = fetch(
        dsn, "SELECT shipment_number, delivered, delivered_at FROM warehouse.fact_shipment ORDER BY 1"
    )
    errors = fetch(dsn, "SELECT count(*) FROM ingest.error_log")
    return [tuple(r) for r in jobs] + [tuple(r) for r in facts] + [tuple(r) for r in errors]


def post(url: str, body: bytes, auth: tuple[str, str] | None = (USER, PASSWORD)) -> requests.Response:
    return requests.post(url, data=body, auth=auth, headers={"Content-Type": "application/json"}, timeout=30)


def test_refused_requests_are_answered_as_specified_and_change_nothing(
    hook: tuple[Settings, Serving], dsn: str, api: DetrackStandin, caplog: pytest.LogCaptureFixture
) -> None:
    _, serving = hook
    caplog.set_level(logging.INFO)
    api.set_status("J0001", "2024-06-03", "completed", pod={"signature_file_url": SIGNATURE})
    job = json.dumps(api.jobs[("J0001", "2024-06-03")]).encode()
    before = state(dsn)
    unknown = json.dumps({"do_number": "J9999", "date": "2024-06-03", "status": "completed"}).encode()

    cases = [
        (post(serving.url, job, auth=None), 401, "unauthorized"),
        (post(serving.url, job, auth=(USER, "wrong")), 401, "unauthorized"),
        (post(serving.url, job, auth=("someone", PASSWORD)), 401, "unauthorized"),
        (post(serving.url, b"x" * (2 * 1024 * 1024)), 413, "the body is over 1048576 bytes"),
        (post(serving.url, b"do_number=J0001"), 400, "the body is not JSON"),
        (post(serving.url, b"[" + job + b"]"), 400, "the body is not a JSON object (a DeTrack job)"),
        (post(serving.url, b'{"do_number": "J0001"}'), 400, "the job has no date"),
        (post(serving.url, unknown), 202, "not a job loadbay sent; ignored"),
    ]

    assert [(r.status_code, r.json()["message"]) for r, _, _ in cases] == [(c, m) for _, c, m in cases]
    assert cases[0][0].headers["WWW-Authenticate"] == 'Basic realm="loadbay"'
    assert state(dsn) == before
    assert "DeTrack webhook: job J9999 on 2024-06-03 is not one loadbay sent; ignored" in caplog.text


def test_a_pushed_completion_is_written_once_and_an_older_push_never_overwrites_it(
    hook: tuple[Settings, Serving], dsn: str, api: DetrackStandin, caplog: pytest.LogCaptureFixture
) -> None:
    _, serving = hook
    caplog.set_level(logging.DEBUG)
    api.webhook = (serving.url, USER, PASSWORD)
    api.set_status("J0001", "2024-06-03", "dispatched")
    stale = json.dumps(api.jobs[("J0001", "2024-06-03")]).encode()
    pod = {
        "signature_file_url": SIGNATURE,
        "photo_1_file_url": "https://detrack.example/photos/J0001-1.jpg",
        "received_by_sent_by": "Goods In Desk",
        "pod_at": "2024-06-03T13:05:00Z",
    }
    completed = api.set_status("J0001", "2024-06-03", "completed", pod=pod)
    assert api.webhook_answers == [200, 200]

    delivered = state(dsn)
    job = fetch(dsn, "SELECT * FROM warehouse.detrack_jobs WHERE do_number = 'J0001'")[0]
    assert (job["detrack_status"], job["signature_url"], job["photo_urls"], job["received_by"]) == (
        "completed",
        SIGNATURE,
        ["https://detrack.example/photos/J0001-1.jpg"],
        "Goods In Desk",
    )
    assert job["pod_at"] == datetime(2024, 6, 3, 13, 5, tzinfo=UTC)
    assert job["detrack_status_at"] == datetime.fromisoformat(completed["milestones"][-1]["created_at"])
    facts = fetch(
        dsn, "SELECT shipment_number, delivered, delivered_at FROM warehouse.fact_shipment ORDER BY 1"
    )
    assert [tuple(f) for f in facts] == [
        ("S00001", True, datetime(2024, 6, 3, 13, 5, tzinfo=UTC)),
        ("S00002", False, None),
    ]

    again = post(serving.url, json.dumps(api.jobs[("J0001", "2024-06-03")]).encode())
    older = post(serving.url, stale)
    assert [(again.status_code, again.json()), (older.status_code, older.json())] == [
        (200, {"message": "not_newer"}),
        (200, {"message": "not_newer"}),
    ]
    assert state(dsn) == delivered
    # personal data (the receiver's name, the address) never reaches the log
    assert "Goods In Desk" not in caplog.text and "Example Park" not in caplog.text
