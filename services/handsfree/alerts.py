"""Alerts to ALERT_URLS (Apprise: e-mail, Slack, Teams, a generic `json://` webhook, …).

Off the loading path: `notify` only notes the event (no I/O, never blocks); this service sends, a
message at a time, on a daemon thread, so a slow or dead endpoint delays nothing but the next
alert. Coalesced: at most one message per kind per ALERT_MIN_INTERVAL_SECONDS; what arrives in
between is folded into the next message with its count. Messages carry file names, counts,
reasons and where to look (`--status`), never row content, personal data or secrets.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter

from app.settings import Settings
from models.outcomes import FileOutcome
from services.health import Health

log = logging.getLogger(__name__)

AlertKind = Literal[
    "file_failed",
    "rejects",
    "stage_failed",
    "jobs_failed",
    "database_down",
    "database_up",
    "erp_down",
    "erp_up",
]
TITLES: dict[str, str] = {
    "file_failed": "file(s) failed",
    "rejects": "file(s) loaded with many rejected rows",
    "stage_failed": "stage run(s) failed",
    "jobs_failed": "dispatch run(s) with failed DeTrack jobs",
    "database_down": "PostgreSQL unreachable",
    "database_up": "PostgreSQL reachable again",
    "erp_down": "ERP unreachable",
    "erp_up": "ERP reachable again",
}
MAX_LINES = 10  # lines a message lists; the rest are counted
MAX_LINE_CHARS = 1000
MAX_REASON_CHARS = 200  # a file's error message, in a line that must still name its .error.json
FLUSH_ON_STOP_S = 5.0
WHERE_TO_LOOK = "Details: python main.py --status (docker compose exec app python main.py --status)"
Send = Callable[[str, str], bool]


@dataclass
class Pending:
    """Events of one kind not sent yet."""

    count: int = 0
    lines: list[str] = field(default_factory=list)


def message(kind: str, pending: Pending) -> tuple[str, str]:
    """Title and body of one message folding `pending`."""
    title = f"loadbay: {pending.count} {TITLES[kind]}" if kind in TITLES else f"loadbay: {kind}"
    if kind.endswith(("_down", "_up")):
        title = f"loadbay: {TITLES[kind]}"
    body = [f"- {line[:MAX_LINE_CHARS]}" for line in pending.lines]
    if pending.count > len(pending.lines):
        body.append(f"… and {pending.count - len(pending.lines)} more")
    body.append(WHERE_TO_LOOK)
    return title, "\n".join(body)


class AppriseSender:
    """Sends with Apprise to every URL of ALERT_URLS."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls

    def __call__(self, title: str, body: str) -> bool:
        """Send one message; True when every URL took it."""
        return bool(self._apprise().notify(body=body, title=title))

    def warm_up(self) -> bool:
        """Load Apprise and the plugins of these URLs (hundreds of modules, most of a second of CPU)
        at start, not when the first file fails, where it would compete with loads for the
        interpreter."""
        self._apprise()
        return True

    def _apprise(self) -> Any:
        import apprise  # only in a process that sends alerts

        sender = apprise.Apprise()
        for url in self.urls:
            sender.add(url)
        return sender


