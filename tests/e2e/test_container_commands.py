"""What the Dockerfile runs, outside Docker (no engine runs on our machines): its CMD, with its ENV,
as a throw-away non-root user that owns only its imports/exports/logs folders, the project itself
read-only to it (as /app is in the image), DATABASE_URL set. Files dropped the two ways the
containers deliver them are loaded, the image's HEALTHCHECK command passes, and SIGTERM (what
`docker stop` sends the CMD's process) stops it with exit code 0.

Installing from the lock (`pipenv sync`) is exercised by CI on every run, not here (minutes).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psutil
import pytest
import requests

from tests.conftest import ROOT
from tests.e2e.helpers import WatcherProcess, ledger, meter_csv, processed_files, wait_until, waiting_files
from tests.e2e.test_health import free_port
from tests.integration.test_compose import instruction
from tests.pg import fetchval

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("useradd", "userdel", "runuser")),
    reason="creates a throw-away user: needs root and useradd, userdel, runuser",
)

VENV_BIN = Path(sys.executable).parent  # the image's /app/.venv/bin
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class ContainerUser:
    name: str
    uid: int
    gid: int
    home: Path
    pids: list[int] = field(default_factory=list)

    def runuser(self, *argv: str) -> list[str]:
        return ["runuser", "-u", self.name, "--", *argv]


class TcpToPostgres:
    """127.0.0.1:PORT forwarded to the test server: the app reaches PostgreSQL over TCP by host and
    port, as the container reaches `db`, and needs no access to the server's socket folder (the
    embedded server's is its data folder, 0700)."""

    def __init__(self, dsn: str) -> None:
        parts = urlsplit(dsn)
        query = parse_qs(parts.query)
        host = query.get("host", [parts.hostname or "localhost"])[0]
        port = parts.port or int(query.get("port", ["5432"])[0])
        self._unix = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else None
        self._tcp = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._sockets: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="pg-proxy", daemon=True)
        self._thread.start()
        userinfo = parts.netloc.rpartition("@")[0]
        self.dsn = f"postgresql://{userinfo}@127.0.0.1:{self._listener.getsockname()[1]}{parts.path}"

    def _upstream(self) -> socket.socket:
        if self._unix is None:
            return socket.create_connection(self._tcp, timeout=10)
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(self._unix)
        return upstream

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = self._upstream()
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                target.sendall(data)
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()
        for sock in self._sockets:
            sock.close()


@pytest.fixture
def tcp_dsn(dsn: str) -> Iterator[str]:
    proxy = TcpToPostgres(dsn)
    yield proxy.dsn
    proxy.close()


def first_closed_folder(path: Path) -> Path | None:
    """The first folder on the way to `path` that users other than its owner cannot enter."""
    for folder in [*reversed(path.parents)]:
        if not os.stat(folder).st_mode & stat.S_IXOTH:
            return folder
    return None


