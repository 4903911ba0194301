"""Set-based SQL lives in `sql/` as files; schema names from the settings are filled in quoted."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from app.schema import quote_ident
from app.settings import Settings

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"


@cache
def _read(relative: str) -> str:
    return (SQL_DIR / relative).read_text(encoding="utf-8")


def sql(relative: str, settings: Settings) -> str:
    """The statement(s) in `sql/<relative>` for the configured (validated) schema names."""
    return (
        _read(relative)
        .replace("{staging}", quote_ident(settings.staging_schema))
        .replace("{warehouse}", quote_ident(settings.warehouse_schema))
    )
