"""The numpy route of the energy step: readings out by binary COPY, the rules in
`services/energy/rules.py`, results back by COPY into the temp tables `sql/energy/04_write.sql`
writes from. Meters it cannot compute exactly are handed back for the SQL route.
"""

from __future__ import annotations

import asyncio
import io
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import numpy as np

from app.settings import Settings
from app.sqlfiles import sql
from services.energy import (
    COPY_HEADER,
    COPY_TRAILER,
    PG_EPOCH,
    EnergyResult,
    MeterWindow,
    create_parameters,
    drop_temp_tables,
    micro,
    rules,
)

PIPELINE_BEGINNING = PG_EPOCH.replace(year=1970)  # services.pipeline.BEGINNING: a full build
# One row of the read-out query in binary COPY: field count, then (length, value) per field.
_FIELDS = [
    ("meter", ">i4"),
    ("ts", ">i8"),
    ("sensor", ">i2"),
    ("reg", ">i8"),
    ("reg_state", ">i2"),
    ("reg_scale", ">i2"),
    ("pw", ">i8"),
    ("pw_state", ">i2"),
    ("pw_scale", ">i2"),
    ("file_id", ">i8"),
    ("record_no", ">i8"),
]
READ_ROW = np.dtype(
    [("n", ">i2")] + [item for name, kind in _FIELDS for item in ((f"len_{name}", ">i4"), (name, kind))]
)
RESULT_ROW = np.dtype(
    [
        ("n", ">i2"),
        ("l1", ">i4"),
        ("meter", ">i4"),
        ("l2", ">i4"),
        ("start", ">i8"),
        ("l3", ">i4"),
        ("kwh", ">i8"),
        ("l4", ">i4"),
        ("quality", ">i2"),
    ]
)

# State codes (rules: ABSENT, OK, NEGATIVE, NAN, INFINITY, MINUS_INFINITY, UNFIT) of a numeric
# value `x`; `{ok}` is the condition for OK. The usual value is decided by the first tests:
# PostgreSQL orders NaN above every number, so `x < 1e9` also rules out NaN and Infinity.
_FITS = "{x} > -1e9 AND {x} < 1e9 AND scale({x}) <= 6"
_STATE = """CASE WHEN {x} IS NULL THEN 0 WHEN {ok} AND {x} < 1e9 AND scale({x}) <= 6 THEN 1
     WHEN {x} = 'NaN' THEN 3 WHEN {x} = 'Infinity' THEN 4 WHEN {x} = '-Infinity' THEN 5
     WHEN {fits} THEN 2 ELSE 6 END::int2"""


def _columns(x: str, ok: str) -> str:
    """Value in 10^-6 units (0 when it does not fit), state and scale of the numeric `x`."""
    fits = _FITS.format(x=x)
    value = f"CASE WHEN {fits} THEN ({x} * 1000000)::int8 ELSE 0 END"
    return f"{value}, {_STATE.format(x=x, ok=ok, fits=fits)}, coalesce(scale({x}), 0)::int2"


READ_OUT = f"""
SELECT m.idx, r.reading_at, 0::int2,
       {_columns("r.register_kwh", "r.register_kwh >= 0")},
       {_columns("r.power_w", "r.power_w >= 0 AND r.power_w <= m.max_kw * 1000")},
       r._file_id, r._record_no
FROM {{staging}}.meter_readings r JOIN e_meters m USING (meter_id)
WHERE r.reading_at >= m.window_from AND r.reading_at >= $1
UNION ALL
SELECT m.idx, s.reading_at, 1::int2, 0::int8, 0::int2, 0::int2,
       {_columns("s.p", "s.p >= 0 AND s.p <= m.max_kw * 1000")},
       s._file_id, s._record_no
FROM (
    -- Sensors measure current: power = voltage x power factor x the sum of the channels.
    SELECT s.device_name, s.reading_at, s._file_id, s._record_no,
           CASE WHEN least(s.channel1_a, s.channel2_a, s.channel3_a) < 0
                  OR num_nonnulls(s.channel1_a, s.channel2_a, s.channel3_a) = 0
                THEN 'NaN'::numeric
                ELSE p.sensor_voltage * p.sensor_power_factor
                     * (coalesce(s.channel1_a, 0) + coalesce(s.channel2_a, 0) + coalesce(s.channel3_a, 0))
           END AS p
    FROM {{staging}}.sensor_readings s CROSS JOIN e_params p
    WHERE s.reading_at >= $1
) s
JOIN e_meters m ON m.meter_id = s.device_name
WHERE s.reading_at >= m.window_from
"""


