"""Files on disk: which names are candidates, how they are read, and where they go after."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import hashlib
import json
import os
import signal
import stat
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from app.errors import FileStillOpen, FolderProblem

TEMPORARY_PATTERNS = ("*.part", "*.filepart", "*.tmp", "*.crdownload", "~$*")
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
    """A file's format (a `Format.kind` of services/ingest/formats.py) and whether it is gzipped."""

    kind: str
    gzip: bool


@dataclass(frozen=True)
class FileIdentity:
    """What a file was when it was hashed; used to notice it changing or being replaced."""

    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        """The identity in a stat result."""
        return cls(st.st_ino, st.st_size, st.st_mtime_ns)


def open_no_follow(path: Path) -> int:
    """Open for reading without following a link swapped in after the candidate check."""
    return os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))


def hash_fd(fd: int) -> tuple[str, FileIdentity]:
    """The SHA-256 of the open file and its identity before hashing."""
    digest = hashlib.sha256()
    before = FileIdentity.of(os.fstat(fd))
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, HASH_CHUNK):
        digest.update(chunk)
    os.lseek(fd, 0, os.SEEK_SET)
    return digest.hexdigest(), before


def still_there(path: Path, identity: FileIdentity) -> bool:
    """The file under `path` is still the one with `identity` (not moved, replaced or changed)."""
    try:
        return FileIdentity.of(os.lstat(path)) == identity
    except FileNotFoundError:
        return False


NAME_MAX = 255  # bytes in one file name on Linux file systems


def _fit(name: str, extra: int = 0) -> str:
    """`name`, shortened in its stem so that it plus `extra` bytes fit in a file name. A name with
    bytes that are not UTF-8 keeps them (Python holds them as surrogates)."""
    budget = NAME_MAX - extra
    raw = os.fsencode(name)
    if len(raw) <= budget:
        return name
    stem, dot, suffix = raw.partition(b".")
    tail = (dot + suffix)[: budget // 2]
    head = stem[: budget - len(tail)]
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return os.fsdecode(head + tail)
    # A UTF-8 name is cut between characters, never inside one.
    return head.decode(errors="ignore") + tail.decode(errors="ignore")


def _free_name(folder: Path, name: str, file_id: int, extra: int = 0) -> Path:
    """Where a file goes: its own name, or `STEM__<ledger id>.EXT` when that is taken."""
    target = folder / _fit(name, extra)
    if not os.path.lexists(target):
        return target
    stem, dot, suffix = name.partition(".")
    return folder / _fit(f"{stem}__{file_id}{dot}{suffix}", extra)


def safe_folder(folder: Path) -> Path:
    """`folder`, created if need be, once it is known to be a real folder of this user's.

    A link would carry files somewhere else, and a folder another user owns (the SFTP user owns
    imports/) could be one: loadbay moves files only into folders it owns, links never followed.
    """
    try:
        os.mkdir(folder, 0o755)
    except FileExistsError:
        pass
    except OSError as exc:
        raise FolderProblem(
            f"cannot create {folder}: {exc.strerror}",
            hint="Make the folder writable for the user loadbay runs as; files wait in imports/",
        ) from None
    st = os.lstat(folder)
    if stat.S_ISLNK(st.st_mode):
        raise FolderProblem(
            f"{folder} is a symbolic link; loadbay never moves files through links",
            hint="Replace it with a real folder (or remove it: loadbay creates it); files wait in imports/",
        )
    if not stat.S_ISDIR(st.st_mode):
        raise FolderProblem(
            f"{folder} is not a folder", hint="Remove it (loadbay creates the folder); files wait in imports/"
        )
    if st.st_uid != os.geteuid():
        raise FolderProblem(
            f"{folder} belongs to user id {st.st_uid}, not to loadbay's ({os.geteuid()})",
            hint=f"Give it to loadbay's user (chown {os.geteuid()}) or remove it; files wait in imports/",
        )
    return folder


def check_state_folders(imports: Path) -> None:
    """Raise FolderProblem unless imports/processed and imports/failed are safe to move into."""
    for name in ("processed", "failed"):
        if os.path.lexists(imports / name):  # made when first needed
            safe_folder(imports / name)


def move_to_processed(path: Path, file_id: int, root: Path | None = None) -> Path:
    """Into `processed/<UTC day>/` of `root` (the file's own folder unless given)."""
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    folder = safe_folder(safe_folder((root or path.parent) / "processed") / day)
    return _rename(path, _free_name(folder, path.name, file_id))


def move_to_failed(path: Path, file_id: int, error: dict[str, object], root: Path | None = None) -> Path:
    """Into `failed/` of `root` (the file's own folder unless given), with an `.error.json` beside it."""
    folder = safe_folder((root or path.parent) / "failed")
    target = _free_name(folder, path.name, file_id, extra=len(".error.json"))
    sidecar = target.with_name(target.name + ".error.json")
    tmp = folder / f".{file_id}.error.json.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # left by a crash; unlinking a planted link removes the link only
    # O_EXCL|O_NOFOLLOW: the sidecar is written here and nowhere else.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(json.dumps(error, indent=2, default=str) + "\n")
    os.replace(tmp, sidecar)
    return _rename(path, target)


def _rename(source: Path, target: Path) -> Path:
    try:
        os.rename(source, target)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            raise FolderProblem(
                f"{target.parent} must be on the same file system as {source.parent}",
                hint="Mount imports/ as one volume; files wait in imports/",
            ) from exc
        if exc.filename is not None and os.path.lexists(source):
            raise FolderProblem(
                f"cannot move {display_name(source.name)} into {target.parent}: {exc.strerror}",
                hint="Check the folder's permissions and free space; files wait in imports/",
            ) from exc
        raise
    return target


def display_name(name: str) -> str:
    """A file name fit for the ledger and the logs: bytes that are not UTF-8 (kept by Python as
    surrogates) are shown as \\xNN escapes; the file on disk keeps its own name."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# Linux file leases (fcntl(2)); Python's fcntl module has F_SETLEASE from 3.9 on Linux only.
_F_SETLEASE = getattr(fcntl, "F_SETLEASE", None)


def hold_read_lease(fd: int) -> bool:
    """Take a read lease on `fd` (open read-only), proof that no process has the file open for
    writing; raise FileStillOpen when one has. While the lease is held, a process that opens the
    file for writing waits (up to /proc/sys/fs/lease-break-time) until loadbay lets go, so the
    bytes cannot change between the load's last check and the move. The lease ends when `fd` is
    closed.

    False when the kernel cannot tell: not Linux, a file system without leases (NFS, some FUSE
    mounts), or a file that belongs to another user while loadbay lacks CAP_LEASE. Then the
    size, mtime and inode checks alone guard the load.
    """
    if _F_SETLEASE is None:
        return False
    try:
        fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EBUSY):
            raise FileStillOpen(
                "another process still has the file open for writing",
                hint="It is taken once the writer closes it",
            ) from None
        return False
    return True


def ignore_lease_breaks() -> None:
    """A writer opening a leased file makes the kernel send SIGIO, whose default action ends the
    process. loadbay lets go of its leases by itself (within the load), so the signal is ignored."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGIO, signal.SIG_IGN)


def unchanged_since_hashed(path: Path, fd: int, identity: FileIdentity) -> bool:
    """The file under `path` is still the one hashed: same inode, size and mtime, by name and by
    descriptor (a writer that appended or rewrote it changed size or mtime)."""
    if FileIdentity.of(os.fstat(fd)) != identity:
        return False
    return still_there(path, identity)
