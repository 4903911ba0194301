"""The bytes of one file, read once per pass: hashed on the way, decompressed, progress logged."""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import logging
import os
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

from app.errors import EncodingError, FileChanged, MalformedFile
from services.ingest.files import FileFormat

log = logging.getLogger(__name__)

READ_SIZE = 1 << 20
PROGRESS_EVERY_S = 10.0


class HashingReader(io.RawIOBase):
    """Raw reads from an fd that hash what they hand out (unless told not to) and log progress on
    long files."""

    def __init__(self, fd: int, size: int, label: str, hashed: bool = True) -> None:
        super().__init__()
        self._fd = fd
        self.size = size
        self._label = label
        self.hashed = hashed
        self._digest = hashlib.sha256()
        self.bytes_read = 0
        self._last_report = time.monotonic()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        # preadv: several readers of one descriptor (a probe and the load) keep their own position.
        n = os.preadv(self._fd, [buffer], self.bytes_read)  # straight into the buffer
        if self.hashed:
            self._digest.update(memoryview(buffer)[:n])
        self.bytes_read += n
        now = time.monotonic()
        if self.size and now - self._last_report >= PROGRESS_EVERY_S:
            self._last_report = now
            log.info(
                "%s: %.0f%% read (%.1f of %.1f MB)",
                self._label,
                100 * self.bytes_read / self.size,
                self.bytes_read / 1e6,
                self.size / 1e6,
            )
        return n

    def verify(self, sha256: str) -> None:
        """Raise FileChanged unless the bytes read are exactly the bytes that were hashed."""
        if self.bytes_read != self.size or (self.hashed and self._digest.hexdigest() != sha256):
            raise FileChanged(
                f"{self._label} changed while it was loaded",
                hint="It was still being written; it will be loaded once it is complete",
            )


class Stream:
    """The decompressed content of a file, read by lines (robust path) or blocks (COPY)."""

    def __init__(self, fd: int, size: int, label: str, fmt: FileFormat, hashed: bool = True) -> None:
        self._args = (fd, size, label, fmt, hashed)
        self.raw = HashingReader(fd, size, label, hashed)
        buffered = io.BufferedReader(self.raw, buffer_size=READ_SIZE)
        self._inner: IO[bytes] = buffered
        if fmt.gzip:
            # GzipFile buffers 8 KiB: a buffer of READ_SIZE on top lets peek() see a whole line
            # (line ends are told from the first line) and a run of blank lines at a time.
            unzipped = gzip.GzipFile(fileobj=buffered, mode="rb")
            self._inner = io.BufferedReader(unzipped, buffer_size=READ_SIZE)
        self.cr_line_ends = False
        self.transcoded_from: str | None = None

    def read(self, n: int = READ_SIZE) -> bytes:
        """Up to `n` bytes of the (decompressed) content."""
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

    def peek(self, n: int) -> bytes:
        """Up to `n` bytes from the start of what is left, without consuming them."""
        try:
            return self._inner.peek(n)[:n]  # type: ignore[attr-defined,no-any-return]
        except (OSError, EOFError, zlib.error) as exc:
            raise _damaged(exc) from exc

    def read_cr_as_lf(self) -> None:
        """From here on, every CR reads as LF: the file ends its lines with CR alone (old Mac,
        some Excel exports), and every reader (COPY, the lines, the csv module) then sees LF."""
        if not self.cr_line_ends:
            self.cr_line_ends = True
            self._inner = io.BufferedReader(_CrAsLf(self._inner), buffer_size=READ_SIZE)

    def transcode(self, encoding: str) -> None:
        """From here on, the content reads as UTF-8: the file is in `encoding`, which is not
        ASCII-compatible (UTF-16, UTF-32), and every reader after this one splits lines on b"\\n".
        A byte-order mark is dropped."""
        from services.ingest.csv_dialect import Transcoder  # the dialect module builds on this one

        if self.transcoded_from is None:
            self.transcoded_from = encoding
            transcoder = Transcoder(self._inner, encoding, self._args[2])
            self._inner = io.BufferedReader(transcoder, buffer_size=READ_SIZE)

    def skip_line_ends(self) -> int:
        """Consume the blank lines that follow (whole lines of CR and LF bytes) block by block,
        not one Python iteration each; returns how many lines were skipped."""
        lines = 0
        while block := self.peek(READ_SIZE):
            run = len(block) - len(block.lstrip(b"\r\n"))
            last = block.rfind(b"\n", 0, run)  # a CR that starts the next line is that line's
            if last < 0:
                break
            lines += block.count(b"\n", 0, last + 1)
            self.read(last + 1)
            if last + 1 < len(block):
                break
        return lines

    def reopen(self) -> Stream:
        """A second, independent reader of the same file from its start (transcoded as this one
        is; line ends are told again from the first line)."""
        stream = Stream(*self._args)
        if self.transcoded_from is not None:
            stream.transcode(self.transcoded_from)
        return stream

    def drain(self) -> None:
        """Read to the end, so that the hash check covers the whole file."""
        while self.read(READ_SIZE):
            pass

    def verify(self, sha256: str) -> None:
        """Read to the end and raise FileChanged unless the bytes are the ones hashed (when the
        stream hashes: see Source.leased)."""
        if self.raw.hashed:
            self.drain()
            self.raw.verify(sha256)


