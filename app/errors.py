"""One exception hierarchy for loadbay.

    LoadbayError
    ├── TerminalError            retrying cannot help: the input or the configuration must change
    │   ├── ConfigError          a setting, flag or datasets.toml entry is wrong (exit code 2)
    │   └── FileRejected         a dropped file cannot be loaded; it goes to imports/failed/
    │       ├── UnknownDataset       no dataset matches the file's name or header
    │       ├── UnsupportedFormat    the extension is not one loadbay reads
    │       ├── EmptyFile            no bytes, or a header and no records
    │       ├── MissingColumns       a required column is absent from the header
    │       ├── EncodingError        bytes that are not valid in the dataset's encoding
    │       ├── MalformedFile        the file cannot be parsed at all (binary data, broken JSON)
    │       └── TooManyRejects       more bad rows than MAX_REJECT_RATIO allows
    └── TransientError           nothing is wrong with the input; the same work later will succeed
        ├── DatabaseUnavailable  PostgreSQL cannot be reached; files wait in imports/
        └── FileChanged          the file changed while it was read; it is taken again once settled

Entry points (main.py, the watcher) are the only places that turn these into log lines, moves
to failed/ and exit codes. Each error's message says what is wrong and what to do next.
"""

from __future__ import annotations


class LoadbayError(Exception):
    """Root of every error loadbay raises on purpose."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}. {self.hint}" if self.hint else self.message


class TerminalError(LoadbayError):
    """Retrying cannot help: the input or the configuration must change first."""


class ConfigError(TerminalError):
    """A setting, flag or datasets.toml entry is wrong; the message names it and the fix."""


class FileRejected(TerminalError):
    """A dropped file cannot be loaded. `file_name` and `line_no` say where, when known."""

    def __init__(
        self, message: str, *, hint: str = "", file_name: str = "", line_no: int | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.file_name = file_name
        self.line_no = line_no


class UnknownDataset(FileRejected):
    """Neither the file name nor the header matches a declared dataset."""


class UnsupportedFormat(FileRejected):
    """The file's extension is not .csv, .json, .ndjson or .jsonl (optionally .gz)."""


class EmptyFile(FileRejected):
    """The file has no bytes, or a header and no data records."""


class MissingColumns(FileRejected):
    """A column the dataset requires is not in the file's header."""


class EncodingError(FileRejected):
    """Bytes that are not valid in the dataset's encoding."""


class MalformedFile(FileRejected):
    """The file cannot be parsed at all (binary data, a broken quote, truncated JSON)."""


class TooManyRejects(FileRejected):
    """The share of bad rows is above MAX_REJECT_RATIO, so the whole file fails."""


class TransientError(LoadbayError):
    """Nothing is wrong with the input; the same work later will succeed."""


class DatabaseUnavailable(TransientError):
    """PostgreSQL cannot be reached right now."""


class FileChanged(TransientError):
    """The file changed while loadbay read it, so it was still being written."""
