"""How a delimited text file is written: its encoding, delimiter, quote and number style.

Declared in the dataset or found in the file: a byte-order mark decides the encoding by itself
(UTF-8, UTF-16 LE/BE, UTF-32 LE/BE), and the header line the delimiter (`,` `;` tab `|`, the one
that splits it most, outside quotes). An encoding that is not ASCII-compatible (UTF-16, UTF-32)
is transcoded to UTF-8 as the file streams, so every reader after it, COPY included, sees UTF-8.
"""

from __future__ import annotations

import codecs
import io
from dataclasses import dataclass
from typing import IO

from app.errors import EncodingError
from models.datasets import DatasetSpec, is_ascii_compatible

DELIMITERS = (",", ";", "\t", "|")
READ_SIZE = 1 << 20

# Longest first: the UTF-32 LE mark begins with the UTF-16 LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


@dataclass(frozen=True)
class Dialect:
    """How a delimited file separates and quotes its fields."""

    delimiter: str = ","
    quote: str = '"'

    @classmethod
    def of(cls, dataset: DatasetSpec) -> Dialect:
        """The dialect a dataset declares (`,` and `"` unless it says otherwise)."""
        return cls(dataset.delimiter or ",", dataset.quote)

    @property
    def is_default(self) -> bool:
        """Comma-separated with double quotes: the byte-level lane can read it."""
        return self.delimiter == "," and self.quote == '"'


def bom_encoding(head: bytes) -> str | None:
    """The encoding a byte-order mark at the start of `head` names, if there is one."""
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return encoding
    return None


def sniff_delimiter(header: str, quote: str = '"') -> str:
    """The delimiter that splits the header line most often outside quotes; `,` on a tie or
    when none does (a one-column file)."""
    counts = dict.fromkeys(DELIMITERS, 0)
    inside = False
    for char in header:
        if char == quote:
            inside = not inside
        elif not inside and char in counts:
            counts[char] += 1
    best = max(DELIMITERS, key=lambda d: counts[d])
    tied = [d for d in DELIMITERS if counts[d] == counts[best]]
    return best if counts[best] and len(tied) == 1 else ","


class Transcoder(io.RawIOBase):
    """Another reader's bytes in `encoding`, handed out as UTF-8, a block at a time (memory stays
    flat). A byte sequence that is not valid fails the file naming its line and position."""

    def __init__(self, inner: IO[bytes], encoding: str, label: str) -> None:
        super().__init__()
        self._inner = inner
        self._encoding = encoding
        self._decoder = codecs.getincrementaldecoder(encoding)("strict")
        self._label = label
        self._pending = b""
        self._line = 1  # line and characters into it at the end of what was decoded so far
        self._column = 0
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._pending and not self._done:
            data = self._inner.read(READ_SIZE)
            self._done = not data
            try:
                text = self._decoder.decode(data, final=self._done)
            except UnicodeDecodeError as exc:
                raise self._error(exc) from None
            self._advance(text)
            self._pending = text.encode("utf-8")
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _advance(self, text: str) -> None:
        newlines = text.count("\n")
        if newlines:
            self._line += newlines
            self._column = len(text) - text.rfind("\n") - 1
        else:
            self._column += len(text)

    def _error(self, exc: UnicodeDecodeError) -> EncodingError:
        before = exc.object[: exc.start]
        # The part before the bad bytes decoded: it places them (BOM dropped, as the decoder did).
        self._advance(codecs.decode(before, self._encoding, "replace").lstrip("\ufeff"))
        shown = exc.object[exc.start : exc.end].hex()
        return EncodingError(
            f"bytes 0x{shown} at line {self._line}, position {self._column + 1}, are not valid "
            f"{self._encoding}",
            hint=ENCODING_HINT,
            file_name=self._label,
            line_no=self._line,
        )


ENCODING_HINT = (
    "If the file uses another encoding, set `encoding` for this dataset in datasets.toml "
    '(e.g. encoding = "cp1252"); a binary file cannot be loaded'
)


def needs_transcoding(encoding: str) -> bool:
    """The encoding is not ASCII-compatible (UTF-16, UTF-32): it is transcoded to UTF-8 as it streams."""
    return not is_ascii_compatible(encoding)


def likely_encoding(sample: bytes, failed: str) -> str | None:
    """The encoding charset-normalizer finds most likely for `sample` (other than `failed`);
    None for binary data. Of encodings that read the sample equally well, the common one."""
    from charset_normalizer import from_bytes  # only when a file has already failed

    results = from_bytes(sample)
    best = results.best()
    if best is None:
        return None
    tied = [codecs.lookup(c).name for m in results if m.chaos == best.chaos for c in m.could_be_from_charset]
    candidates = [c for c in tied if c != codecs.lookup(failed).name]
    # A short sample fits dozens of code pages; only one people really use is worth naming.
    return next((common for common in _COMMON_ENCODINGS if common in candidates), None)


# In the order they are named when a sample fits several: Windows and ISO western European
# first (most files that are not UTF-8), then central and eastern European, DOS, East Asian.
_COMMON_ENCODINGS = (
    "utf-8",
    "utf-16",
    "utf-32",
    "cp1252",
    "iso8859-15",
    "iso8859-1",
    "cp1250",
    "iso8859-2",
    "cp1251",
    "koi8-r",
    "cp1257",
    "cp850",
    "cp437",
    "mac-roman",
    "shift_jis",
    "euc_jp",
    "gb18030",
    "big5",
    "euc_kr",
)


def with_likely_encoding(exc: EncodingError, sample: bytes, dataset: DatasetSpec) -> EncodingError:
    """`exc` with a hint that names the encoding the file seems to be in and the exact line to
    add to datasets.toml, when a detector finds one other than the one that failed."""
    guess = likely_encoding(sample, dataset.encoding)
    if guess is None:
        return exc
    hint = (
        f'{exc.hint}. It looks like {guess}: add the line encoding = "{guess}" under '
        f"[datasets.{dataset.name}] in datasets.toml"
    )
    return EncodingError(exc.message, hint=hint, file_name=exc.file_name, line_no=exc.line_no)
