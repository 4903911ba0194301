"""Ingest: files in a drop folder become typed staging rows, exactly once.

`run_ingest` is the `--ingest` entry point; the watcher calls the same `Loader` for each file.
This package's names below are its interface to the other stages (the watcher, the ERP pull);
they import nothing else from it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from app.db import Database
from app.errors import LoadbayError
from app.settings import Settings
from models.datasets import DatasetRegistry
from models.outcomes import FileOutcome
from services.ingest.claim import Origin
from services.ingest.files import check_state_folders, display_name, is_candidate_name, move_to_processed
from services.ingest.ledger import find_unmoved_load, set_moved
from services.ingest.loader import Loader

__all__ = [
    "IngestResult",
    "Loader",
    "Origin",
    "check_state_folders",
    "display_name",
    "find_unmoved_load",
    "is_candidate_name",
    "move_to_processed",
    "pending_files",
    "run_ingest",
    "set_moved",
]

log = logging.getLogger(__name__)


@dataclass
class IngestResult:
    """What an --ingest run did: one outcome a file."""

    outcomes: list[FileOutcome] = field(default_factory=list)

    @property
    def failed(self) -> int:
        """How many files failed."""
        return sum(o.failed for o in self.outcomes)

    def count(self, status: str) -> int:
        """How many files ended with `status`."""
        return sum(o.status == status for o in self.outcomes)


def pending_files(folder: Path) -> list[Path]:
    """The candidates waiting in a drop folder, oldest first (links and sub-folders excluded).

    Other loaders may move files out meanwhile: a file gone by the time it is looked at is left
    out."""
    found: list[tuple[int, str, Path]] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if not is_candidate_name(entry.name):
                continue
            try:
                if entry.is_file(follow_symlinks=False):
                    found.append(
                        (entry.stat(follow_symlinks=False).st_mtime_ns, entry.name, Path(entry.path))
                    )
            except FileNotFoundError:
                continue
    return [path for _, _, path in sorted(found)]


def expand(paths: list[Path]) -> list[Path]:
    """The given paths, each folder replaced by its pending files."""
    files: list[Path] = []
    for path in paths:
        files.extend(pending_files(path) if path.is_dir() and not path.is_symlink() else [path])
    return files


async def run_ingest(
    settings: Settings, db: Database, registry: DatasetRegistry, paths: list[Path]
) -> IngestResult:
    """Load the given files (or every pending file of the given folders) once, in order."""
    loader = Loader(settings, registry, db)
    result = IngestResult()
    files = expand(paths)
    folders = {path for path in paths if path.is_dir() and not path.is_symlink()}
    for folder in sorted(folders | {path.parent for path in files}):
        check_state_folders(folder)  # a link or a stranger's folder: refuse before loading anything
    for path in files:
        if not path.exists() and not path.is_symlink():
            log.error("%s does not exist", path)
            result.outcomes.append(FileOutcome(path.name, "failed", error="no such file"))
            continue
        name = display_name(path.name)
        try:
            outcome = await loader.ingest(path)
        except Exception as exc:  # the file stays where it is; the next run tries again
            log.error(
                "could not load %s, it stays in place: %s",
                name,
                exc,
                exc_info=not isinstance(exc, LoadbayError),
            )
            outcome = FileOutcome(name, "failed", error=str(exc))
        if outcome.status in ("skipped", "busy"):
            log.warning("skipped %s: %s", name, outcome.error)
        result.outcomes.append(outcome)
    return result
