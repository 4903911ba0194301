"""A file is committed only as it was hashed, moved only into folders loadbay owns, recorded once,
and failed (not retried forever) when loading it keeps raising an unexpected error."""

from __future__ import annotations

import errno
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from app.db import Database, is_transient
from app.errors import FileChanged, FileStillOpen, FolderProblem
from app.settings import Settings
from models.datasets import DatasetRegistry
from models.outcomes import FileOutcome
from services.ingest.claim import Origin
from services.ingest.loader import Loader
from tests.conftest import run_cli
from tests.integration.helpers import METER_HEADER, drop, ingest, meter_rows, with_db
from tests.pg import execute, fetch, fetchval

CONTENT = METER_HEADER + meter_rows(50)


def load(settings: Settings, path: Path, origin: Origin | None = None) -> FileOutcome:
    """One try of the loader on `path`, as the watcher makes it (exceptions propagate)."""

    async def go(db: Database) -> FileOutcome:
        loader = Loader(settings, DatasetRegistry.from_toml({}), db)
        return await loader.ingest(path, origin=origin or Origin())

    result: FileOutcome = with_db(settings, go)
    return result


def nothing_recorded(dsn: str) -> None:
    assert fetchval(dsn, "SELECT count(*) FROM ingest.files") == 0
    assert fetchval(dsn, "SELECT count(*) FROM staging.meter_readings") == 0


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


# -- commit only if unchanged (DESIGN §3.2) -----------------------------------------------------


def test_a_file_changed_before_the_commit_rolls_back_and_loads_later(settings: Settings, dsn: str) -> None:
    path = drop(settings.imports_dir, "meter_a.csv", CONTENT)

    async def touch(_conn: asyncpg.Connection, _file_id: int) -> None:
        # The writer comes back after the rows were read: the mtime moves on.
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))

    with pytest.raises(FileChanged, match=r"^meter_a.csv changed while it was loaded"):
        load(settings, path, Origin(before_commit=touch))
    nothing_recorded(dsn)
    assert path.read_text() == CONTENT

    outcome = load(settings, path)
    assert (outcome.status, outcome.rows_loaded) == ("loaded", 50)
    assert fetchval(dsn, "SELECT count(*) FROM staging.meter_readings") == 50


def test_a_file_still_open_for_writing_is_not_taken(settings: Settings, dsn: str) -> None:
    path = drop(settings.imports_dir, "meter_open.csv", CONTENT[:200])
    with open(path, "ab") as writer:  # an upload that has paused
        with pytest.raises(FileStillOpen, match="another process still has the file open for writing"):
            load(settings, path)
        nothing_recorded(dsn)
        writer.write(CONTENT[200:].encode())
    outcome = load(settings, path)
    assert (outcome.status, outcome.rows_loaded) == ("loaded", 50)
    moved = settings.imports_dir / "processed" / today() / "meter_open.csv"
    assert moved.read_text() == CONTENT


def test_a_writer_opening_the_file_during_the_load_waits_until_it_is_moved(
    settings: Settings, dsn: str
) -> None:
    """The read lease: a writer that opens the file mid-load is held until loadbay lets go, so no
    byte lands in the file between the last check and the move."""
    path = drop(settings.imports_dir, "meter_late.csv", CONTENT)
    opened: list[str] = []

    async def writer_arrives(_conn: asyncpg.Connection, _file_id: int) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)
        except BlockingIOError:
            opened.append("held back")
            return
        os.close(fd)
        opened.append("let in")

    outcome = load(settings, path, Origin(before_commit=writer_arrives))
    assert opened == ["held back"]
    assert (outcome.status, outcome.rows_loaded) == ("loaded", 50)


# -- folders loadbay moves into -------------------------------------------------------------------