async def numpy_route(
    conn: asyncpg.Connection, settings: Settings, windows: list[MeterWindow]
) -> tuple[EnergyResult, list[MeterWindow]]:
    """Compute what the numpy route can; return its counts and the windows left for SQL."""
    noise = micro(settings.energy_noise_tolerance_kwh)
    if noise is None:
        return EnergyResult(), windows
    await create_parameters(conn, settings, windows)
    meters, unfit = await _meters(conn, windows)
    readings = await _read_out(conn, settings, windows)

    # Meters whose values do not all fit, or that have no valid register reading (power-only and
    # sensor meters), go to the SQL route.
    unfit[readings.meter[(readings.reg_state == rules.UNFIT) | (readings.pw_state == rules.UNFIT)]] = True
    has_register = np.zeros(len(windows), dtype=bool)
    has_register[readings.meter[readings.reg_state == rules.OK]] = True
    to_sql = unfit | ~has_register
    keep = ~to_sql[readings.meter]
    readings = rules.Readings(*(getattr(readings, f)[keep] for f in rules.Readings.__dataclass_fields__))
    params = rules.Params(
        noise,
        settings.energy_max_actual_step_s * rules.MICRO,
        settings.energy_max_interp_step_s * rules.MICRO,
        settings.energy_outlier_filter,
    )
    # In a thread: numpy lets go of the GIL, so the other workers' COPY streams on meanwhile.
    result = await asyncio.to_thread(rules.compute, readings, meters, params)
    left = [w for w, out in zip(windows, to_sql.tolist(), strict=True) if out]
    if left:
        await conn.execute(
            "DELETE FROM e_meters WHERE idx = ANY($1::int4[])", np.flatnonzero(to_sql).tolist()
        )
    counts = await _write(conn, settings, windows, result)
    await drop_temp_tables(conn)
    return counts, left


async def _meters(conn: asyncpg.Connection, windows: list[MeterWindow]) -> tuple[rules.Meters, Any]:
    rows = await conn.fetch("SELECT idx, max_kw, modulus FROM e_meters ORDER BY idx")
    n = len(windows)
    max_kw, modulus, seed = (np.zeros(n, dtype=np.int64) for _ in range(3))
    unfit = np.zeros(n, dtype=bool)
    for row in rows:
        i = row["idx"]
        kw, wrap, mark = micro(row["max_kw"]), micro(row["modulus"]), micro(windows[i].seed_e)
        if kw is None or wrap is None or mark is None:
            unfit[i] = True
            continue
        max_kw[i], modulus[i], seed[i] = kw, wrap, mark
    has_seed = np.array([w.seed_e is not None for w in windows], dtype=bool)
    window_from = np.array([_us(w.window_from) for w in windows], dtype=np.int64)
    return rules.Meters(max_kw, modulus, seed, has_seed, window_from), unfit


async def _read_out(
    conn: asyncpg.Connection, settings: Settings, windows: list[MeterWindow]
) -> rules.Readings:
    out = io.BytesIO()
    since = min(w.window_from for w in windows)
    if since > PIPELINE_BEGINNING:
        # An incremental window: the constant lower bound lets the reading_at BRIN index skip
        # the history. The staging tables' statistics are often older than the last load (COPY
        # does not update them), so the planner is told not to fall back to reading it all.
        await conn.execute("SET LOCAL enable_seqscan = off")
    await conn.copy_from_query(sql_text(READ_OUT, settings), since, output=out, format="binary")
    await conn.execute("RESET enable_seqscan")
    raw = out.getbuffer()
    count = (len(raw) - len(COPY_HEADER) - len(COPY_TRAILER)) // READ_ROW.itemsize
    rows = np.frombuffer(raw, dtype=READ_ROW, offset=len(COPY_HEADER), count=count)
    readings = rules.Readings(
        meter=rows["meter"].astype(np.int64),
        ts=rows["ts"].astype(np.int64),
        sensor=rows["sensor"] == 1,
        reg=rows["reg"].astype(np.int64),
        reg_state=rows["reg_state"].astype(np.int8),
        reg_scale=rows["reg_scale"].astype(np.int8),
        pw=rows["pw"].astype(np.int64),
        pw_state=rows["pw_state"].astype(np.int8),
        pw_scale=rows["pw_scale"].astype(np.int8),
        file_id=rows["file_id"].astype(np.int64),
        record_no=rows["record_no"].astype(np.int64),
    )
    # The raw rows (about 100 bytes a reading) are not needed once in arrays.
    del rows
    raw.release()
    out.close()
    return readings


def sql_text(template: str, settings: Settings) -> str:
    from app.schema import quote_ident

    return template.replace("{staging}", quote_ident(settings.staging_schema))