@pytest.fixture
def container_user() -> Iterator[ContainerUser]:
    """A new user and group (like the image's `useradd ... loadbay`) with a home that holds the
    three runtime folders it owns; both removed at the end, with any process still running."""
    name = f"lbtest{uuid.uuid4().hex[:10]}"
    home = Path(tempfile.mkdtemp(prefix="loadbay-test-user-"))  # not under pytest's 0700 tmp root
    subprocess.run(
        ["useradd", "--user-group", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/sh", name],
        check=True,
        capture_output=True,
    )
    entry = pwd.getpwnam(name)
    user = ContainerUser(name, entry.pw_uid, entry.pw_gid, home)
    try:
        for folder in (home, home / "imports", home / "exports", home / "logs"):
            folder.mkdir(exist_ok=True)
            os.chown(folder, user.uid, user.gid)
        yield user
    finally:
        # what the test started (runuser, as root) and whatever runs as the user, which exists
        # for this test only: userdel refuses a user with processes
        left = [*user.pids]
        left += [
            p.pid for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == user.uid
        ]
        killed = []
        for pid in left:
            try:
                process = psutil.Process(pid)
                process.kill()
                killed.append(process)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(killed, timeout=10)
        shutil.rmtree(home, ignore_errors=True)
        subprocess.run(["userdel", name], check=True, capture_output=True)


@pytest.fixture
def can_run_the_project(container_user: ContainerUser) -> None:
    """The interpreter, the venv and the project must be readable by other users, as they are in
    the image; if they are not here, say which folder is closed instead of changing it."""
    probe = subprocess.run(
        container_user.runuser(sys.executable, "-c", "import asyncpg, app.settings, services.watcher"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if probe.returncode != 0:
        interpreter = Path(sys.executable).resolve()
        closed = first_closed_folder(interpreter) or first_closed_folder(ROOT / "main.py")
        pytest.skip(
            f"a non-root user cannot run {sys.executable} (→ {interpreter}) in {ROOT}: "
            f"{probe.stderr.strip()}" + (f"; {closed} is closed to other users" if closed else "")
        )


def image_env(user: ContainerUser, **settings: str) -> list[str]:
    """The Dockerfile's ENV (its /app/.venv is this venv), a clean environment otherwise, and the
    settings compose gives the app."""
    env = {"PATH": SYSTEM_PATH, "HOME": str(user.home)}
    for line in instruction("ENV"):
        for pair in shlex.split(line):
            key, _, value = pair.partition("=")
            value = value.replace("${PATH}", env["PATH"]).replace("/app/.venv/bin", str(VENV_BIN))
            env[key] = value
    assert env["PATH"].split(":")[0] == str(VENV_BIN)  # `python` is the venv's, as in the image
    env.update(settings)
    return [f"{key}={value}" for key, value in env.items()]


def drop(folder: Path, name: str, content: bytes, owner: tuple[int, int]) -> None:
    hidden = folder / f".{name}.incoming"
    hidden.write_bytes(content)
    os.chmod(hidden, 0o644)
    os.chown(hidden, *owner)
    hidden.rename(folder / name)


def test_the_image_command_runs_the_watcher_as_a_non_root_user(
    container_user: ContainerUser, can_run_the_project: None, dsn: str, tcp_dsn: str
) -> None:
    user, port = container_user, free_port()
    imports = user.home / "imports"
    env = image_env(
        user,
        DATABASE_URL=tcp_dsn,
        HEALTH_PORT=str(port),
        IMPORTS_DIR=str(imports),
        EXPORTS_DIR=str(user.home / "exports"),
        LOGS_DIR=str(user.home / "logs"),
        DATASETS_FILE=str(user.home / "datasets.toml"),
        WATCH_SETTLE_SECONDS="0.5",
        LOG_FORMAT="text",
    )
    [cmd] = [json.loads(args) for args in instruction("CMD")]
    assert cmd == ["python", "main.py", "--watch"]

    # The image's WORKDIR is the project, root's and read-only to the user.
    proc = subprocess.Popen(
        user.runuser("env", "-i", *env, *cmd),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    user.pids.append(proc.pid)
    watcher = WatcherProcess(proc)
    watcher.wait_ready()

    # runuser stays as the parent; the CMD's process (PID 1 in the container) is its child
    [child] = wait_until(
        lambda: [p for p in psutil.Process(proc.pid).children() if "main.py" in p.cmdline()],
        10,
        "the watcher process under runuser",
    )
    user.pids.append(child.pid)
    assert child.cmdline()[1:] == ["main.py", "--watch"]
    assert Path(child.exe()).resolve() == Path(sys.executable).resolve()
    assert (child.uids().real, child.uids().effective, child.gids().effective) == (
        user.uid,
        user.uid,
        user.gid,
    )
    assert child.cwd() == str(ROOT)
    # it runs without write access to its working folder, as in the image (/app is root's)
    assert subprocess.run(user.runuser("test", "-w", str(ROOT)), timeout=10).returncode == 1

    wait_until(
        lambda: (
            (r := requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)).status_code == 200
            and r.json() == {"status": "ok", "problems": []}
        ),
        15,
        "/healthz 200",
    )

    # an SFTP upload arrives as the app's uid (compose gives both the same uid), `docker cp` as root
    drop(imports, "meter_readings_sftp.csv", meter_csv(30, meters=3), (user.uid, user.gid))
    drop(imports, "meter_readings_cp.csv", meter_csv(20, meters=2, first_meter=10), (0, 0))
    wait_until(
        lambda: fetchval(dsn, "SELECT count(*) FROM ingest.files WHERE moved_to IS NOT NULL") == 2,
        30,
        "both files loaded and moved",
    )

    # the image's HEALTHCHECK command, as the user, against this port
    [healthcheck] = instruction("HEALTHCHECK")
    probe = json.loads(healthcheck.partition(" CMD ")[2])
    probe = [re.sub(r"127\.0\.0\.1:8080/", f"127.0.0.1:{port}/", arg) for arg in probe]
    checked = subprocess.run(
        user.runuser("env", "-i", *env, *probe), cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")

    # `docker stop`: SIGTERM to the CMD's process
    child.send_signal(signal.SIGTERM)
    assert watcher.wait(timeout=20) == 0

    assert sorted(ledger(dsn)) == [
        ("meter_readings_cp.csv", "loaded", 20, 0),
        ("meter_readings_sftp.csv", "loaded", 30, 0),
    ]
    assert fetchval(dsn, "SELECT count(*) FROM staging.meter_readings") == 50
    assert sorted(p.name for p in processed_files(imports)) == [
        "meter_readings_cp.csv",
        "meter_readings_sftp.csv",
    ]
    assert waiting_files(imports) == []
    assert not (imports / "failed").exists()
    # what the app created, the user owns
    created = [imports / "processed", *(imports / "processed").iterdir(), user.home / "logs" / "loadbay.log"]
    assert [(p.name, p.stat().st_uid) for p in created] == [(p.name, user.uid) for p in created]
    assert (
        "stopped watching: 2 loaded, 0 duplicates, 0 failed"
        in (user.home / "logs" / "loadbay.log").read_text()
    )
    assert "Traceback" not in watcher.output and "Permission denied" not in watcher.output
    assert watcher.output.rstrip().endswith("stopped watching: 2 loaded, 0 duplicates, 0 failed")


def test_a_file_the_app_may_not_read_waits_with_a_reason(
    container_user: ContainerUser, can_run_the_project: None, dsn: str, tcp_dsn: str
) -> None:
    """Mode 000 (an uploader's umask): not an outage, not a silent skip; it waits and says why."""
    user = container_user
    imports = user.home / "imports"
    drop(imports, "meter_locked.csv", meter_csv(5, meters=1), (0, 0))
    os.chmod(imports / "meter_locked.csv", 0)
    env = image_env(
        user,
        DATABASE_URL=tcp_dsn,
        IMPORTS_DIR=str(imports),
        EXPORTS_DIR=str(user.home / "exports"),
        LOGS_DIR=str(user.home / "logs"),
        DATASETS_FILE=str(user.home / "datasets.toml"),
        LOG_FORMAT="text",
    )
    done = subprocess.run(
        user.runuser("env", "-i", *env, "python", "main.py", "--ingest", str(imports)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert (
        "could not load meter_locked.csv, it stays in place: meter_locked.csv cannot be read: "
        "Permission denied. Let loadbay's user read it (chmod a+r, or the uploader's umask); it waits "
        "in imports/"
    ) in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert "PostgreSQL" not in done.stdout
    assert ledger(dsn) == []
    assert waiting_files(imports) == ["meter_locked.csv"]


def test_the_image_compiles_the_code_so_that_no_command_compiles_it_again(tmp_path: Path) -> None:
    """PYTHONDONTWRITEBYTECODE is set and /app is read-only to the app's user, so the image must
    hold the project's compiled modules: else every command compiles them again at start-up."""
    image_app = tmp_path / "app"
    image_app.mkdir()
    shutil.copy2(ROOT / "main.py", image_app)
    for folder in ("app", "services", "models", "sql"):
        shutil.copytree(ROOT / folder, image_app / folder, ignore=shutil.ignore_patterns("__pycache__"))
    env = {"PATH": f"{VENV_BIN}:{SYSTEM_PATH}", "HOME": str(tmp_path)}
    assert "PYTHONDONTWRITEBYTECODE=1" in shlex.split(" ".join(instruction("ENV")))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    [compile_step] = [args for args in instruction("RUN") if "compileall" in args]
    subprocess.run(["sh", "-c", compile_step], cwd=image_app, env=env, check=True, timeout=300)

    probe = subprocess.run(
        ["python", "-v", "-c", "import app.settings, services.ingest, services.watcher"],
        cwd=image_app,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    loaded = re.findall(r"^# code object from '?(.+?)'?$", probe.stderr, re.MULTILINE)
    ours = [path for path in loaded if path.startswith(str(image_app))]
    assert len(ours) > 30  # the project's own modules, each loaded once
    assert [path for path in ours if not path.endswith(".pyc")] == []
