"""One exception hierarchy for loadbay.

    LoadbayError
    ├── TerminalError            retrying cannot help: the input or the configuration must change
    │   ├── ConfigError          a setting, flag or datasets.toml entry is wrong (exit code 2)
    │   │   └── FolderProblem        processed/ or failed/ is a link, someone else's, or refuses a
    │   │                            move; files wait in imports/ until it is mended
    │   └── FileRejected         a dropped file cannot be loaded; it goes to imports/failed/
    │       ├── UnknownDataset       no dataset matches the file's name or header
    │       ├── UnsupportedFormat    the extension is not one loadbay reads
    │       ├── EmptyFile            no bytes, or a header and no records
    │       ├── MissingColumns       a required column is absent from the header
    │       ├── EncodingError        bytes that are not valid in the dataset's encoding
    │       ├── MalformedFile        the file cannot be parsed at all (binary data, broken JSON)
    │       ├── TooManyRejects       more bad rows than MAX_REJECT_RATIO allows
    │       └── GaveUp               an unexpected error, INGEST_MAX_ATTEMPTS times in a row
    ├── ErpError                 the ERP refused the login or the query, or is not there
    └── TransientError           nothing is wrong with the input; the same work later will succeed
        ├── DatabaseUnavailable  PostgreSQL cannot be reached; files wait in imports/
        ├── FileChanged          the file changed while it was read; it is taken again once settled
        │   └── FileStillOpen        another process still has it open for writing
        ├── FileUnreadable       loadbay may not read the file (permissions); it waits
        ├── WatermarkMoved       another process advanced the ERP watermark; this pull rolls back
        ├── DetrackUnavailable   DeTrack did not answer usefully after every retry
        └── PullCancelled        loadbay is stopping; the pull in hand rolls back

Anything else that escapes a load (a bug, an exhausted resource) is retried, and after
INGEST_MAX_ATTEMPTS tries the file fails as GaveUp, with the original type and message.

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
    """The file's extension is not one a format in services/ingest/formats.py reads."""


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


class GaveUp(FileRejected):
    """Loading the file raised an unexpected error INGEST_MAX_ATTEMPTS times; `cause_type` names
    the last one, whose message ends this one's."""

    def __init__(self, message: str, *, hint: str = "", file_name: str = "", cause_type: str) -> None:
        super().__init__(message, hint=hint, file_name=file_name)
        self.cause_type = cause_type


class FolderProblem(ConfigError):
    """imports/processed or imports/failed cannot safely receive files: a link (it would carry
    files elsewhere), a folder someone else owns, or one that refuses the move."""


class ErpError(TerminalError):
    """The ERP could not be read: unreachable, refused the login, or refused the query.

    The message never holds the connection string's password."""


class TransientError(LoadbayError):
    """Nothing is wrong with the input; the same work later will succeed."""


class DatabaseUnavailable(TransientError):
    """PostgreSQL cannot be reached right now."""


class FileChanged(TransientError):
    """The file changed while loadbay read it, so it was still being written."""


class FileStillOpen(FileChanged):
    """Another process still holds the file open for writing: it is not complete yet."""


class FileUnreadable(TransientError):
    """loadbay may not read the file (its permissions); it waits until they change."""


class WatermarkMoved(TransientError):
    """Another process advanced the watermark while this pull ran; this pull rolls back."""


class DetrackUnavailable(TransientError):
    """DeTrack did not answer usefully after every retry (timeouts, 429 or 5xx)."""


class PullCancelled(TransientError):
    """Stopped between two batches because loadbay is shutting down."""
