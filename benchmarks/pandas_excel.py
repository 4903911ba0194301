"""What a pandas loader does with a workbook: `pandas.read_excel` then `DataFrame.to_sql`.

    python -m benchmarks.pandas_excel DSN TABLE XLSX

Prints one JSON line with the phase timings. Column names are mapped to the staging table's as
loadbay maps headers (lower case, underscores), so both load the same columns.
"""

from __future__ import annotations

import json
import re
import sys
import time

import pandas as pd
from sqlalchemy import create_engine

from benchmarks.pg import sqlalchemy_url

_RENAMES = {"ShipAddress1": "ship_address1"}


def column(name: str) -> str:
    return _RENAMES.get(name) or re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def main(argv: list[str]) -> int:
    dsn, table, path = argv[:3]
    started = time.perf_counter()
    frame = pd.read_excel(path, dtype={"ShipZip": str, "ShipVia": str})
    frame.columns = [column(c) for c in frame.columns]
    read = time.perf_counter()
    schema, _, name = table.rpartition(".")
    engine = create_engine(sqlalchemy_url(dsn, "psycopg"))
    with engine.begin() as conn:
        frame.to_sql(name, conn, schema=schema or None, if_exists="append", index=False)
    engine.dispose()
    done = time.perf_counter()
    print(json.dumps({"rows": len(frame), "read_excel_s": read - started, "to_sql_s": done - read}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