def _in_daemon_thread(work: Callable[[], bool]) -> asyncio.Future[bool]:
    """`work` on a daemon thread: a hanging endpoint never holds the process at exit (the default
    executor's threads are joined when the event loop closes)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[bool] = loop.create_future()

    def run() -> None:
        try:
            result: bool = work()
        except Exception as exc:
            outcome: BaseException | bool = exc
        else:
            outcome = result
        if not loop.is_closed():
            loop.call_soon_threadsafe(_settle, future, outcome)

    threading.Thread(target=run, name="alert", daemon=True).start()
    return future


def _settle(future: asyncio.Future[bool], outcome: BaseException | bool) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class Alerter:
    """The alert service: notes events at once, sends them coalesced."""

    name = "alerts"

    def __init__(self, settings: Settings, send: Send, metrics: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.send = send
        self.interval = settings.alert_min_interval_seconds
        self._pending: dict[str, Pending] = {}
        self._last_sent: dict[str, float] = {}
        self._wake = asyncio.Event()
        registry = metrics if metrics is not None else CollectorRegistry()
        self.sent = Counter("loadbay_alerts_sent", "Alert messages sent", registry=registry)
        self.failed = Counter(
            "loadbay_alerts_failed", "Alert messages that could not be sent", registry=registry
        )

    def notify(self, kind: str, line: str) -> None:
        """Note an event; returns at once (called on the loading path)."""
        pending = self._pending.setdefault(kind, Pending())
        pending.count += 1
        if len(pending.lines) < MAX_LINES:
            pending.lines.append(line)
        self._wake.set()

    async def on_file(self, outcome: FileOutcome) -> None:
        """The watcher's outcome hook: a failed file, or one with many rejected rows."""
        if outcome.status == "failed":
            where = (
                f"; see {outcome.moved_to.with_name(outcome.moved_to.name + '.error.json')}"
                if outcome.moved_to is not None
                else ""
            )
            self.notify(
                "file_failed",
                f"{outcome.name} (dataset {outcome.dataset or 'unknown'}, ledger #{outcome.file_id}): "
                f"{_shortened(outcome.error or 'failed')}{where}",
            )
        elif outcome.status == "loaded_with_rejects":
            rows = outcome.rows_loaded + outcome.rows_rejected
            if rows and outcome.rows_rejected / rows > self.settings.alert_reject_ratio:
                self.notify(
                    "rejects",
                    f"{outcome.name} (dataset {outcome.dataset}, ledger #{outcome.file_id}): "
                    f"{outcome.rows_rejected} of {rows} rows rejected (ALERT_REJECT_RATIO "
                    f"{self.settings.alert_reject_ratio:g}); see ingest.rejected_rows",
                )

    async def run(self, stop: asyncio.Event) -> None:
        """Send what is due until `stop` is set; then try once more to send what is pending."""
        if isinstance(self.send, AppriseSender):
            _in_daemon_thread(self.send.warm_up)
        while not stop.is_set():
            for kind in self._due():
                await self._send(kind)
            self._wake.clear()
            try:
                await asyncio.wait_for(_either(stop, self._wake), timeout=self._next_due())
            except TimeoutError:
                pass
        try:
            await asyncio.wait_for(self._flush(), timeout=FLUSH_ON_STOP_S)
        except TimeoutError:
            log.warning("alerts not sent before stopping: %s", ", ".join(sorted(self._pending)))

    def _due(self) -> list[str]:
        now = time.monotonic()
        return [
            kind
            for kind, pending in self._pending.items()
            if pending.count and now - self._last_sent.get(kind, -1e18) >= self.interval
        ]

    def _next_due(self) -> float | None:
        if not self._pending:
            return None
        now = time.monotonic()
        return max(0.05, min(self._last_sent.get(k, -1e18) + self.interval - now for k in self._pending))

    async def _flush(self) -> None:
        for kind in list(self._pending):
            await self._send(kind)

    async def _send(self, kind: str) -> None:
        pending = self._pending.pop(kind, None)
        if pending is None:
            return
        self._last_sent[kind] = time.monotonic()
        title, body = message(kind, pending)
        try:
            ok = await _in_daemon_thread(lambda: self.send(title, body))
        except Exception as exc:
            log.warning("could not send the alert %r: %s", title, exc)
            ok = False
        if ok:
            self.sent.inc()
            log.info("alert sent: %s", title)
        else:
            self.failed.inc()
            log.warning("could not send the alert %r to ALERT_URLS", title)


def _shortened(reason: str) -> str:
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 1] + "…"


async def _either(*events: asyncio.Event) -> None:
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


class OutageWatch:
    """Alerts when PostgreSQL or the ERP has been unreachable for ALERT_OUTAGE_SECONDS (once), and
    when it answers again (once), from what /metrics reports."""

    name = "outage watch"
    EVERY_S = 1.0

    def __init__(self, settings: Settings, health: Health, notify: Callable[[str, str], None]) -> None:
        self.after = settings.alert_outage_seconds
        self.health = health
        self.notify = notify
        self._down_since: dict[str, float] = {}
        self._alerted: set[str] = set()
        # A gauge reads 0 until first set: the ERP's only means something when pulls run.
        self.watched = [("database", "loadbay_database_up", "PostgreSQL")]
        if settings.epms_odbc_dsn.get_secret_value():
            self.watched.append(("erp", "loadbay_erp_up", "the ERP"))

    async def run(self, stop: asyncio.Event) -> None:
        """Look every second until `stop` is set."""
        while not stop.is_set():
            self.look(time.monotonic())
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.EVERY_S)
            except TimeoutError:
                pass

    def look(self, now: float) -> None:
        """Compare each gauge with what was seen before."""
        for what, gauge, label in self.watched:
            up = self.health.registry.get_sample_value(gauge)
            if up is None:
                continue
            if up == 0:
                since = self._down_since.setdefault(what, now)
                if now - since >= self.after and what not in self._alerted:
                    self._alerted.add(what)
                    self.notify(f"{what}_down", f"{label} has not answered for {now - since:.0f} s")
            else:
                since = self._down_since.pop(what, now)
                if what in self._alerted:
                    self._alerted.discard(what)
                    self.notify(f"{what}_up", f"{label} answers again after {now - since:.0f} s")
