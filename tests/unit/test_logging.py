"""Log lines: text for people, one JSON object a line with LOG_FORMAT=json."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from app.logging import setup_logging
from app.settings import Settings


@pytest.fixture(autouse=True)
def _restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_format_is_one_object_a_line_with_extras(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging(Settings(_env_file=None, logs_dir=tmp_path, log_format="json"))

    logging.getLogger("services.ingest.loader").info(
        "loaded %s (#%d)", "meter_a.csv", 7, extra={"file_id": 7}
    )

    line = capsys.readouterr().out.strip()
    entry = json.loads(line)
    assert (entry["level"], entry["logger"], entry["message"], entry["file_id"]) == (
        "INFO",
        "services.ingest.loader",
        "loaded meter_a.csv (#7)",
        7,
    )
    assert entry["time"].endswith("+00:00")
    assert json.loads((tmp_path / "loadbay.log").read_text().strip())["message"] == "loaded meter_a.csv (#7)"


def test_text_format_names_the_level_and_logger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(Settings(_env_file=None, logs_dir=tmp_path))

    logging.getLogger("services.watcher").warning("%s will be tried again in %d s", "x.csv", 2)

    assert (
        capsys.readouterr()
        .out.rstrip()
        .endswith("WARNING services.watcher: x.csv will be tried again in 2 s")
    )
