"""`POST /detrack/webhook`: DeTrack pushes a job's JSON when its status changes.

Served on DETRACK_WEBHOOK_HOST:DETRACK_WEBHOOK_PORT, apart from the health port, by a small HTTP
server on a thread; each accepted body is written by the event loop's database pool.

| request | answer |
|---|---|
| missing or wrong Basic Auth (compared in constant time) | 401 |
| body over 1 MiB (by its Content-Length; never read) | 413 |
| not JSON, not an object, or no `do_number` / `date` | 400 |
| a job loadbay did not send | 202, an info line, nothing written |
| a job loadbay sent | 200 (an older or repeated event changes nothing) |
| PostgreSQL away | 503 (DeTrack may send it again; the status sync catches up anyway) |

The body holds names and addresses: it is never logged; log lines carry do_number and date.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

from prometheus_client import CollectorRegistry, Counter

from app.db import Database
from app.settings import Settings
from app.sqlfiles import sql
from models.detrack_events import JobEvent, NotAJob, job_event

log = logging.getLogger(__name__)

PATH = "/detrack/webhook"
MAX_BODY_BYTES = 1024 * 1024
ANSWER_TIMEOUT_S = 30.0  # DeTrack's own wait is undocumented; a stuck write must not hold a thread forever

Applied = Literal["unknown", "applied", "not_newer", "unchanged"]


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: code and a short JSON-able message."""

    code: int
    message: str


async def apply_job_event(db: Database, settings: Settings, event: JobEvent) -> tuple[Applied, int]:
    """Write `event` to warehouse.detrack_jobs (and mark its shipment delivered); what happened and
    how many shipments were marked delivered."""
    async with db.connection() as conn, conn.transaction():
        row = await conn.fetchrow(sql("detrack/apply_job_event.sql", settings), *event.parameters())
    assert row is not None
    if not row["known"]:
        return "unknown", 0
    if row["applied"]:
        return "applied", int(row["delivered"])
    return ("not_newer" if row["stale"] else "unchanged"), 0


class Credentials:
    """DETRACK_WEBHOOK_USER and _PASSWORD, checked in constant time."""

    def __init__(self, user: str, password: str) -> None:
        self._expected = f"{user}:{password}".encode()

    def accept(self, header: str | None) -> bool:
        """Whether an Authorization header carries these credentials as Basic Auth."""
        scheme, _, encoded = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, self._expected)


class WebhookListener:
    """The webhook as a watch-mode service."""

    name = "DeTrack webhook"

    def __init__(self, settings: Settings, db: Database, metrics: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.db = db
        self.credentials = Credentials(
            settings.detrack_webhook_user, settings.detrack_webhook_password.get_secret_value()
        )
        self.requests = Counter(
            "loadbay_webhook_requests",
            "DeTrack webhook requests, by answer code",
            ["code"],
            registry=metrics if metrics is not None else CollectorRegistry(),
        )
        self.port: int | None = None  # the port bound, once serving
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set."""
        self._loop = asyncio.get_running_loop()
        host, port = self.settings.detrack_webhook_host, self.settings.detrack_webhook_port
        try:
            server = ThreadingHTTPServer((host, port), _handler(self))
        except OSError as exc:  # loading files matters more: the status sync still reads statuses
            log.error("DeTrack webhook not served: %s port %d: %s", host, port, exc.strerror)
            await stop.wait()
            return
        server.daemon_threads = True
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, name="webhook", daemon=True).start()
        log.info("serving DeTrack's webhook at %s on %s port %d", PATH, host, self.port)
        try:
            await stop.wait()
        finally:
            await asyncio.to_thread(server.shutdown)
            server.server_close()

    def answer(self, body: bytes) -> Answer:
        """Called on a request thread: the answer to an authenticated body of accepted size."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(self.receive(body), self._loop)
        try:
            return future.result(timeout=ANSWER_TIMEOUT_S)
        except TimeoutError:
            future.cancel()
            log.warning("DeTrack webhook: no answer from PostgreSQL within %.0f s", ANSWER_TIMEOUT_S)
            return Answer(503, "try again later")

    async def receive(self, body: bytes) -> Answer:
        """Read one pushed job and write it."""
        try:
            event = job_event(json.loads(body))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return Answer(400, "the body is not JSON")
        except NotAJob as exc:
            return Answer(400, str(exc))
        try:
            applied, delivered = await apply_job_event(self.db, self.settings, event)
        except Exception as exc:  # the database is away, most likely: DeTrack or the sync tries again
            log.warning("DeTrack webhook: job %s on %s not written: %s", event.do_number, event.date, exc)
            return Answer(503, "try again later")
        if applied == "unknown":
            log.info(
                "DeTrack webhook: job %s on %s is not one loadbay sent; ignored", event.do_number, event.date
            )
            return Answer(202, "not a job loadbay sent; ignored")
        if applied == "applied":
            log.info(
                "DeTrack webhook: job %s on %s is %s%s",
                event.do_number,
                event.date,
                event.status,
                "; shipment marked delivered" if delivered else "",
            )
        else:
            log.debug("DeTrack webhook: job %s on %s: %s event ignored", event.do_number, event.date, applied)
        return Answer(200, applied)


def _handler(listener: WebhookListener) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path.split("?", 1)[0] != PATH:
                self._send(Answer(404, "not found"))
            elif not listener.credentials.accept(self.headers.get("Authorization")):
                self._send(Answer(401, "unauthorized"), {"WWW-Authenticate": 'Basic realm="loadbay"'})
            elif self.headers.get("Transfer-Encoding") or self.headers.get("Content-Length") is None:
                self._send(Answer(411, "send the body with a Content-Length"))
            elif not (self.headers["Content-Length"] or "").isdigit():
                self._send(Answer(400, "bad Content-Length"))
            elif int(self.headers["Content-Length"]) > MAX_BODY_BYTES:
                self._send(Answer(413, f"the body is over {MAX_BODY_BYTES} bytes"))
            else:
                self._send(listener.answer(self.rfile.read(int(self.headers["Content-Length"]))))

        def do_GET(self) -> None:
            self._send(Answer(405, "POST a job here"), {"Allow": "POST"})

        def _send(self, answer: Answer, headers: dict[str, str] | None = None) -> None:
            listener.requests.labels(code=str(answer.code)).inc()
            payload = json.dumps({"message": answer.message}).encode()
            if answer.code >= 400:
                self.close_connection = True  # the body may be unread: the connection cannot be reused
            self.send_response(answer.code)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            return  # request lines would add nothing; outcomes are logged by do_number above

    return Handler
