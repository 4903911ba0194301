"""`--pull`: new and changed ERP rows become a file that is loaded exactly like a drop.

One pull reads each ERP table (Shipment, then Package) once: the rows whose watermark column is
above the stored watermark are streamed into `imports/.pull/<dataset>-odbc-<UTC time>.ndjson`,
and that file goes through the loader with its dataset known and ledger source `odbc`. The new
watermark is written in the load's own transaction, so the rows and the watermark commit
together: a pull stopped anywhere (ERP gone mid-read, loadbay killed mid-load) leaves the
watermark where it was and the next pull reads the same rows again. Pulled files then sit in
`imports/processed/` like any drop.

Only one process pulls at a time (an advisory lock); another one skips its turn.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import asyncpg

from app.db import Database
from app.errorlog import log_error
from app.errors import ConfigError, ErpError, WatermarkMoved
from app.settings import Settings
from models.datasets import DatasetRegistry
from models.outcomes import FileOutcome
from services.ingest import Loader, Origin, find_unmoved_load, move_to_processed, set_moved
from services.pull import watermark
from services.pull.erp import Erp, Fetched, Table, check_query, driver_manager, quote_name
from services.pull.loop import PullLoop

__all__ = ["PullLoop", "PullResult", "Puller", "run_pull"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_PULL_LOCK_KEY = 0x6C62_7075_6C6C  # "lbpull": one puller at a time, across processes
SOURCE = "odbc"


@dataclass
class PullResult:
    """What one pull did: rows read per dataset, the files loaded, an error."""

    rows: dict[str, int] = field(default_factory=dict)
    outcomes: list[FileOutcome] = field(default_factory=list)
    error: str | None = None
    busy: bool = False

    @property
    def failed(self) -> bool:
        """The ERP could not be read, or a pulled file failed."""
        return self.error is not None or any(o.failed for o in self.outcomes)

    @property
    def rows_arrived(self) -> bool:
        """The pull loaded or rejected at least one row (the next pull comes soon)."""
        return any(o.rows_loaded or o.rows_rejected for o in self.outcomes)

    def summary(self) -> str:
        """The line --pull prints."""
        if self.busy:
            return "ERP pull skipped: another loadbay process is pulling right now."
        parts = []
        for dataset, rows in self.rows.items():
            outcome = next((o for o in self.outcomes if o.dataset == dataset), None)
            if outcome is None:
                parts.append(f"{dataset}: nothing new")
            elif outcome.failed:
                parts.append(
                    f"{dataset}: {_rows(rows)} read, load failed (#{outcome.file_id}: {outcome.error})"
                )
            else:
                rejected = f", {outcome.rows_rejected} rejected" if outcome.rows_rejected else ""
                parts.append(f"{dataset}: {_rows(outcome.rows_loaded)}{rejected} (#{outcome.file_id})")
        text = "ERP pull: " + ("; ".join(parts) if parts else "nothing read")
        return text + (". It failed: see the error above (and ingest.error_log)" if self.error else "")


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def tables(settings: Settings, registry: DatasetRegistry) -> list[Table]:
    """The ERP reads of a pull, from the EPMS_* settings (a custom query wins over a table)."""
    reads = (
        ("shipments", settings.epms_shipment_table, settings.epms_shipment_query, "EPMS_SHIPMENT_QUERY"),
        ("packages", settings.epms_package_table, settings.epms_package_query, "EPMS_PACKAGE_QUERY"),
    )
    found = []
    for dataset, table, query, variable in reads:
        if query.strip():
            select, label = check_query(query, variable), variable
        else:
            select, label = f"SELECT * FROM {quote_name(table)}", table
        found.append(Table(registry.get(dataset), select, label, settings.epms_watermark_column))
    return found


class Puller:
    """Reads the ERP's new and changed rows and loads them through the drop path; the watermark
    commits with the rows."""

    def __init__(self, settings: Settings, registry: DatasetRegistry, db: Database) -> None:
        self._connection_string = settings.epms_odbc_dsn.get_secret_value().strip()
        if not self._connection_string:
            raise ConfigError(
                "EPMS_ODBC_DSN is empty, so there is no ERP to pull from",
                hint="Set it to the ERP's ODBC connection string (see .env.example)",
            )
        driver_manager()
        self.settings = settings
        self.db = db
        self.tables = tables(settings, registry)
        self.loader = Loader(settings, registry, db)
        self.spool_dir = settings.imports_dir / ".pull"
        self._last_error: str | None = None

    async def pull(self, cancel: threading.Event | None = None) -> PullResult:
        """Read each table once and load what is new. ERP failures are returned, not raised;
        a PostgreSQL outage raises (DatabaseUnavailable), as for file loads."""
        async with self.db.connection() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _PULL_LOCK_KEY):
                return PullResult(busy=True)
            try:
                return await self._pull(conn, cancel or threading.Event())
            finally:
                try:
                    await conn.execute("SELECT pg_advisory_unlock($1)", _PULL_LOCK_KEY)
                except (asyncpg.InterfaceError, asyncpg.PostgresConnectionError, OSError):
                    pass  # the connection is gone, and its session's locks with it

    async def _pull(self, conn: asyncpg.Connection, cancel: threading.Event) -> PullResult:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        for leftover in sorted(self.spool_dir.glob("*.ndjson")):
            await self._settle(conn, leftover)
        result = PullResult()
        try:
            erp = await _off_loop(Erp, self._connection_string)
        except ErpError as exc:
            return await self._failed(conn, result, str(exc))
        try:
            for table in self.tables:
                outcome = await self._pull_table(conn, erp, table, cancel, result)
                if outcome is not None:
                    result.outcomes.append(outcome)
        except ErpError as exc:
            return await self._failed(conn, result, str(exc))
        finally:
            await _off_loop(erp.close)
        if self._last_error is not None:
            log.info("the ERP answers again")
            self._last_error = None
        return result

    async def _pull_table(
        self, conn: asyncpg.Connection, erp: Erp, table: Table, cancel: threading.Event, result: PullResult
    ) -> FileOutcome | None:
        name = table.dataset.name
        stored = await watermark.load(conn, name)
        after = stored.watermark if stored is not None and stored.source == table.source else None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        spool = self.spool_dir / f"{name}-odbc-{stamp}.ndjson"
        try:
            fetched = await _off_loop(erp.fetch, table, after, spool, cancel)
            result.rows[name] = fetched.rows
            if stored is not None and after is None:
                log.warning(
                    "%s were pulled from %s before, now from %s: every row was read again",
                    name,
                    stored.source,
                    table.source,
                )
            if fetched.ignored_columns:
                log.debug(
                    "%s: columns not in dataset %s, not pulled: %s",
                    table.label,
                    name,
                    fetched.ignored_columns,
                )
            if fetched.rows == 0:
                spool.unlink()
                return None
            log.info(
                "read %s of %s from %s after %s", _rows(fetched.rows), name, table.label, after or "the start"
            )
            origin = Origin(
                source=SOURCE,
                dataset=table.dataset,
                max_reject_ratio=1.0,  # a bad ERP row is a rejected row; the rest still load
                dedupe=False,
                root=self.settings.imports_dir,
                before_commit=functools.partial(self._advance, table, fetched, stored),
            )
            outcome = await self.loader.ingest(spool, origin=origin)
        except BaseException:
            await asyncio.shield(self._settle_quietly(spool))
            raise
        if outcome.failed:
            log.error("pulled %s failed to load; the watermark stays at %s", name, after or "the start")
        return outcome

    async def _advance(
        self,
        table: Table,
        fetched: Fetched,
        stored: watermark.Stored | None,
        conn: asyncpg.Connection,
        file_id: int,
    ) -> None:
        if fetched.watermark is None:  # every row's watermark was NULL: nothing to move to
            log.warning(
                "%s: no row has a %s value; they are pulled again next time",
                table.label,
                table.watermark_column,
            )
            return
        await watermark.advance(
            conn,
            table.dataset.name,
            table.source,
            fetched.watermark,
            file_id=file_id,
            rows=fetched.rows,
            expected_file_id=stored.file_id if stored is not None else None,
        )
        log.info("%s watermark now %s", table.dataset.name, fetched.watermark)

    async def _settle(self, conn: asyncpg.Connection, spool: Path) -> None:
        """A spool file left by an interrupted pull: if its load committed, finish its move to
        processed/; if not, delete it (the watermark did not move, so its rows come again)."""
        if not spool.exists():
            return
        file_id = await find_unmoved_load(conn, spool.name, SOURCE)
        if file_id is None:
            spool.unlink(missing_ok=True)
            log.info("removed %s: its pull did not finish, so its rows are read again", spool.name)
            return
        moved = move_to_processed(spool, file_id, self.settings.imports_dir)
        await set_moved(conn, file_id, str(moved))

    async def _settle_quietly(self, spool: Path) -> None:
        try:
            async with self.db.connection(timeout=5) as conn:
                await self._settle(conn, spool)
        except Exception as exc:  # the next pull settles it
            log.debug("left %s for the next pull to settle: %s", spool.name, exc)

    async def _failed(self, conn: asyncpg.Connection, result: PullResult, message: str) -> PullResult:
        result.error = message
        if message != self._last_error:  # one error_log row per streak, not one per retry
            await log_error(conn, "pull", message, {"tables": [t.label for t in self.tables]})
        self._last_error = message
        return result


async def run_pull(settings: Settings, registry: DatasetRegistry, db: Database) -> PullResult:
    """`--pull`: one pull of every ERP table."""
    try:
        result = await Puller(settings, registry, db).pull()
    except WatermarkMoved as exc:
        result = PullResult(error=str(exc))
    if result.error:
        log.error("ERP pull failed: %s", result.error)
    return result


async def _off_loop(work: Callable[..., T], *args: object) -> T:
    """Blocking ODBC work on a daemon thread of its own.

    asyncio.to_thread's pool threads are joined when loadbay exits, so a login or query the ERP
    never answers would hold up a stop for the whole driver timeout. A daemon thread does not:
    the pull is abandoned (its watermark stays) and the process ends on time."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():  # the pull may have been cancelled meanwhile
            outcome()

    def run() -> None:
        try:
            value = work(*args)
        except BaseException as exc:
            report = functools.partial(settle, functools.partial(future.set_exception, exc))
        else:
            report = functools.partial(settle, functools.partial(future.set_result, value))
        try:
            loop.call_soon_threadsafe(report)
        except RuntimeError:
            pass  # the event loop is closed: loadbay is exiting and nobody waits for this

    threading.Thread(target=run, name="erp", daemon=True).start()
    return await future
