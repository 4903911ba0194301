"""A DeTrack API v2 stand-in for tests: a real HTTP server on 127.0.0.1, on a free port.

    with DetrackStandin(api_key="k", vehicles=[{"id": 7, "name": "Van 1", "detrack_id": "V1"}]) as api:
        requests.post(f"{api.base_url}/dn/jobs", json={"data": job}, headers={"X-API-KEY": "k"})
        api.fail_next(2)                      # the next two requests answer 503
        api.jobs[("JOB1", "2024-05-01")]      # what the "API" now holds

Each request goes through these steps, in order:

1. ``latency(seconds)``: every request waits that long first.
2. Authentication: ``X-API-KEY`` must equal ``api_key``, else 401 ``{"message": "Unauthorized"}``.
3. Rate limit: at most ``rate_limit_per_minute`` requests (None: no limit) in any sliding 60 s;
   over it, 429 ``{"message": "Too Many Attempts."}`` with ``Retry-After`` (whole seconds until the
   oldest request leaves the window, at least 1) when ``send_retry_after``. Requests refused here or
   at step 2 do not count; everything after this step does, injected faults included.
4. Injected faults, see :mod:`tests.detrack_standin.faults`: an injected 5xx answers
   ``{"message": <reason phrase>}``, an injected 429 answers like step 3 with ``Retry-After`` only
   when ``rate_limit_next`` was given one.
5. The endpoint, see :mod:`tests.detrack_standin.api` (bulk 422 shape, list paging) and
   :mod:`tests.detrack_standin.state` (validation codes).

The request log (:attr:`DetrackStandin.requests`) records whether the key matched, never the key.
Timestamps (milestones, the rate window) come from ``now``, so a test may pass a fake clock.
"""

from __future__ import annotations

import base64
import copy
import hmac
import json
import math
import socketserver
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast

from tests.detrack_standin.api import BASE_PATH, Reply, Request, route
from tests.detrack_standin.faults import Fault, FaultPlan, SlidingWindow, TimeoutMode
from tests.detrack_standin.state import TAKEN, Job, JobKey, JobStore


@dataclass(frozen=True)
class RequestRecord:
    """One request as the stand-in saw it: ``path`` includes the query string, ``body_bytes`` is the
    request body's size, ``status`` is None when the connection was dropped without an answer."""

    method: str
    path: str
    status: int | None
    at: datetime
    body_bytes: int
    key_matched: bool


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _too_many(retry_after: int | None) -> Reply:
    headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
    return Reply(429, {"message": "Too Many Attempts."}, headers)


