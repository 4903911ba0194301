"""Start-up: `main.py --status` on a migrated database and `main.py --help`, wall and CPU time.

    .venv/bin/python -m benchmarks.startup_bench [--runs 15] [--ref REF]

Runs the working tree and, with `--ref`, a snapshot of REF alternately, on one embedded
PostgreSQL and one migrated database each, so that both see the same machine load. CPU time is
user + sys of the command (getrusage of children), less sensitive than wall time to a busy machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.pg import BenchServer
from benchmarks.source import compiled, snapshot

ROOT = Path(__file__).resolve().parent.parent


def timed(main_py: Path, flag: str, env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, user + sys seconds) of one `python main.py FLAG`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = os.times().elapsed
    done = subprocess.run([sys.executable, str(main_py), flag], env=env, cwd=cwd, capture_output=True)
    wall = os.times().elapsed - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{main_py} {flag} failed: {done.stderr.decode()[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument(
        "--ref", help="also measure this commit (e.g. HEAD~1), alternating with the working tree"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="loadbay-startup-"))
    sources = {"working tree": compiled(ROOT)}
    if args.ref:
        sources[f"{args.ref}"] = compiled(snapshot(ROOT, args.ref, ROOT / "benchmarks" / "work" / "src")[0])
    server = BenchServer()
    try:
        envs: dict[str, tuple[Path, dict[str, str], Path]] = {}
        for label, folder in sources.items():
            _, dsn = server.create_database("startup")
            cwd = work / str(len(envs))
            for name in ("imports", "exports", "logs"):
                (cwd / name).mkdir(parents=True)
            env = {**os.environ, "DATABASE_URL": dsn, "HEALTH_PORT": "0"}
            timed(folder / "main.py", "--status", env, cwd)  # migrates the new database
            envs[label] = (folder / "main.py", env, cwd)
        figures: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(args.runs):
            for label, (main_py, env, cwd) in envs.items():
                for flag in ("--status", "--help"):
                    figures.setdefault((label, flag), []).append(timed(main_py, flag, env, cwd))
        print("| code | command | median wall s | median user+sys s | runs |\n|---|---|---:|---:|---:|")
        for (label, flag), runs in figures.items():
            wall = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            print(f"| {label} | `main.py {flag}` | {wall:.3f} | {cpu:.3f} | {len(runs)} |")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
