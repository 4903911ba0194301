"""Watch mode's long-running services side by side, started together and stopped together.

The file watcher, the ERP pull loop and the health probe are services today; schedules, the
DeTrack webhook listener and alerts join the same way: an object with a `name` and
`async run(stop)` that returns once `stop` is set and its work in hand is done (and, optionally,
`stopping()` to hear about the stop at once, e.g. to stop an ODBC read on a thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol, runtime_checkable

log = logging.getLogger(__name__)


class Service(Protocol):
    """A long-running part of watch mode."""

    name: str

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set, then finish what is in hand and return."""


@runtime_checkable
class Interruptible(Protocol):
    """A service that wants to hear of the stop at once (its run may be blocked on a thread)."""

    def stopping(self) -> None:
        """Hear of the stop at once (called when `stop` is set)."""


class Supervisor:
    """Runs services until `stop` is set, then gives them `grace` seconds to finish what they hold
    before cancelling the rest. A service that fails stops them all; its error is raised."""

    def __init__(self, services: list[Service], grace: float) -> None:
        self.services = services
        self.grace = grace

    async def run(self, stop: asyncio.Event) -> None:
        """Run every service until `stop` is set or one of them fails."""
        tasks = {asyncio.create_task(s.run(stop), name=s.name): s for s in self.services}
        stopped = asyncio.create_task(stop.wait())
        pending: set[asyncio.Task[object]] = {*tasks, stopped}
        failure: BaseException | None = None
        while failure is None and not stop.is_set():
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            failure = next((t.exception() for t in done if t in tasks and t.exception()), None)
        stop.set()
        for service in self.services:
            if isinstance(service, Interruptible):
                service.stopping()
        await self._finish(tasks)
        with contextlib.suppress(asyncio.CancelledError):
            await stopped
        if failure is not None:
            raise failure

    async def _finish(self, tasks: dict[asyncio.Task[None], Service]) -> None:
        running = [t for t in tasks if not t.done()]
        if running:
            _, late = await asyncio.wait(running, timeout=self.grace)
            for task in late:
                log.warning("stopping %s: it did not finish within %.0f s", tasks[task].name, self.grace)
                task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for task, result in zip(tasks, results, strict=True):
            if isinstance(result, Exception) and not task.cancelled():
                log.error("%s stopped with an error: %s", tasks[task].name, result)
