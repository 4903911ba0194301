"""Files on disk: which names are candidates, how they are read, and where they go after."""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from app.errors import UnsupportedFormat

TEMPORARY_PATTERNS = ("*.part", "*.filepart", "*.tmp", "*.crdownload", "~$*")
FORMATS = {".csv": "csv", ".json": "json", ".ndjson": "ndjson", ".jsonl": "ndjson"}
HASH_CHUNK = 1 << 20


def is_candidate_name(name: str) -> bool:
    """Hidden and temporary names are never taken (DESIGN §3.1)."""
    lowered = name.lower()
    return not (name.startswith(".") or any(fnmatch.fnmatchcase(lowered, p) for p in TEMPORARY_PATTERNS))


def is_regular_file(path: Path) -> bool:
    """A plain file, not a folder, link, device or pipe; links are never followed."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


@dataclass(frozen=True)
class FileFormat:
    kind: str  # csv, json or ndjson
    gzip: bool


def file_format(name: str) -> FileFormat:
    lowered = name.lower()
    compressed = lowered.endswith(".gz")
    base = lowered[:-3] if compressed else lowered
    suffix = os.path.splitext(base)[1]
    if suffix not in FORMATS:
        shown = suffix or "(no extension)"
        raise UnsupportedFormat(
            f"{shown} files are not read by loadbay",
            hint="Drop .csv, .json, .ndjson or .jsonl files, optionally gzipped (.gz)",
            file_name=name,
        )
    return FileFormat(FORMATS[suffix], compressed)


@dataclass(frozen=True)
class FileIdentity:
    """What a file was when it was hashed; used to notice it changing or being replaced."""

    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_ino, st.st_size, st.st_mtime_ns)


def open_no_follow(path: Path) -> int:
    """Open for reading without following a link swapped in after the candidate check."""
    return os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))


def hash_fd(fd: int) -> tuple[str, FileIdentity]:
    digest = hashlib.sha256()
    before = FileIdentity.of(os.fstat(fd))
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, HASH_CHUNK):
        digest.update(chunk)
    os.lseek(fd, 0, os.SEEK_SET)
    return digest.hexdigest(), before


def still_there(path: Path, identity: FileIdentity) -> bool:
    try:
        return FileIdentity.of(os.lstat(path)) == identity
    except FileNotFoundError:
        return False


NAME_MAX = 255  # bytes in one file name on Linux file systems


def _fit(name: str, extra: int = 0) -> str:
    """`name`, shortened in its stem so that it plus `extra` bytes fit in a file name."""
    budget = NAME_MAX - extra
    if len(name.encode()) <= budget:
        return name
    stem, dot, suffix = name.partition(".")
    tail = (dot + suffix).encode()[: budget // 2].decode(errors="ignore")
    head = stem.encode()[: budget - len(tail.encode())].decode(errors="ignore")
    return head + tail


def _free_name(folder: Path, name: str, file_id: int, extra: int = 0) -> Path:
    """Where a file goes: its own name, or `STEM__<ledger id>.EXT` when that is taken."""
    target = folder / _fit(name, extra)
    if not target.exists():
        return target
    stem, dot, suffix = name.partition(".")
    return folder / _fit(f"{stem}__{file_id}{dot}{suffix}", extra)


def move_to_processed(path: Path, file_id: int, root: Path | None = None) -> Path:
    """Into `processed/<UTC day>/` of `root` (the file's own folder unless given)."""
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    folder = (root or path.parent) / "processed" / day
    folder.mkdir(parents=True, exist_ok=True)
    return _rename(path, _free_name(folder, path.name, file_id))


def move_to_failed(path: Path, file_id: int, error: dict[str, object], root: Path | None = None) -> Path:
    """Into `failed/` of `root` (the file's own folder unless given), with an `.error.json` beside it."""
    folder = (root or path.parent) / "failed"
    folder.mkdir(parents=True, exist_ok=True)
    target = _free_name(folder, path.name, file_id, extra=len(".error.json"))
    sidecar = target.with_name(target.name + ".error.json")
    tmp = folder / f".{file_id}.error.json.tmp"
    tmp.write_text(json.dumps(error, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, sidecar)
    return _rename(path, target)


def _rename(source: Path, target: Path) -> Path:
    try:
        os.rename(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        raise OSError(f"{target.parent} must be on the same filesystem as {source.parent}") from exc
    return target
