"""Watch mode's ERP pulls: at once, then 1 s after a pull that brought rows, doubling while
nothing changes or the ERP does not answer, up to EPMS_PULL_SECONDS. The ERP being away never
stops the watcher; pulled files count like drops."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from app.db import is_transient
from app.errors import PullCancelled, TransientError
from app.settings import Settings
from models.outcomes import FileOutcome
from services.health import Health
from services.pull.schedule import PullSchedule

if TYPE_CHECKING:  # the package imports this module
    from services.pull import Puller

log = logging.getLogger(__name__)


class PullLoop:
    """Pulls the ERP until stopped; each pulled file's outcome goes to `on_outcome`."""

    name = "ERP pull"

    def __init__(
        self,
        settings: Settings,
        puller: Puller,
        on_outcome: Callable[[FileOutcome, float], Awaitable[None]],
        health: Health | None = None,
    ) -> None:
        self.settings = settings
        self.puller = puller
        self.on_outcome = on_outcome
        self.health = health
        # Set when loadbay stops: the ODBC read in hand (on a thread) stops at its next batch.
        self._cancel = threading.Event()

    def stopping(self) -> None:
        """Ask the pull in hand to stop at its next batch; it rolls back and keeps its watermark."""
        self._cancel.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Pull until `stop` is set."""
        log.info("pulling the ERP at most %.0f s apart", self.settings.epms_pull_seconds)
        schedule = PullSchedule(self.settings.epms_pull_seconds)
        while not stop.is_set():
            try:
                arrived, error = await self._pull_once()
            except PullCancelled:
                return
            if self.health is not None:
                self.health.erp(error is None)
            wait = schedule.next_wait(arrived)
            if error is not None:
                log.warning("ERP pull failed: %s; trying again in %.0f s", error, wait)
            try:
                await asyncio.wait_for(stop.wait(), timeout=wait)
            except TimeoutError:
                pass

    async def _pull_once(self) -> tuple[bool, str | None]:
        """One pull: whether rows arrived, and what went wrong (None: nothing)."""
        started = time.monotonic()
        try:
            result = await self.puller.pull(self._cancel)
        except PullCancelled:
            raise
        except TransientError as exc:  # PostgreSQL away, or another process moved the watermark
            return False, str(exc)
        except Exception as exc:
            if is_transient(exc):
                return False, f"PostgreSQL is not reachable ({exc})"
            log.exception("unexpected error while pulling the ERP")
            return False, str(exc)
        for outcome in result.outcomes:
            await self.on_outcome(outcome, time.monotonic() - started)
        return result.rows_arrived, result.error