async def _write(
    conn: asyncpg.Connection, settings: Settings, windows: list[MeterWindow], result: rules.Result
) -> EnergyResult:
    """The results into the temp tables sql/energy/04_write.sql reads, then that write."""
    names = [w.meter_id for w in windows]
    await _intervals_back(conn, result)
    await _gaps_back(conn, names, result)
    await _anomalies_back(conn, names, result.anomalies)
    await _checkpoints_back(conn, names, result)
    await conn.execute(sql("energy/04_write.sql", settings))
    return EnergyResult(
        len(np.unique(result.iv_meter)),
        result.readings,
        len(result.iv_start),
        int((result.iv_quality == rules.MISSING).sum()),
        len(result.gaps),
        len(result.anomalies.reason),
    )


async def _intervals_back(conn: asyncpg.Connection, result: rules.Result) -> None:
    """e_result: the half-hours by binary COPY, labelled with their settlement date and period."""
    await conn.execute(
        "CREATE TEMP TABLE e_result_n (idx int4, interval_start timestamptz, kwh_u int8, quality int2) "
        "ON COMMIT DROP"
    )
    back = np.empty(len(result.iv_start), dtype=RESULT_ROW)
    back["n"], back["l1"], back["l2"], back["l3"], back["l4"] = 4, 4, 8, 8, 2
    back["meter"], back["start"], back["kwh"], back["quality"] = (
        result.iv_meter,
        result.iv_start,
        result.iv_kwh,
        result.iv_quality,
    )
    await conn.copy_to_table(
        "e_result_n", source=io.BytesIO(COPY_HEADER + back.tobytes() + COPY_TRAILER), format="binary"
    )
    # Settlement labels once per distinct half-hour, by PostgreSQL's own time zone rules.
    starts = [_at(int(us)) for us in np.unique(result.iv_start).tolist()]
    await conn.execute(
        """
        CREATE TEMP TABLE e_labels ON COMMIT DROP AS
        SELECT s AS interval_start, (s AT TIME ZONE p.settlement_tz)::date AS settlement_date,
               (1 + extract(epoch FROM s - ((s AT TIME ZONE p.settlement_tz)::date::timestamp
                                           AT TIME ZONE p.settlement_tz)) / 1800)::smallint
               AS settlement_period
        FROM unnest($1::timestamptz[]) AS s CROSS JOIN e_params p
        """,
        starts,
    )
    await conn.execute(
        """
        CREATE TEMP TABLE e_result ON COMMIT DROP AS
        SELECT m.meter_id, n.interval_start, n.interval_start + interval '30 minutes' AS interval_end,
               CASE WHEN n.kwh_u >= 0 THEN n.kwh_u * 0.000001 END AS kwh,
               (ARRAY['ACTUAL', 'ESTIMATED', 'MISSING'])[n.quality] AS quality, 'register' AS source,
               l.settlement_date, l.settlement_period
        FROM e_result_n n JOIN e_meters m USING (idx) JOIN e_labels l USING (interval_start)
        """
    )


async def _gaps_back(conn: asyncpg.Connection, names: list[str], result: rules.Result) -> None:
    await conn.execute(
        "CREATE TEMP TABLE e_gaps (meter_id text, gap_start timestamptz, gap_end timestamptz, "
        "kwh numeric, reason text) ON COMMIT DROP"
    )
    await conn.copy_records_to_table(
        "e_gaps",
        records=[
            (names[m], _at(a), _at(b), None if kwh < 0 else Decimal(kwh).scaleb(-6), reason)
            for m, a, b, kwh, reason in result.gaps
        ],
    )


async def _anomalies_back(conn: asyncpg.Connection, names: list[str], a: rules.Anomalies) -> None:
    await conn.execute(
        "CREATE TEMP TABLE e_anomalies (meter_id text, ts timestamptz, field text, value text, "
        "file_id bigint, record_no bigint, reason text) ON COMMIT DROP"
    )
    await conn.copy_records_to_table(
        "e_anomalies",
        records=[
            (names[m], _at(ts), f, v, fid, rno, why)
            for m, ts, f, v, fid, rno, why in zip(
                a.meter, a.ts, a.field, a.value, a.file_id, a.record_no, a.reason, strict=True
            )
        ],
    )


async def _checkpoints_back(conn: asyncpg.Connection, names: list[str], result: rules.Result) -> None:
    await conn.execute(
        "CREATE TEMP TABLE e_checkpoints (meter_id text, ts timestamptz, source text, v numeric, "
        "e_rel numeric) ON COMMIT DROP"
    )
    c_meter, c_ts, c_v, c_e = result.checkpoints
    await conn.copy_records_to_table(
        "e_checkpoints",
        records=[
            (names[m], _at(ts), "register", Decimal(v).scaleb(-6), Decimal(e).scaleb(-6))
            for m, ts, v, e in zip(c_meter.tolist(), c_ts.tolist(), c_v.tolist(), c_e.tolist(), strict=True)
        ],
    )


def _us(at: datetime) -> int:
    return (at - PG_EPOCH) // timedelta(microseconds=1)


def _at(us: int) -> datetime:
    return PG_EPOCH + timedelta(microseconds=us)
