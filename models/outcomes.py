"""What happened to one file: the record every stage may read (the watcher counts it, the pipeline
runs after it, the ERP pull returns it) without knowing the loader."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# A ledger status (ingest.files.status), or what the loader did instead of loading: `skipped` (not
# a regular, complete file, or gone) and `busy` (another process holds this content).
FileStatus = Literal["loading", "loaded", "loaded_with_rejects", "duplicate", "failed", "skipped", "busy"]


@dataclass(frozen=True)
class FileOutcome:
    """What happened to one file: its status, ledger id, dataset, rows and where it went."""

    name: str
    status: FileStatus
    file_id: int | None = None
    dataset: str | None = None
    rows_loaded: int = 0
    rows_rejected: int = 0
    error: str | None = None
    moved_to: Path | None = None

    @property
    def failed(self) -> bool:
        """The file went to failed/."""
        return self.status == "failed"
