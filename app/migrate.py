"""Apply Alembic migrations and synchronise staging tables; safe when many processes start."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config

from app.db import database_problem
from app.settings import Settings
from models.datasets import DatasetRegistry

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def migrate(dsn: str, settings: Settings, registry: DatasetRegistry) -> None:
    """Bring the database to the newest schema. Blocking: call it outside the event loop.

    This is the first connection every command makes, so a wrong DATABASE_URL or a server that
    is away surfaces here: as ConfigError or DatabaseUnavailable, never as a driver's traceback.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes.update(dsn=dsn, settings=settings, registry=registry)
    try:
        command.upgrade(config, "head")
    except Exception as exc:
        problem = database_problem(exc, dsn)
        if problem is None:
            raise
        raise problem from exc
    log.debug("database schema is current")
