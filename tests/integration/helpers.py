from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from app.db import Database, asyncpg_dsn
from app.settings import Settings
from models.datasets import DatasetRegistry
from services.ingest import IngestResult, run_ingest
from services.pipeline import PipelineResult, run_pipeline
from tests.pg import run

METER_HEADER = "meter_id,reading_at,register_kwh,power_w\n"
T = TypeVar("T")


def with_db(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    """`work` run with a Database on the settings' DATABASE_URL, closed afterwards."""

    async def go() -> T:
        db = Database(asyncpg_dsn(settings.database_url.get_secret_value()))
        try:
            return await work(db)
        finally:
            await db.close()

    return run(go())


def pipeline(settings: Settings) -> PipelineResult:
    return with_db(settings, lambda db: run_pipeline(settings, db))


def ingest(settings: Settings, *paths: Path, registry: DatasetRegistry | None = None) -> IngestResult:
    async def go() -> IngestResult:
        db = Database(asyncpg_dsn(settings.database_url.get_secret_value()))
        try:
            return await run_ingest(settings, db, registry or DatasetRegistry.from_toml({}), list(paths))
        finally:
            await db.close()

    return run(go())


def drop(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def meter_rows(n: int, meter: str = "M1", start_kwh: float = 100.0) -> str:
    lines = [
        f"{meter},2024-01-15T{(i * 10) // 60:02d}:{(i * 10) % 60:02d}:00Z,"
        f"{start_kwh + i * 0.5:.3f},{i * 10}\n"
        for i in range(n)
    ]
    return "".join(lines)
