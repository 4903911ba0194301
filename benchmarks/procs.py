"""Child processes timed from fork to exit, with their exact peak resident memory.

Linux's ru_maxrss of a child starts from the RSS of the process that forked it (the high-water mark
survives exec), so a child forked by this benchmark process, which has pandas and SQLAlchemy
loaded, would report at least this process's size. Every measured command is therefore started by
a tiny launcher (`python -I -S`, a few MB) that forks it, waits for it with wait4() and writes exit
code, ru_maxrss and fork→exit seconds to a file. A command smaller than the launcher reports the
launcher's size: `measurement_floor_mb()` says how big that is.
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_LAUNCHER = """
import os, signal, sys, time
result = sys.argv[1]
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda number, frame: os.kill(pid, number))
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - started
with open(result, "w") as out:
    out.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss} {seconds!r}")
"""


@dataclass
class ProcessRun:
    """One finished child process: fork→exit seconds, exit code, peak RSS and its output."""

    seconds: float
    exit_code: int
    peak_rss_mb: float
    output: str


class Measured:
    """A command running under the launcher; `finish()` waits for it and returns its figures."""

    def __init__(
        self, argv: Sequence[str | Path], *, env: dict[str, str] | None, cwd: Path | None, log_path: Path
    ) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="loadbay-bench-", suffix=".result")
        os.close(fd)
        self._result = Path(name)
        self._log_path = log_path
        try:
            with open(log_path, "wb") as log:
                self._launcher = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _LAUNCHER, name, *(str(a) for a in argv)],
                    env=env,
                    cwd=cwd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        except BaseException:
            self._result.unlink(missing_ok=True)
            raise

    def running(self) -> bool:
        return self._launcher.poll() is None

    def stop(self) -> None:
        """SIGTERM, forwarded by the launcher to the command."""
        if self.running():
            self._launcher.send_signal(signal.SIGTERM)

    def output(self) -> str:
        return self._log_path.read_text(encoding="utf-8", errors="replace")

    def finish(self) -> ProcessRun:
        self._launcher.wait()
        try:
            code, max_rss_kib, seconds = self._result.read_text().split()
        except ValueError:
            raise RuntimeError(f"the launcher failed:\n{self.output()[-2000:]}") from None
        finally:
            self._result.unlink(missing_ok=True)
        return ProcessRun(float(seconds), int(code), int(max_rss_kib) / 1024, self.output())


def run_timed(
    argv: Sequence[str | Path], *, env: dict[str, str] | None = None, cwd: Path | None = None, log_path: Path
) -> ProcessRun:
    """Run `argv` to completion under the launcher."""
    return Measured(argv, env=env, cwd=cwd, log_path=log_path).finish()


def measurement_floor_mb(log_path: Path) -> float:
    """The smallest peak RSS the launcher can report (that of a command using almost nothing)."""
    return run_timed(["/bin/true"], log_path=log_path).peak_rss_mb


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def machine() -> dict[str, Any]:
    """The facts about this machine every benchmark result records."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
