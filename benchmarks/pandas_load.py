"""What the old systems did: `pandas.read_csv` then `DataFrame.to_sql`. Run as a child process.

    python -m benchmarks.pandas_load DSN TABLE CSV [psycopg|asyncpg]

Prints one JSON line with the phase timings and the driver used. SQLAlchemy needs a synchronous
connection for `to_sql`. psycopg (the usual driver) is used when it is installed; otherwise the
project's asyncpg driver is used through `AsyncConnection.run_sync`, which hands pandas an
ordinary synchronous SQLAlchemy `Connection` whose statements run on asyncpg.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import time
from typing import Any

import pandas as pd
from sqlalchemy import Connection, create_engine
from sqlalchemy.ext.asyncio import create_async_engine

from benchmarks.pg import sqlalchemy_url


def read(path: str) -> pd.DataFrame:
    # asyncpg binds timestamptz parameters only as datetimes, so the timestamps are parsed here;
    # with psycopg they could stay text, but parsing them is what a pandas loader would do anyway.
    return pd.read_csv(path, parse_dates=["reading_at"])


def _to_sql(conn: Connection, frame: pd.DataFrame, table: str) -> int | None:
    schema, _, name = table.rpartition(".")
    return frame.to_sql(name, conn, schema=schema or None, if_exists="append", index=False)


def load_psycopg(dsn: str, frame: pd.DataFrame, table: str) -> None:
    engine = create_engine(sqlalchemy_url(dsn, "psycopg"))
    with engine.begin() as conn:
        _to_sql(conn, frame, table)
    engine.dispose()


async def load_asyncpg(dsn: str, frame: pd.DataFrame, table: str) -> None:
    engine = create_async_engine(sqlalchemy_url(dsn, "asyncpg"))
    async with engine.begin() as conn:
        await conn.run_sync(_to_sql, frame, table)
    await engine.dispose()


def default_driver() -> str:
    return "psycopg" if importlib.util.find_spec("psycopg") else "asyncpg"


def main(argv: list[str]) -> int:
    dsn, table, path = argv[:3]
    driver = argv[3] if len(argv) > 3 else default_driver()
    started = time.perf_counter()
    frame = read(path)
    parsed = time.perf_counter()
    if driver == "psycopg":
        load_psycopg(dsn, frame, table)
    else:
        asyncio.run(load_asyncpg(dsn, frame, table))
    done = time.perf_counter()
    result: dict[str, Any] = {
        "driver": driver,
        "rows": len(frame),
        "read_csv_s": parsed - started,
        "to_sql_s": done - parsed,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
