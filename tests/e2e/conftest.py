from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.helpers import BIG_ROWS, BIG_SIZE, StoppablePostgres, Watchers, meter_csv


@pytest.fixture
def watchers() -> Iterator[Watchers]:
    """Starts `main.py --watch` processes; any still running at the end of the test is killed."""
    started = Watchers()
    yield started
    started.cleanup()


@pytest.fixture(scope="session")
def big_meter_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,000,000 clean meter rows (40 MB): loading it takes a second or more."""
    path = tmp_path_factory.mktemp("big") / "meter_readings_big.csv"
    path.write_bytes(meter_csv(BIG_ROWS))
    assert path.stat().st_size == BIG_SIZE
    return path


@pytest.fixture
def drop_big(big_meter_file: Path, workdir: Path) -> Iterator[Callable[[], Path]]:
    """Drops a copy of the big file into imports/ in one rename; removes every copy at the end
    (40 MB each: pytest keeps the temporary folders of the last runs)."""
    imports = workdir / "imports"

    def drop() -> Path:
        hidden = imports / f".{big_meter_file.name}.incoming"
        shutil.copyfile(big_meter_file, hidden)
        return hidden.rename(imports / big_meter_file.name)

    yield drop
    for copy in imports.glob(f"**/{big_meter_file.name}*"):
        copy.unlink()


@pytest.fixture(scope="module")
def stoppable_pg() -> Iterator[StoppablePostgres]:
    """A PostgreSQL of the test's own, which the test may stop and start."""
    # Not under pytest's tmp root: pytest keeps that 0700, and the server runs as another user.
    base = Path(tempfile.mkdtemp(prefix="loadbay-test-stoppable-pg-"))
    server = StoppablePostgres(base / "data")
    yield server
    server.cleanup()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def outage_dsn(stoppable_pg: StoppablePostgres) -> Iterator[str]:
    """A fresh database on the stoppable server (migrated by the watcher when it starts); the
    server is running again when the test ends, whatever happened."""
    dsn = stoppable_pg.create_database(f"outage_{time.time_ns()}")
    yield dsn
    if not stoppable_pg.running():
        stoppable_pg.start()
