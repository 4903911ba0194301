"""The watcher's decisions, without processes, a database or waiting: when a file is complete (the
settle tracker on an injected clock), and that one bad moment (a file vanishing, a failing
callback) does not stop the watcher."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime
from pathlib import Path

import pytest

from app.settings import Settings
from models.outcomes import FileOutcome
from services.settle import Due, Seen, SettleTracker
from services.watcher import Watcher


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
    loader = FakeLoader()
    loader.db = None  # type: ignore[attr-defined]
    return Watcher(settings, loader, folder, **callbacks)  # type: ignore[arg-type]


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_tracker(clock: Clock, polling: bool = False) -> SettleTracker:
    return SettleTracker(settle_seconds=0.5, writer_timeout=60, track_writers=not polling, clock=clock)


def taken(due: Due | None) -> list[str]:
    return [due.path.name] if due is not None else []


def names(dues: list[Due]) -> list[str]:
    return sorted(d.path.name for d in dues)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path.resolve()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_settled_file_is_taken_and_an_unsettled_one_waits(clock: Clock) -> None:
    tracker = make_tracker(clock)
    tracker.observe(Path("meter_a.csv"), 2, 1, Seen.CHECK)
    clock.now += 0.3
    tracker.observe(Path("meter_b.csv"), 2, 1, Seen.CHECK)
    clock.now += 0.3  # a: 0.6 s unchanged, b: 0.3 s

    assert names(tracker.due()) == ["meter_a.csv"]
    assert list(tracker.candidates) == [Path("meter_b.csv")]


def test_a_file_open_for_writing_waits_however_long_the_writer_pauses(clock: Clock) -> None:
    tracker = make_tracker(clock)
    path = Path("meter_upload.csv")
    tracker.writer_event(path, Seen.CREATED)
    assert tracker.observe(path, 0, 1, Seen.CREATED) is None
    tracker.writer_event(path, Seen.WRITTEN)
    assert tracker.observe(path, 20, 2, Seen.WRITTEN) is None
    clock.now += 30  # paused for much longer than the settle time

    assert tracker.due() == []

    tracker.writer_event(path, Seen.CLOSED)
    assert taken(tracker.observe(path, 20, 2, Seen.CLOSED)) == ["meter_upload.csv"]


def test_a_file_created_empty_waits_for_its_data_and_its_close(clock: Clock) -> None:
    tracker = make_tracker(clock)
    path = Path("meter_slow_start.csv")
    tracker.writer_event(path, Seen.CREATED)
    tracker.observe(path, 0, 1, Seen.CREATED)
    clock.now += 5

    assert tracker.due() == []


def test_a_file_moved_in_is_taken_at_once(clock: Clock) -> None:
    """A rename into the folder is how uploaders publish a finished file (DESIGN §3.2)."""
    tracker = make_tracker(clock)
    path = Path("meter_renamed.csv")
    tracker.writer_event(path, Seen.WRITTEN)  # written under this name before, then replaced
    tracker.observe(path, 20, 1, Seen.WRITTEN)
    tracker.writer_event(path, Seen.MOVED_IN)

    assert taken(tracker.observe(path, 20, 2, Seen.MOVED_IN)) == ["meter_renamed.csv"]
    assert tracker.candidates == {} and tracker.open_for_writing == set()


def test_a_writer_that_never_closes_is_given_up_on_after_the_rescan_interval(clock: Clock) -> None:
    tracker = make_tracker(clock)
    path = Path("meter_lost_close.csv")
    tracker.writer_event(path, Seen.WRITTEN)
    tracker.observe(path, 20, 1, Seen.WRITTEN)
    clock.now += 59
    assert tracker.due() == []

    clock.now += 2
    [due] = tracker.due()

    assert (due.path.name, due.lost_close) == ("meter_lost_close.csv", True)


def test_polling_ignores_writes_and_trusts_the_settle_time(clock: Clock) -> None:
    tracker = make_tracker(clock, polling=True)
    path = Path("meter_polled.csv")
    tracker.writer_event(path, Seen.WRITTEN)
    tracker.observe(path, 20, 1, Seen.WRITTEN)
    clock.now += 0.6

    assert names(tracker.due()) == ["meter_polled.csv"]


def test_a_change_in_size_or_mtime_starts_the_settle_time_again(clock: Clock) -> None:
    tracker = make_tracker(clock, polling=True)
    path = Path("meter_growing.csv")
    tracker.observe(path, 20, 1, Seen.CHECK)
    clock.now += 0.4
    tracker.observe(path, 40, 2, Seen.CHECK)
    clock.now += 0.4
    assert tracker.due() == []
    clock.now += 0.2
    assert names(tracker.due()) == ["meter_growing.csv"]


def test_a_file_whose_loader_found_a_writer_waits_for_the_close(clock: Clock) -> None:
    tracker = make_tracker(clock)
    path = Path("meter_held.csv")
    tracker.writer_still_open(path)
    tracker.observe(path, 20, 1, Seen.CHECK)
    clock.now += 5
    assert tracker.due() == []
    tracker.writer_event(path, Seen.CLOSED)
    assert taken(tracker.observe(path, 20, 1, Seen.CLOSED)) == ["meter_held.csv"]


def test_a_file_that_vanishes_is_forgotten_with_its_writer_state(folder: Path) -> None:
    watcher = make_watcher(folder)
    path = folder / "meter_gone.csv"
    path.write_text("meter_id,reading_at\n")
    watcher.note(path, Seen.WRITTEN)
    path.unlink()
    watcher.note(path, Seen.GONE)

    watcher.settle()

    assert (watcher.tracker.candidates, watcher.tracker.open_for_writing, sorted(watcher.in_flight)) == (
        {},
        set(),
        [],
    )


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

    assert watcher.tracker.candidates == {}


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
            watcher.note(folder / name, Seen.CLOSED)
            await asyncio.wait_for(watcher.queue.join(), 5)
        worker.cancel()
        return watcher.loader.loaded  # type: ignore[attr-defined]

    assert asyncio.run(go()) == ["meter_1.csv", "meter_2.csv"]
    assert calls == ["meter_1.csv", "meter_2.csv"]