class DetrackStandin:
    """A local DeTrack API: configure it, ``start()`` it (or use ``with``), point the client at ``base_url``.

    Settings may be changed between requests; :meth:`reset` restores the constructor's values.
    """

    def __init__(
        self,
        api_key: str = "test-api-key",
        *,
        vehicles: Iterable[Mapping[str, Any]] = (),
        rate_limit_per_minute: int | None = 60,
        send_retry_after: bool = True,
        duplicate_code: str = TAKEN,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.api_key = api_key
        self._initial = ([dict(vehicle) for vehicle in vehicles], rate_limit_per_minute, send_retry_after)
        self.vehicles, self.rate_limit_per_minute, self.send_retry_after = copy.deepcopy(self._initial)
        self._initial_duplicate_code = duplicate_code
        self._now = now
        self._store = JobStore(duplicate_code)
        self._faults = FaultPlan()
        self._window = SlidingWindow(lambda: now().timestamp())
        self._log: list[RequestRecord] = []
        self._log_lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        # (url, user, password) that set_status pushes each changed job to; None: no webhook
        self.webhook: tuple[str, str | None, str | None] | None = None
        self.webhook_answers: list[int] = []

    # Life cycle

    def start(self) -> DetrackStandin:
        """Listen on 127.0.0.1 on a free port, serving from a background thread."""
        if self._server is not None:
            raise RuntimeError("the stand-in is already running")
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.standin = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; requests held back by latency or timeouts are cut short."""
        if self._server is None or self._thread is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> DetrackStandin:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/api/v2``; job paths go under ``/dn``, vehicles directly under it."""
        if self._server is None:
            raise RuntimeError("the stand-in is not running: call start() first")
        return f"http://127.0.0.1:{self._server.server_address[1]}{BASE_PATH}"

    # Configuration

    @property
    def duplicate_code(self) -> str:
        """The code of a duplicate do_number: ``is already taken`` or ``has duplicate``."""
        return self._store.duplicate_code

    @duplicate_code.setter
    def duplicate_code(self, code: str) -> None:
        self._store.duplicate_code = code

    # Fault injection

    def fail_next(self, n: int = 1, status: int = 503) -> None:
        """Answer the next ``n`` requests with ``status`` and do nothing else."""
        self._faults.plan(Fault("status", status=status), n)

    def fail_every(self, k: int, status: int = 503) -> None:
        """Answer every ``k``-th request from now with ``status``; ``k=0`` turns it off."""
        self._faults.fail_every(k, status)

    def timeout_next(self, n: int, seconds: float, mode: TimeoutMode = "processed") -> None:
        """Hold the next ``n`` requests for ``seconds``: ``processed`` handles each, then answers late;
        ``dropped`` handles nothing and closes the connection without an answer."""
        self._faults.plan(Fault(mode, seconds=seconds), n)

    def rate_limit_next(self, n: int = 1, retry_after: int | None = None) -> None:
        """Answer the next ``n`` requests 429, with ``Retry-After`` only when ``retry_after`` is given."""
        self._faults.plan(Fault("rate_limit", status=429, retry_after=retry_after), n)

    def latency(self, seconds: float) -> None:
        """Delay every request by ``seconds`` (0 turns it off)."""
        self._faults.latency = seconds

    # Test hooks on jobs

    def add_job(self, payload: Mapping[str, Any]) -> Job:
        """Create a job directly, as if another client had sent it; raises ValueError when invalid."""
        job, errors = self._store.create(payload, self._now())
        if job is None:
            raise ValueError(f"invalid job: {errors}")
        return job

    def set_status(
        self,
        do_number: str,
        date: str,
        status: str,
        at: datetime | None = None,
        pod: Mapping[str, Any] | None = None,
    ) -> Job:
        """Move a job to ``status`` (a driver's action), adding a milestone at ``at`` (default now) and
        setting the proof-of-delivery fields in ``pod``. With :attr:`webhook` set, the job is then
        pushed to it, as DeTrack's account-wide webhook does; the answer's code is in
        :attr:`webhook_answers`."""
        job = self._store.set_status(do_number, date, status, at or self._now(), pod)
        if self.webhook is not None:
            self.webhook_answers.append(self.push(do_number, date, *self.webhook))
        return job

    # Webhook pushes

    def push(
        self, do_number: str, date: str, url: str, user: str | None = None, password: str | None = None
    ) -> int:
        """POST the job, as a GET returns it, to ``url`` (with Basic Auth when ``user`` is given), like
        DeTrack's webhook on a status change; returns the answer's status code."""
        body = json.dumps(self._store.get(do_number, date)).encode()
        request = urllib.request.Request(url, data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        if user is not None:
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as refused:
            return int(refused.code)

    # Introspection

    @property
    def jobs(self) -> dict[JobKey, Job]:
        """A copy of every job, by ``(do_number, date)``."""
        return self._store.snapshot()

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request so far, in the order they were answered (or dropped)."""
        with self._log_lock:
            return list(self._log)

    def created_count(self, do_number: str, date: str) -> int:
        """How many times this job was created: 0 or 1, unless a PUT moved it to another key."""
        return self._store.created_count(do_number, date)

    def duplicate_count(self, do_number: str, date: str) -> int:
        """How many creates of this job were refused as duplicates."""
        return self._store.duplicate_count(do_number, date)

    def reset(self) -> None:
        """Forget jobs, requests, faults and latency; restore the constructor's settings."""
        self.vehicles, self.rate_limit_per_minute, self.send_retry_after = copy.deepcopy(self._initial)
        self._store.reset(self._initial_duplicate_code)
        self._faults.reset()
        self._window.reset()
        with self._log_lock:
            self._log.clear()

    # Serving (called from the request threads)

    def _handle(self, request: Request, api_key: str) -> Reply | None:
        """The answer to one request, or None to close the connection without one."""
        self._pause(self._faults.latency)
        key_matched = hmac.compare_digest(api_key.encode(), self.api_key.encode())
        fault: Fault | None = None
        reply: Reply | None
        if not key_matched:
            reply = Reply(401, {"message": "Unauthorized"})
        elif (wait := self._window.admit(self.rate_limit_per_minute)) is not None:
            reply = _too_many(max(1, math.ceil(wait)) if self.send_retry_after else None)
        elif (fault := self._faults.take()) is None or fault.kind == "processed":
            reply = route(self._store, copy.deepcopy(self.vehicles), request, self._origin(), self._now())
        elif fault.kind == "rate_limit":
            reply = _too_many(fault.retry_after)
        elif fault.kind == "status":
            reply = Reply(fault.status, {"message": HTTPStatus(fault.status).phrase})
        else:
            reply = None
        self._record(request, reply, key_matched)
        if fault is not None and fault.kind in ("processed", "dropped"):
            self._pause(fault.seconds)
        return reply

    def _origin(self) -> str:
        return self.base_url[: -len(BASE_PATH)]

    def _pause(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def _record(self, request: Request, reply: Reply | None, key_matched: bool) -> None:
        record = RequestRecord(
            method=request.method,
            path=request.target,
            status=None if reply is None else reply.status,
            at=self._now(),
            body_bytes=len(request.body),
            key_matched=key_matched,
        )
        with self._log_lock:
            self._log.append(record)


class _Server(ThreadingHTTPServer):
    standin: DetrackStandin
    request_queue_size = 128  # the default 5 makes a burst of new connections wait a second for SYN retries

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can take seconds; it is not needed.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real API behind a requests.Session
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: tests read :attr:`DetrackStandin.requests` instead."""

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        request = Request(
            method=self.command,
            target=self.path,
            content_type=self.headers.get("Content-Type", ""),
            body=self.rfile.read(length) if length else b"",
        )
        reply = cast(_Server, self.server).standin._handle(request, self.headers.get("X-API-KEY", ""))
        if reply is None:
            self.close_connection = True
            return
        self._write(reply)

    def _write(self, reply: Reply) -> None:
        payload = json.dumps(reply.body).encode()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # the client gave up waiting (a timeout fault) and closed the connection
            self.close_connection = True