class _CrAsLf(io.RawIOBase):
    """Another reader's bytes with CR replaced by LF."""

    def __init__(self, inner: IO[bytes]) -> None:
        super().__init__()
        self._inner = inner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(buffer)).replace(b"\r", b"\n")
        buffer[: len(data)] = data
        return len(data)


def _damaged(exc: BaseException) -> MalformedFile:
    return MalformedFile(
        f"the gzip data is damaged ({exc})", hint="Compress the file again and send it again"
    )


def numbered_lines(
    readline: Callable[[int], bytes], limit: int, label: str, hint: str, line_no: int = 0
) -> Iterator[tuple[int, bytes]]:
    """The lines `readline` gives, numbered on from `line_no`; one longer than `limit` bytes
    means the file is not what it claims to be."""
    while raw := readline(limit + 1):
        line_no += 1
        if len(raw) > limit:
            raise line_too_long(line_no, limit, label, hint)
        yield line_no, raw


def line_too_long(line_no: int, limit: int, label: str, hint: str) -> MalformedFile:
    """The error for a line longer than `limit` bytes."""
    return MalformedFile(
        f"line {line_no} is longer than {limit >> 20} MiB", hint=hint, file_name=label, line_no=line_no
    )


def decode_line(raw: bytes, encoding: str, line_no: int, label: str) -> str:
    """A line as text in `encoding`; EncodingError naming the byte, line and position."""
    codec = "utf-8-sig" if line_no == 1 and codecs.lookup(encoding).name == "utf-8" else encoding
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as exc:
        byte = raw[exc.start : exc.start + 1].hex()
        raise EncodingError(
            f"byte 0x{byte} at line {line_no}, position {exc.start + 1}, is not valid {encoding}",
            hint=(
                "If the file uses another encoding, set `encoding` for this dataset in "
                'datasets.toml (e.g. encoding = "cp1252"); a binary file cannot be loaded'
            ),
            file_name=label,
            line_no=line_no,
        ) from None


@dataclass(frozen=True)
class Source:
    """A claimed file as a format reads it: its open descriptor, what was hashed, and its name."""

    fd: int
    size: int
    sha256: str
    label: str
    fmt: FileFormat
    # A read lease is held on `fd`: no process can have opened the file for writing since before
    # it was hashed (services/ingest/files.py, hold_read_lease), so the bytes are not hashed again.
    # (Hashing again cost 0.03 s of CPU a million rows: a tenth of a CSV load's own work.)
    leased: bool = False

    def stream(self) -> Stream:
        """The content from the start, hashed on the way unless leased (`Stream.verify` checks it)."""
        return Stream(self.fd, self.size, self.label, self.fmt, hashed=not self.leased)

    def random_access(self) -> PositionalReader:
        """The file as a seekable binary file (a zip, a Parquet footer), read with pread."""
        return PositionalReader(self.fd, self.size)


class PositionalReader(io.RawIOBase):
    """A seekable, read-only file over a descriptor that others read too: every read is a pread
    at this reader's own position, so the descriptor's offset is never moved."""

    def __init__(self, fd: int, size: int) -> None:
        super().__init__()
        self._fd = fd
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = os.pread(self._fd, min(len(buffer), max(0, self._size - self._pos)), self._pos)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self._size - self._pos)
        data = os.pread(self._fd, min(size, max(0, self._size - self._pos)), self._pos)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)
