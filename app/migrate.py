"""Apply Alembic migrations and synchronise staging tables; safe when many processes start."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config

from app.settings import Settings
from models.datasets import DatasetRegistry

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def migrate(dsn: str, settings: Settings, registry: DatasetRegistry) -> None:
    """Bring the database to the newest schema. Blocking: call it outside the event loop."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes.update(dsn=dsn, settings=settings, registry=registry)
    command.upgrade(config, "head")
    log.debug("database schema is current")
