"""The bytes of one file, read once per pass: hashed on the way, decompressed, progress logged."""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import time
import zlib
from typing import IO

from app.errors import FileChanged, MalformedFile
from services.ingest.files import FileFormat

log = logging.getLogger(__name__)

READ_SIZE = 1 << 20
PROGRESS_EVERY_S = 10.0


class HashingReader(io.RawIOBase):
    """Raw reads from an fd that hash what they hand out and log progress on long files."""

    def __init__(self, fd: int, size: int, label: str) -> None:
        super().__init__()
        os.lseek(fd, 0, os.SEEK_SET)
        self._fd = fd
        self._size = size
        self._label = label
        self._digest = hashlib.sha256()
        self.bytes_read = 0
        self._last_report = time.monotonic()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = os.read(self._fd, len(buffer))
        n = len(data)
        buffer[:n] = data
        self._digest.update(data)
        self.bytes_read += n
        now = time.monotonic()
        if self._size and now - self._last_report >= PROGRESS_EVERY_S:
            self._last_report = now
            log.info(
                "%s: %.0f%% read (%.1f of %.1f MB)",
                self._label,
                100 * self.bytes_read / self._size,
                self.bytes_read / 1e6,
                self._size / 1e6,
            )
        return n

    def verify(self, sha256: str) -> None:
        """Raise FileChanged unless the bytes read are exactly the bytes that were hashed."""
        if self.bytes_read != self._size or self._digest.hexdigest() != sha256:
            raise FileChanged(
                f"{self._label} changed while it was loaded",
                hint="It was still being written; it will be loaded once it is complete",
            )


class Stream:
    """The decompressed content of a file, read by lines (robust path) or blocks (COPY)."""

    def __init__(self, fd: int, size: int, label: str, fmt: FileFormat) -> None:
        self.raw = HashingReader(fd, size, label)
        buffered = io.BufferedReader(self.raw, buffer_size=READ_SIZE)
        self._inner: IO[bytes] = (
            gzip.GzipFile(fileobj=buffered, mode="rb") if fmt.gzip else buffered  # type: ignore[assignment]
        )

    def read(self, n: int = READ_SIZE) -> bytes:
        try:
            return self._inner.read(n)
        except (OSError, EOFError, zlib.error) as exc:
            raise _damaged(exc) from exc

    def readline(self, limit: int) -> bytes:
        """One line with its b"\\n", or `limit` bytes of a longer one (the caller checks)."""
        try:
            return self._inner.readline(limit)
        except (OSError, EOFError, zlib.error) as exc:
            raise _damaged(exc) from exc

    def drain(self) -> None:
        """Read to the end, so that the hash check covers the whole file."""
        while self.read(READ_SIZE):
            pass

    def verify(self, sha256: str) -> None:
        self.drain()
        self.raw.verify(sha256)


def _damaged(exc: BaseException) -> MalformedFile:
    return MalformedFile(
        f"the gzip data is damaged ({exc})", hint="Compress the file again and send it again"
    )
