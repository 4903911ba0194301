"""The head revision start-up compares with, known without Alembic, is Alembic's own head."""

from __future__ import annotations

import re

from alembic.config import Config
from alembic.script import ScriptDirectory

from app.migrate import MIGRATIONS_DIR, VERSIONS_DIR, head_revision


def test_head_revision_from_file_names_is_alembics_head() -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert head_revision() == ScriptDirectory.from_config(config).get_current_head()


def test_every_migration_file_is_named_after_its_revision() -> None:
    files = sorted(VERSIONS_DIR.glob("*.py"))
    assert files
    for path in files:
        declared = re.search(r'^revision = "([^"]+)"$', path.read_text(encoding="utf-8"), re.MULTILINE)
        assert declared is not None, path.name
        assert path.name.startswith(declared.group(1) + "_"), path.name
