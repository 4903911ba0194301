"""Uploads through a real SFTP server into the watched folder (DESIGN §8): an asyncssh server on
127.0.0.1 whose root is imports/, paramiko as the client, a 50 MB meter CSV written slowly: once
under its final name (with one stall longer than WATCH_SETTLE_SECONDS), and as NAME.filepart
renamed when done, both ways a rename reaches the folder from OpenSSH's server (compose's SFTP
image): the plain SFTP rename, which it performs as link(2) + unlink(2), and the
posix-rename@openssh.com extension, rename(2). Each is loaded exactly once and completely."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import paramiko
import pytest

from tests.e2e.helpers import (
    WatcherProcess,
    Watchers,
    ledger,
    meter_csv,
    meter_summary,
    processed_files,
    waiting_files,
)
from tests.pg import fetch, fetchval

pytestmark = pytest.mark.slow  # real uploads, kills and outages: seconds each

ROWS = 1_250_000
SIZE = 50_528_541  # bytes of meter_csv(ROWS)
POWER_SUM = sum(i % 5000 for i in range(ROWS))
CHUNK = 2 << 20  # 25 chunks
PAUSE = 0.2
SETTLE = 2.0
STALL = SETTLE + 1.0  # one pause mid-upload longer than the settle time, as a slow link does
STALL_AFTER_CHUNK = 12
T = TypeVar("T")
USER, PASSWORD = "uploader", "correct horse battery staple"


class OpenSshLikeSftpServer(asyncssh.SFTPServer):
    """The plain SFTP rename as OpenSSH's sftp-server does it for a regular file: link the new
    name, then unlink the old one (the watcher sees the file created, not moved in). The
    posix-rename extension stays rename(2), as in OpenSSH."""

    def rename(self, oldpath: bytes, newpath: bytes) -> None:
        old = self.map_path(oldpath)
        new = self.map_path(newpath)
        os.link(old, new)
        os.unlink(old)


class SftpServer:
    """asyncssh's SFTP server on 127.0.0.1, chrooted to `root`, password login, in a thread
    running its own event loop."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.logins: list[tuple[str, bool]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sftp-server", daemon=True)
        self._thread.start()
        self._acceptor = self._call(self._listen())
        self.port = self._acceptor.get_port()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    async def _listen(self) -> asyncssh.SSHAcceptor:
        server = self

        class Auth(asyncssh.SSHServer):
            def begin_auth(self, username: str) -> bool:
                return True  # authentication is required

            def password_auth_supported(self) -> bool:
                return True

            def validate_password(self, username: str, password: str) -> bool:
                ok = (username, password) == (USER, PASSWORD)
                server.logins.append((username, ok))
                return ok

        return await asyncssh.listen(
            "127.0.0.1",
            0,
            server_host_keys=[self.host_key],
            server_factory=Auth,
            sftp_factory=lambda chan: OpenSshLikeSftpServer(chan, chroot=bytes(self.root)),
            allow_scp=False,
        )

    def host_key_for_paramiko(self) -> tuple[str, paramiko.PKey]:
        kind, blob = self.host_key.export_public_key("openssh").split()[:2]
        return kind.decode(), paramiko.Ed25519Key(data=base64.b64decode(blob))

    def stop(self) -> None:
        async def close() -> None:
            self._acceptor.close()
            await self._acceptor.wait_closed()

        self._call(close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@pytest.fixture
def sftp_server(workdir: Path) -> Iterator[SftpServer]:
    server = SftpServer(workdir / "imports")
    yield server
    server.stop()


@contextmanager
def sftp_session(server: SftpServer) -> Iterator[paramiko.SFTPClient]:
    client = paramiko.SSHClient()
    kind, key = server.host_key_for_paramiko()
    client.get_host_keys().add(f"[127.0.0.1]:{server.port}", kind, key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())  # the test's own host key only
    client.connect(
        "127.0.0.1",
        port=server.port,
        username=USER,
        password=PASSWORD,
        allow_agent=False,
        look_for_keys=False,
        timeout=10,
    )
    try:
        sftp = client.open_sftp()
        try:
            yield sftp
        finally:
            sftp.close()
    finally:
        client.close()


@pytest.fixture(scope="module")
def meter_50mb() -> bytes:
    content = meter_csv(ROWS)
    assert len(content) == SIZE
    return content


def upload_slowly(
    sftp: paramiko.SFTPClient,
    name: str,
    content: bytes,
    local: Path,
    watcher: WatcherProcess,
    dsn: str,
    stall: float,
) -> list[int]:
    """Write `content` to `name` over SFTP in CHUNK pieces, pausing PAUSE s after each (`stall` s
    after chunk STALL_AFTER_CHUNK), the file open throughout. At every pause the watcher must not
    have taken it (under any name). Returns the size of the local file seen at each pause."""
    sizes = []
    with sftp.open(name, "wb") as remote:
        remote.set_pipelined(True)  # as real clients do; unpipelined paramiko waits ~40 ms a 32 kB write
        for number, start in enumerate(range(0, len(content), CHUNK), 1):
            remote.write(content[start : start + CHUNK])
            remote.flush()
            time.sleep(stall if number == STALL_AFTER_CHUNK else PAUSE)
            sizes.append(local.stat().st_size)
            taken = "services.ingest.loader: loading meter_readings_sftp" in watcher.output or ledger(dsn)
            assert not taken, f"{name} was taken after chunk {number} of an unfinished upload"
    return sizes


@pytest.mark.parametrize(
    "rename",
    [
        pytest.param(None, id="final-name"),
        pytest.param("rename", id="filepart-then-rename-as-link-unlink"),
        pytest.param("posix_rename", id="filepart-then-posix-rename"),
    ],
)
def test_a_slow_50_mb_sftp_upload_is_loaded_exactly_once_and_completely(
    dsn: str,
    workdir: Path,
    watchers: Watchers,
    sftp_server: SftpServer,
    meter_50mb: bytes,
    rename: str | None,
) -> None:
    imports = workdir / "imports"
    name = "meter_readings_sftp.csv"
    temporary_name = rename is not None
    upload_as = f"{name}.filepart" if temporary_name else name
    # the stall matters under the final name (a temporary name is never a candidate)
    stall = PAUSE if temporary_name else STALL
    watcher = watchers.start(dsn, workdir, WATCH_SETTLE_SECONDS=str(SETTLE))
    assert "(inotify, 2 workers)" in watcher.output

    with sftp_session(sftp_server) as sftp:
        assert sftp.listdir(".") == []  # the login's root is the watched folder
        sizes = upload_slowly(sftp, upload_as, meter_50mb, imports / upload_as, watcher, dsn, stall)
        if rename is not None:
            # Closed, complete and unchanged for longer than the settle time: a temporary name is
            # still never taken.
            time.sleep(SETTLE + 0.5)
            assert "loading meter_readings_sftp" not in watcher.output and ledger(dsn) == []
            assert waiting_files(imports) == [upload_as]
            assert (imports / upload_as).stat().st_size == SIZE
            getattr(sftp, rename)(upload_as, name)

        # The upload really was slow and partial along the way, then the whole file.
        assert len(sizes) == 25
        assert sizes == sorted(sizes)
        assert 0 < sizes[STALL_AFTER_CHUNK - 1] < SIZE

        deadline = time.monotonic() + 45
        while fetchval(dsn, "SELECT count(*) FROM ingest.files WHERE moved_to IS NOT NULL") < 1:
            assert time.monotonic() < deadline, f"{name} not loaded and moved:\n{watcher.output}"
            time.sleep(0.1)
        # what the uploader sees afterwards: the file was moved away
        assert sftp.listdir(".") == ["processed"]

    assert watcher.stop() == 0  # nothing more can happen to the file: the checks below are final

    assert ledger(dsn) == [(name, "loaded", ROWS, 0)]
    file = fetch(dsn, "SELECT id, sha256, size_bytes, moved_to FROM ingest.files")[0]
    assert (file["sha256"], file["size_bytes"]) == (hashlib.sha256(meter_50mb).hexdigest(), SIZE)
    # staging: every record once, numbered 1..N, all of the file's power readings
    assert meter_summary(dsn) == (ROWS, ROWS, 1, ROWS, 1, POWER_SUM)
    assert fetchval(dsn, "SELECT DISTINCT _file_id FROM staging.meter_readings") == file["id"]
    assert fetchval(dsn, "SELECT count(*) FROM ingest.rejected_rows") == 0
    moved = processed_files(imports)
    assert [(str(p), p.name) for p in moved] == [(file["moved_to"], name)]
    assert moved[0].read_bytes() == meter_50mb
    assert waiting_files(imports) == []
    assert not (imports / "failed").exists()
    assert "will be tried again" not in watcher.output and "Traceback" not in watcher.output
    assert watcher.output.rstrip().endswith("stopped watching: 1 loaded, 0 duplicates, 0 failed")
    assert sftp_server.logins == [(USER, True)]