def test_a_symlinked_failed_folder_is_refused_and_nothing_lands_elsewhere(
    settings: Settings, dsn: str, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (settings.imports_dir / "failed").symlink_to(elsewhere)
    path = drop(settings.imports_dir, "meter_bad.json", b"not json")
    with pytest.raises(FolderProblem) as raised:
        load(settings, path)
    assert str(raised.value) == (
        f"{settings.imports_dir / 'failed'} is a symbolic link; loadbay never moves files through "
        "links. Replace it with a real folder (or remove it: loadbay creates it); files wait in imports/"
    )
    assert list(elsewhere.iterdir()) == []
    assert path.exists()
    nothing_recorded(dsn)


def test_a_symlinked_day_folder_in_processed_is_refused(settings: Settings, dsn: str, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (settings.imports_dir / "processed").mkdir()
    (settings.imports_dir / "processed" / today()).symlink_to(elsewhere)
    path = drop(settings.imports_dir, "meter_a.csv", CONTENT)
    with pytest.raises(FolderProblem, match="is a symbolic link"):
        load(settings, path)
    assert list(elsewhere.iterdir()) == []
    # Loaded and committed, but not moved: the file waits, and is moved (not loaded again) later.
    assert fetchval(dsn, "SELECT count(*) FROM staging.meter_readings") == 50
    (settings.imports_dir / "processed" / today()).unlink()
    outcome = load(settings, path)
    assert (outcome.status, outcome.rows_loaded) == ("loaded", 0)
    assert fetchval(dsn, "SELECT count(*) FROM staging.meter_readings") == 50
    assert fetchval(dsn, "SELECT count(*) FROM ingest.files") == 1


def test_a_failed_folder_owned_by_another_user_is_refused(settings: Settings, dsn: str) -> None:
    failed = settings.imports_dir / "failed"
    failed.mkdir()
    os.chown(failed, os.geteuid() + 4242, -1)
    path = drop(settings.imports_dir, "meter_bad.json", b"not json")
    with pytest.raises(FolderProblem) as raised:
        load(settings, path)
    uid = os.geteuid()
    assert str(raised.value) == (
        f"{failed} belongs to user id {uid + 4242}, not to loadbay's ({uid}). Give it to loadbay's "
        f"user (chown {uid}) or remove it; files wait in imports/"
    )
    assert path.exists()


@pytest.mark.parametrize("command", [["--ingest", "imports"], ["--watch"]])
def test_the_cli_refuses_to_start_with_a_symlinked_state_folder(
    dsn: str, workdir: Path, tmp_path: Path, command: list[str]
) -> None:
    (tmp_path / "elsewhere").mkdir()
    (workdir / "imports" / "processed").symlink_to(tmp_path / "elsewhere")
    done = run_cli(dsn, workdir, *command, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "imports/processed is a symbolic link; loadbay never moves files through links" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr


# -- one file, one ledger row ---------------------------------------------------------------------


def test_a_duplicate_whose_move_fails_is_recorded_once(settings: Settings, dsn: str) -> None:
    drop(settings.imports_dir, "meter_a.csv", CONTENT)
    assert ingest(settings, settings.imports_dir / "meter_a.csv").outcomes[0].status == "loaded"
    copy = drop(settings.imports_dir, "meter_copy.csv", CONTENT)
    day = settings.imports_dir / "processed" / today()
    blocker = day.with_name(today() + ".moved")
    day.rename(blocker)
    day.write_text("in the way")  # the day folder cannot be made: the move fails
    for _ in range(3):
        with pytest.raises(FolderProblem, match="is not a folder"):
            load(settings, copy)
    day.unlink()
    blocker.rename(day)
    outcome = load(settings, copy)
    assert outcome.status == "duplicate"
    rows = fetch(dsn, "SELECT name, status, moved_to FROM ingest.files ORDER BY id")
    assert [(r["name"], r["status"]) for r in rows] == [
        ("meter_a.csv", "loaded"),
        ("meter_copy.csv", "duplicate"),
    ]
    assert rows[1]["moved_to"] == str(day / "meter_copy.csv")


# -- unexpected errors end after INGEST_MAX_ATTEMPTS --------------------------------------------


def test_an_unexpected_error_fails_the_file_after_the_third_try(settings: Settings, dsn: str) -> None:
    execute(dsn, "ALTER TABLE staging.meter_readings RENAME TO meter_readings_away")
    path = drop(settings.imports_dir, "meter_a.csv", CONTENT)
    for attempt in (1, 2):
        with pytest.raises(asyncpg.UndefinedTableError):
            load(settings, path)
        tries = fetch(dsn, "SELECT name, attempts, error_type FROM ingest.file_attempts")
        assert [tuple(r) for r in tries] == [("meter_a.csv", attempt, "UndefinedTableError")]
        assert fetchval(dsn, "SELECT count(*) FROM ingest.files") == 0
    outcome = load(settings, path)
    assert outcome.status == "failed"
    message = (
        'loading it failed 3 times; last error UndefinedTableError: relation "staging.meter_readings" '
        "does not exist. Keep the file and its .error.json for a bug report; drop the file again to "
        "retry (INGEST_MAX_ATTEMPTS sets the number of tries)"
    )
    [file] = fetch(dsn, "SELECT status, error FROM ingest.files")
    assert (file["status"], file["error"]) == ("failed", message)
    sidecar = json.loads((settings.imports_dir / "failed" / "meter_a.csv.error.json").read_text())
    assert sidecar["error"] == "UndefinedTableError"
    assert sidecar["message"].startswith("loading it failed 3 times; last error UndefinedTableError: ")
    assert fetchval(dsn, "SELECT count(*) FROM ingest.file_attempts") == 0
    assert not path.exists()


def test_ingest_max_attempts_is_a_setting(settings: Settings, dsn: str) -> None:
    execute(dsn, "ALTER TABLE staging.meter_readings RENAME TO meter_readings_away")
    path = drop(settings.imports_dir, "meter_a.csv", CONTENT)
    outcome = load(settings.model_copy(update={"ingest_max_attempts": 1}), path)
    assert outcome.status == "failed"


# -- names and errors -------------------------------------------------------------------------------


def test_a_file_name_with_bytes_that_are_not_utf8_loads_under_an_escaped_name(
    dsn: str, workdir: Path
) -> None:
    raw_name = os.fsencode(workdir / "imports") + b"/meter_\xff\xfe.csv"
    with open(raw_name, "wb") as out:
        out.write(CONTENT.encode())
    done = run_cli(dsn, workdir, "--ingest", "imports", timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Logging error" not in done.stdout + done.stderr
    assert "meter_\\xff\\xfe.csv" in done.stdout
    [file] = fetch(dsn, "SELECT name, status, rows_loaded FROM ingest.files")
    assert tuple(file) == ("meter_\\xff\\xfe.csv", "loaded", 50)
    day = os.fsencode(workdir / "imports" / "processed" / today())
    assert os.listdir(day) == [b"meter_\xff\xfe.csv"]


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), True),
        (OSError("Multiple exceptions: [Errno 111] Connect call failed"), True),
        (socket.gaierror(-3, "Temporary failure in name resolution"), True),
        (TimeoutError(), True),
        (FileNotFoundError(errno.ENOENT, "No such file or directory"), True),  # the server's socket
        (PermissionError(errno.EACCES, "Permission denied", "imports/x.csv"), False),
        (OSError(errno.ENOSPC, "No space left on device", "imports/processed/x.csv"), False),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "imports/x.csv"), False),
        (asyncpg.UndefinedTableError("relation does not exist"), False),
        (asyncpg.DeadlockDetectedError("deadlock detected"), True),
        (RecursionError("maximum recursion depth exceeded"), False),
    ],
)
def test_only_a_lost_connection_is_transient(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def test_status_shows_a_file_that_waits_after_an_unexpected_error(
    settings: Settings, dsn: str, workdir: Path
) -> None:
    execute(dsn, "ALTER TABLE staging.meter_readings RENAME TO meter_readings_away")
    path = drop(settings.imports_dir, "meter_a.csv", CONTENT)
    with pytest.raises(asyncpg.UndefinedTableError):
        load(settings, path)
    done = run_cli(dsn, workdir, "--status")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    at = lines.index("Waiting in imports/ after an unexpected error (ingest.file_attempts):")
    assert lines[at + 1].startswith("  meter_a.csv: tried 1 time, last ")
    assert lines[at + 1].endswith(': UndefinedTableError: relation "staging.meter_readings" does not exist')
