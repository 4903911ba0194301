"""Which loadbay code a benchmark run measures: the working tree, or a snapshot of one commit.

Other people edit the product code while benchmarks run; a snapshot (`--ref`) keeps one run's
figures tied to one commit. The snapshot is `git archive` of the commit under benchmarks/work/src/.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

PRODUCT_PATHS = ("main.py", "app", "services", "models", "sql")
PACKAGES = ("app", "services", "models")


def compiled(folder: Path) -> Path:
    """`folder` with its modules compiled, as the image compiles them (Dockerfile): with
    PYTHONDONTWRITEBYTECODE set, a command would otherwise compile them again at every start."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", *PACKAGES], cwd=folder, check=True, capture_output=True
    )
    return folder


def _git(root: Path, *args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True).stdout


def working_tree(root: Path) -> dict[str, Any]:
    """The checked-out code as it is now, with a fingerprint of its uncommitted product changes."""
    head = _git(root, "rev-parse", "HEAD").decode().strip()
    status = _git(root, "status", "--porcelain", "--", *PRODUCT_PATHS).decode().splitlines()
    diff = _git(root, "diff", "HEAD", "--", *PRODUCT_PATHS)
    return {
        "source": "working tree",
        "commit": head[:12],
        "uncommitted": [line[3:] for line in status],
        "diff_sha256": hashlib.sha256(diff).hexdigest()[:12] if diff else None,
    }


def snapshot(root: Path, ref: str, into: Path) -> tuple[Path, dict[str, Any]]:
    """Export `ref` to `into/<commit>` (once) and return that folder."""
    commit = _git(root, "rev-parse", "--verify", f"{ref}^{{commit}}").decode().strip()
    folder = into / commit[:12]
    if not (folder / "main.py").exists():
        folder.mkdir(parents=True, exist_ok=True)
        archive = _git(root, "archive", "--format=tar", commit)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(folder, filter="data")
    subject = _git(root, "log", "-1", "--format=%s (%cI)", commit).decode().strip()
    return folder, {"source": f"snapshot of {ref}", "commit": commit[:12], "subject": subject}


def describe(code: dict[str, Any]) -> str:
    if code["source"] == "working tree":
        if not code["uncommitted"]:
            return f"working tree at commit {code['commit']}, no uncommitted product changes"
        return (
            f"working tree at commit {code['commit']} plus uncommitted changes to "
            f"{', '.join(code['uncommitted'])} (diff fingerprint {code['diff_sha256']})"
        )
    return f"commit {code['commit']} ({code['subject']}), run from a snapshot"
