"""Watch mode's `/healthz` and `/metrics` on HEALTH_HOST:HEALTH_PORT (Prometheus text format).

`/healthz` answers 200 while the database answers and the watcher's loop is turning, 503
otherwise, with the reason as JSON. The HTTP server runs in a thread; the watcher updates the
state it reports.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from app.db import Database

log = logging.getLogger(__name__)

STALE_AFTER_S = 30.0  # a watcher loop silent this long is stuck
PROBE_EVERY_S = 5.0  # how often /healthz's view of the database is refreshed
PROBE_TIMEOUT_S = 3.0
# Why a file waits in imports/ (the `reason` label of loadbay_files_waiting).
WaitReason = Literal["writer_open", "unreadable", "folder_problem", "database", "retrying"]
WAIT_REASONS: tuple[WaitReason, ...] = get_args(WaitReason)


class Health:
    """What /healthz and /metrics report: counters, gauges and the problems that make it 503."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.files = Counter("loadbay_files", "Files handled, by outcome", ["status"], registry=self.registry)
        self.rows_loaded = Counter("loadbay_rows_loaded", "Staging rows loaded", registry=self.registry)
        self.rows_rejected = Counter("loadbay_rows_rejected", "Rows rejected", registry=self.registry)
        self.queue_depth = Gauge(
            "loadbay_queue_depth", "Files waiting or being loaded", registry=self.registry
        )
        self.duration = Histogram(
            "loadbay_ingest_duration_seconds",
            "Time to load one file",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.last_success = Gauge(
            "loadbay_last_success_timestamp_seconds", "When a file was last loaded", registry=self.registry
        )
        self.database_up = Gauge("loadbay_database_up", "1 when PostgreSQL answers", registry=self.registry)
        self.erp_up = Gauge(
            "loadbay_erp_up",
            "1 when the last ERP pull could read the ERP (pulling only)",
            registry=self.registry,
        )
        self.files_waiting = Gauge(
            "loadbay_files_waiting",
            "Files in imports/ that wait for a reason other than settling",
            ["reason"],
            registry=self.registry,
        )
        self._beat = time.monotonic()
        self._database_ok = False
        self._folder_problem: str | None = None

    def beat(self) -> None:
        """The watcher's loop is alive (a loop silent for STALE_AFTER_S is reported stalled)."""
        self._beat = time.monotonic()

    def database(self, ok: bool) -> None:
        """Whether PostgreSQL answered the last probe."""
        self._database_ok = ok
        self.database_up.set(1 if ok else 0)

    def erp(self, ok: bool) -> None:
        """Whether the last ERP pull could read the ERP."""
        self.erp_up.set(1 if ok else 0)

    def folders(self, problem: str | None) -> None:
        """processed/ or failed/ cannot receive files (`problem` says why), or can again (None)."""
        self._folder_problem = problem

    def waiting(self, counts: Mapping[str, int]) -> None:
        """How many files wait, by reason; reasons not given are set to 0."""
        for reason in WAIT_REASONS:
            self.files_waiting.labels(reason=reason).set(counts.get(reason, 0))

    def observe(self, status: str, rows_loaded: int, rows_rejected: int, seconds: float) -> None:
        """Count one file's outcome, its rows and how long it took."""
        self.files.labels(status=status).inc()
        self.rows_loaded.inc(rows_loaded)
        self.rows_rejected.inc(rows_rejected)
        self.duration.observe(seconds)
        if status in ("loaded", "loaded_with_rejects"):
            self.last_success.set_to_current_time()

    def status(self) -> tuple[int, dict[str, object]]:
        """The /healthz answer: 200 with no problems, else 503 listing them."""
        problems = []
        if not self._database_ok:
            problems.append("database not reachable")
        if time.monotonic() - self._beat > STALE_AFTER_S:
            problems.append("watcher loop stalled")
        if self._folder_problem is not None:
            problems.append(self._folder_problem)
        return (503 if problems else 200), {"status": "unhealthy" if problems else "ok", "problems": problems}

    def serve(self, host: str, port: int) -> ThreadingHTTPServer:
        """Start serving on `host` (HEALTH_HOST: loopback unless a container publishes the port);
        returns the server."""
        health = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/healthz":
                    code, body = health.status()
                    self._send(code, "application/json", json.dumps(body).encode())
                elif self.path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(health.registry))
                else:
                    self._send(404, "text/plain", b"not found\n")

            def _send(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # probes every few seconds would drown the log

        server = ThreadingHTTPServer((host, port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
        log.info("serving /healthz and /metrics on %s port %d", host, server.server_address[1])
        return server


class DatabaseProbe:
    """Asks PostgreSQL `SELECT 1` every PROBE_EVERY_S, so /healthz follows the database."""

    name = "database probe"

    def __init__(self, db: Database, health: Health) -> None:
        self.db = db
        self.health = health

    async def run(self, stop: asyncio.Event) -> None:
        """Probe until `stop` is set."""
        while not stop.is_set():
            await self.probe()
            try:
                await asyncio.wait_for(stop.wait(), timeout=PROBE_EVERY_S)
            except TimeoutError:
                pass

    async def probe(self) -> None:
        """One look: does the database answer within PROBE_TIMEOUT_S?"""
        try:
            async with self.db.connection(timeout=PROBE_TIMEOUT_S) as conn:
                await conn.fetchval("SELECT 1", timeout=PROBE_TIMEOUT_S)
            self.health.database(True)
        except Exception:  # any failure means: not answering now
            self.health.database(False)
