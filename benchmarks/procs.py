"""Child processes timed from spawn to exit, with their peak resident memory."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ProcessRun:
    """One child process: wall time, exit code, peak RSS (kernel's ru_maxrss) and its output."""

    seconds: float
    exit_code: int
    peak_rss_mb: float
    output: str
    rss_samples_mb: list[float] = field(default_factory=list)


def _sample_rss(pid: int, samples: list[float], done: threading.Event, every: float) -> None:
    """VmRSS over time, to show whether memory grows with the file or stays flat."""
    status = Path(f"/proc/{pid}/status")
    while not done.wait(every):
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    samples.append(int(line.split()[1]) / 1024)
                    break
        except (FileNotFoundError, ProcessLookupError):
            return


def run_timed(
    argv: Sequence[str | Path],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    log_path: Path,
    sample_every: float = 0.25,
) -> ProcessRun:
    """Run `argv` to completion. Peak RSS comes from wait4(), so it is exact, not sampled."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    samples: list[float] = []
    done = threading.Event()
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        child = subprocess.Popen([str(a) for a in argv], env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        sampler = threading.Thread(target=_sample_rss, args=(child.pid, samples, done, sample_every), daemon=True)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait() again
    done.set()
    sampler.join()
    return ProcessRun(
        seconds=seconds,
        exit_code=child.returncode,
        peak_rss_mb=usage.ru_maxrss / 1024,  # Linux reports KiB
        output=log_path.read_text(encoding="utf-8", errors="replace"),
        rss_samples_mb=samples,
    )


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()
