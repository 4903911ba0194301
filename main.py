"""loadbay: drop files into imports/, get typed PostgreSQL rows exactly once.

This module parses flags and calls one function per stage; exit codes: 0 all done,
1 done but some work failed, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

# Every command pays for what is imported here, and `--help` for everything up to parse_args:
# the stages, and what they pull in (SQLAlchemy, Alembic, watchdog, requests, matplotlib,
# pyodbc, prometheus_client), are imported where a flag needs them.
if TYPE_CHECKING:
    from app.db import Database
    from app.settings import Settings
    from models.datasets import DatasetRegistry

log = logging.getLogger("loadbay")

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
DEMO_DROPS = Path(__file__).parent / "examples" / "drops"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="main.py",
        description="Load CSV, JSON and NDJSON drops into PostgreSQL exactly once; build the warehouse, "
        "dispatch deliveries to DeTrack and publish analysis exports.",
        epilog="With no flag, watch IMPORTS_DIR. Settings come from the environment and .env "
        "(see .env.example). Exit codes: 0 all done, 1 some work failed, 2 bad usage or "
        "configuration.",
    )
    parser.add_argument(
        "--watch",
        nargs="?",
        const="",
        metavar="DIR",
        help="watch IMPORTS_DIR (or DIR) and load every completed drop until stopped "
        "(the default when no flag is given; SIGINT/SIGTERM stop cleanly)",
    )
    parser.add_argument(
        "--pull",
        action="store_true",
        help="read new and changed shipments and packages from the ERP over ODBC (EPMS_ODBC_DSN) "
        "and load them like a drop; in watch mode this happens on its own when EPMS_ODBC_DSN is set",
    )
    parser.add_argument(
        "--ingest",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="load the given files, or every pending file of a given folder, once, then exit",
    )
    parser.add_argument(
        "--pipeline",
        action="store_true",
        help="build the warehouse from staging: shipments, packages and half-hourly energy "
        "(incremental: only files not applied yet)",
    )
    parser.add_argument(
        "--dispatch",
        action="store_true",
        help="send eligible shipments to DeTrack as jobs assigned to vans, update changed ones and "
        "read delivery statuses back (needs DETRACK_API_KEY)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="with --dispatch: print the job payloads (personal data masked) and send nothing",
    )
    parser.add_argument(
        "--analysis",
        action="store_true",
        help="(re)create the analysis views and write exports: one CSV per view, PNG charts and "
        "report.html in EXPORTS_DIR",
    )
    parser.add_argument(
        "--status",
        action="store_true",
        help="print recent files and their outcome: status, rows, rejects, errors; and each stage's "
        "last run and when it is due next",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="copy the sample drops from examples/drops/ into the imports folder and run every stage "
        "on them (dispatch as a dry run unless DETRACK_API_KEY is set), then say where to look",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pydantic import ValidationError

    from app.datasets import load_registry
    from app.errors import ConfigError, DatabaseUnavailable
    from app.logging import setup_logging
    from app.settings import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = str(error["loc"][0]).upper() if error["loc"] else "settings"
            print(f"configuration error: {name}: {error['msg']}", file=sys.stderr)
        print("Fix the variable in the environment or .env (see .env.example).", file=sys.stderr)
        return EXIT_USAGE
    try:
        settings.ensure_folders()
        setup_logging(settings)
    except OSError as exc:
        print(
            f"cannot use {exc.filename}: {exc.strerror}. The folders IMPORTS_DIR, EXPORTS_DIR and LOGS_DIR "
            "must be writable by this user (in containers: chown 10001:10001 imports exports logs)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        registry = load_registry(settings)
        return asyncio.run(_run(args, settings, registry))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DatabaseUnavailable as exc:
        # A one-shot command does not wait for the server (the watcher does): it says so and
        # exits 1, as for any work that could not be done this time.
        hint = "" if exc.hint else ". Check that PostgreSQL is running and that DATABASE_URL points at it"
        print(f"database unavailable: {exc}{hint}", file=sys.stderr)
        return EXIT_SOME_FAILED
    except KeyboardInterrupt:
        return EXIT_SOME_FAILED


def _quiet_abandoned_cancel_requests(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    """When PostgreSQL vanishes mid-COPY, asyncpg leaves a request to cancel the COPY waiting for
    an answer on the dead connection (MagicStack/asyncpg#1356); it is dropped once unreachable.
    That is expected after an outage, so it is noted at debug level instead of as an error."""
    task = context.get("task")
    coro = getattr(task, "get_coro", lambda: None)()
    if (
        "pending" in str(context.get("message", ""))
        and getattr(coro, "__qualname__", "") == "Connection._cancel"
    ):
        log.debug("dropped asyncpg's cancel request for a lost connection")
        return
    loop.default_exception_handler(context)


async def _run(args: argparse.Namespace, settings: Settings, registry: DatasetRegistry) -> int:
    from app.db import Database, resolve_dsn
    from app.errors import ConfigError
    from app.migrate import ensure_schema

    asyncio.get_running_loop().set_exception_handler(_quiet_abandoned_cancel_requests)
    if args.dry_run and not args.dispatch:
        raise ConfigError("--dry-run goes with --dispatch", hint="Run: python main.py --dispatch --dry-run")
    one_shot = bool(
        args.ingest
        or args.demo
        or args.pull
        or args.status
        or args.pipeline
        or args.dispatch
        or args.analysis
    )
    watch = args.watch is not None or not one_shot
    dsn = await asyncio.to_thread(resolve_dsn, settings)
    # Ingest workers, pipeline workers, the puller's lock and load, the health probe, and
    # hands-free mode's stage runs, schedules and webhook requests.
    db = Database(dsn, max_size=settings.ingest_workers + settings.pipeline_workers + 8)

    async def prepare_database() -> None:
        await ensure_schema(db, settings, registry)

    try:
        if one_shot:
            await prepare_database()
        ingest_paths: list[Path] = list(args.ingest or [])
        if args.demo:
            ingest_paths.append(_prepare_demo(settings))
        code = EXIT_OK
        if args.pull:
            from services.pull import run_pull

            pulled = await run_pull(settings, registry, db)
            print(pulled.summary())
            code = max(code, EXIT_SOME_FAILED if pulled.failed else EXIT_OK)
        if ingest_paths:
            from services.ingest import run_ingest

            result = await run_ingest(settings, db, registry, ingest_paths)
            if result.failed:
                code = EXIT_SOME_FAILED
        if args.pipeline or args.demo:
            code = max(code, await _pipeline(settings, db))
        if args.dispatch or args.demo:
            from services.dispatch import run_dispatch
            from services.handsfree import dispatch_summary, recorded

            dry_run = args.dry_run or (args.demo and not settings.detrack_api_key.get_secret_value())
            dispatched = await recorded(
                db, "dispatch", "flag", lambda: run_dispatch(settings, db, dry_run=dry_run), dispatch_summary
            )
            print(dispatched.summary())
            code = max(code, EXIT_SOME_FAILED if dispatched.failed else EXIT_OK)
        if args.analysis or args.demo:
            from services.analysis import run_analysis
            from services.handsfree import analysis_summary, recorded

            analysed = await recorded(
                db, "analysis", "flag", lambda: run_analysis(settings, db), analysis_summary
            )
            print(analysed.summary())
        if args.status or args.demo:
            from services.status import run_status

            print((await run_status(db, settings)).render())
        if watch:
            from services.pull import Puller
            from services.watcher import run_watcher

            folder = Path(args.watch) if args.watch else settings.imports_dir
            puller = Puller(settings, registry, db) if settings.epms_odbc_dsn.get_secret_value() else None
            watched = await run_watcher(
                settings,
                db,
                registry,
                folder,
                _stop_event(),
                puller=puller,
                # Only a watcher on its own waits for the server to answer at start; after
                # one-shot stages the schema is in place already.
                prepare=None if one_shot else prepare_database,
            )
            code = max(code, EXIT_SOME_FAILED if watched.failed else EXIT_OK)
        if args.demo:
            print(
                f"\nDemo done. The drops are in {settings.imports_dir}/processed (and failed/). Open "
                f"{settings.exports_dir / 'report.html'}; the CSVs and charts are beside it."
            )
        return code
    finally:
        await db.close()


async def _pipeline(settings: Settings, db: Database) -> int:
    from app.errors import DatabaseUnavailable
    from services.handsfree import pipeline_summary, recorded
    from services.pipeline import record_failure, run_pipeline

    try:
        result = await recorded(db, "pipeline", "flag", lambda: run_pipeline(settings, db), pipeline_summary)
    except DatabaseUnavailable:
        raise
    except Exception as exc:
        log.exception("the pipeline failed; nothing of the failed step was written")
        await record_failure(db, exc)
        return EXIT_SOME_FAILED
    print(result.summary())
    return EXIT_OK


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _prepare_demo(settings: Settings) -> Path:
    """A fresh imports folder holding a copy of every sample drop."""
    folder = settings.imports_dir
    folder.mkdir(parents=True, exist_ok=True)
    for sample in sorted(DEMO_DROPS.iterdir()):
        if sample.is_file():
            shutil.copy2(sample, folder / sample.name)
    return folder


if __name__ == "__main__":
    sys.exit(main())
