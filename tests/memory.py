"""`main.py` run as a user runs it, with its peak resident memory.

A child's ru_maxrss starts from the RSS of the process that forked it, so the CLI is forked by a
tiny launcher (`python -I -S`), not by pytest: the figure is the CLI's own.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT, cli_env

_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
sys.stderr.write(f"\\nPEAK_RSS_KB={usage.ru_maxrss}\\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""


@dataclass
class MeasuredRun:
    returncode: int
    stdout: str
    stderr: str
    peak_mb: float


def run_cli_measured(dsn: str, workdir: Path, *args: str, timeout: float = 120, **extra: str) -> MeasuredRun:
    """`python main.py ARGS` in `workdir`; its exit code, output and peak RSS in MB."""
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _LAUNCHER, sys.executable, str(ROOT / "main.py"), *args],
        cwd=workdir,
        env=cli_env(dsn, workdir, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    stderr, _, peak = done.stderr.rpartition("\nPEAK_RSS_KB=")
    return MeasuredRun(done.returncode, done.stdout, stderr, int(peak.strip()) / 1024)
