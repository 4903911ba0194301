"""PROCESSED_RETENTION_DAYS: remove `imports/processed/YYYY-MM-DD/` folders older than N days, at
start and once a day. `failed/` is never touched: a person must look at those files.

The ledger keeps each file's hash, so a removed file dropped again is still a `duplicate`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

log = logging.getLogger(__name__)

EVERY_S = 24 * 3600.0


@dataclass(frozen=True)
class Removed:
    """A day folder removed: its path, files and bytes."""

    folder: Path
    files: int
    bytes: int


def expired_days(processed: Path, days: int, today: date) -> list[Path]:
    """Day folders of `processed` older than `days` days (named for a UTC day, as the loader
    names them); anything else there (other names, files, links) is left alone."""
    cutoff = today - timedelta(days=days)
    try:
        entries = list(os.scandir(processed))
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        try:
            day = date.fromisoformat(entry.name)
        except ValueError:
            continue
        if len(entry.name) == 10 and entry.is_dir(follow_symlinks=False) and day < cutoff:
            found.append(Path(entry.path))
    return sorted(found)


def remove_day(folder: Path) -> Removed:
    """Remove one day folder, counting what was in it."""
    files = size = 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                size += os.lstat(os.path.join(root, name)).st_size
                files += 1
            except OSError:
                pass
    shutil.rmtree(folder)
    return Removed(folder, files, size)


def apply_retention(imports: Path, days: int, today: date) -> list[Removed]:
    """Remove what is expired in `imports/processed`; a folder that cannot be removed is logged
    and tried again next time."""
    removed = []
    for folder in expired_days(imports / "processed", days, today):
        try:
            removed.append(remove_day(folder))
        except OSError as exc:
            log.warning("retention: could not remove %s: %s", folder, exc)
            continue
        gone = removed[-1]
        log.info(
            "retention: removed %s (%d files, %d bytes; older than %d days)",
            folder,
            gone.files,
            gone.bytes,
            days,
        )
    return removed


class Retention:
    """The retention sweep as a watch-mode service."""

    name = "retention"

    def __init__(self, imports: Path, days: int) -> None:
        self.imports = imports
        self.days = days

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep at start and every 24 hours until `stop` is set."""
        while not stop.is_set():
            today = datetime.now(UTC).date()
            removed = await asyncio.to_thread(apply_retention, self.imports, self.days, today)
            if removed:
                log.info(
                    "retention: %d day folder(s) of processed/ removed, %d bytes",
                    len(removed),
                    sum(r.bytes for r in removed),
                )
            try:
                await asyncio.wait_for(stop.wait(), timeout=EVERY_S)
            except TimeoutError:
                pass
