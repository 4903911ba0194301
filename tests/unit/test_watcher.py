"""The watcher's decisions, without processes or a database: when a file is taken, and that one
bad moment (a file vanishing, a failing callback) does not stop it."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime
from pathlib import Path

import pytest

from app.settings import Settings
from services.ingest.loader import FileOutcome
from services.watcher import CLOSED, CREATED, GONE, MOVED_IN, WRITTEN, Watcher


class FakeLoader:
    def __init__(self) -> None:
        self.loaded: list[str] = []

    async def ingest(self, path: Path, received_at: datetime | None = None) -> FileOutcome:
        self.loaded.append(path.name)
        return FileOutcome(path.name, "loaded", 1, "meter_readings", 1)


def make_watcher(folder: Path, polling: bool = False, **callbacks: object) -> Watcher:
    settings = Settings(
        _env_file=None,
        imports_dir=folder,
        watch_settle_seconds=0.5,
        watch_rescan_seconds=60,
        watch_polling=polling,
    )
    return Watcher(settings, FakeLoader(), folder, **callbacks)  # type: ignore[arg-type]


def queued(watcher: Watcher) -> list[str]:
    return sorted(path.name for path in watcher.in_flight)


def age(watcher: Watcher, path: Path, seconds: float) -> None:
    """Pretend the file has been unchanged for `seconds`."""
    watcher.candidates[path].stable_since -= seconds


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path.resolve()


def test_a_settled_file_is_taken_and_an_unsettled_one_waits(folder: Path) -> None:
    watcher = make_watcher(folder)
    (folder / "meter_a.csv").write_text("x\n")
    (folder / "meter_b.csv").write_text("x\n")
    watcher.rescan()
    age(watcher, folder / "meter_a.csv", 0.6)
    age(watcher, folder / "meter_b.csv", 0.3)

    watcher._settle()

    assert queued(watcher) == ["meter_a.csv"]


def test_a_file_open_for_writing_waits_however_long_the_writer_pauses(folder: Path) -> None:
    watcher = make_watcher(folder)
    path = folder / "meter_upload.csv"
    path.write_text("")
    watcher.note(path, CREATED)
    path.write_text("meter_id,reading_at\n")
    watcher.note(path, WRITTEN)
    age(watcher, path, 30)  # paused for much longer than the settle time

    watcher._settle()
    assert queued(watcher) == []

    watcher.note(path, CLOSED)
    assert queued(watcher) == ["meter_upload.csv"]


def test_a_file_created_empty_waits_for_its_data_and_its_close(folder: Path) -> None:
    watcher = make_watcher(folder)
    path = folder / "meter_slow_start.csv"
    path.write_text("")
    watcher.note(path, CREATED)
    age(watcher, path, 5)

    watcher._settle()

    assert queued(watcher) == []


def test_a_file_moved_in_complete_is_taken_after_the_settle_time(folder: Path) -> None:
    watcher = make_watcher(folder)
    path = folder / "meter_renamed.csv"
    path.write_text("meter_id,reading_at\n")
    watcher.note(path, WRITTEN)  # written under this name before, then replaced by a rename
    watcher.note(path, MOVED_IN)
    age(watcher, path, 0.6)

    watcher._settle()

    assert queued(watcher) == ["meter_renamed.csv"]


def test_a_writer_that_never_closes_is_given_up_on_after_the_rescan_interval(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    watcher = make_watcher(folder)
    path = folder / "meter_lost_close.csv"
    path.write_text("meter_id,reading_at\n")
    watcher.note(path, WRITTEN)
    age(watcher, path, 59)
    watcher._settle()
    assert queued(watcher) == []

    age(watcher, path, 2)
    watcher._settle()

    assert queued(watcher) == ["meter_lost_close.csv"]
    assert "taking meter_lost_close.csv although its writer never closed it" in caplog.text


def test_polling_ignores_writes_and_trusts_the_settle_time(folder: Path) -> None:
    watcher = make_watcher(folder, polling=True)
    path = folder / "meter_polled.csv"
    path.write_text("meter_id,reading_at\n")
    watcher.note(path, WRITTEN)
    age(watcher, path, 0.6)

    watcher._settle()

    assert queued(watcher) == ["meter_polled.csv"]


def test_a_file_that_vanishes_is_forgotten_with_its_writer_state(folder: Path) -> None:
    watcher = make_watcher(folder)
    path = folder / "meter_gone.csv"
    path.write_text("meter_id,reading_at\n")
    watcher.note(path, WRITTEN)
    path.unlink()
    watcher.note(path, GONE)

    watcher._settle()

    assert (watcher.candidates, watcher.open_for_writing, queued(watcher)) == ({}, set(), [])


def test_rescan_skips_folders_and_names_that_vanish_while_it_looks(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    watcher = make_watcher(folder)
    (folder / "processed").mkdir()
    (folder / "meter_here.csv").write_text("x\n")
    real_scandir = os.scandir

    def scandir_then_move(path: Path) -> object:
        listing = list(real_scandir(path))
        (folder / "meter_here.csv").rename(folder / "processed" / "meter_here.csv")  # another process
        return _Listing(listing)

    monkeypatch.setattr("services.watcher.os.scandir", scandir_then_move)

    watcher.rescan()

    assert watcher.candidates == {}


class _Listing(list[os.DirEntry[str]]):
    def __enter__(self) -> _Listing:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def test_a_failing_outcome_callback_does_not_kill_the_worker(folder: Path) -> None:
    calls: list[str] = []

    async def on_outcome(outcome: FileOutcome) -> None:
        calls.append(outcome.name)
        if outcome.name == "meter_1.csv":
            raise RuntimeError("the pipeline failed")

    async def go() -> list[str]:
        watcher = make_watcher(folder, on_outcome=on_outcome)
        worker = asyncio.create_task(watcher._worker())
        for name in ("meter_1.csv", "meter_2.csv"):
            (folder / name).write_text("x\n")
            watcher.note(folder / name, CLOSED)
            await asyncio.wait_for(watcher.queue.join(), 5)
        worker.cancel()
        return watcher.loader.loaded  # type: ignore[attr-defined]

    assert asyncio.run(go()) == ["meter_1.csv", "meter_2.csv"]
    assert calls == ["meter_1.csv", "meter_2.csv"]
