"""Half-hourly energy from meter registers, power samples and sensor currents.

The rules are the spec's (README, "Energy"). Register meters take the numpy route: their
readings stream out by binary COPY, `services/energy/rules.py` applies the rules in exact integer
arithmetic, and the half-hours, gaps, anomalies and checkpoints come back by COPY into the temp
tables that `sql/energy/04_write.sql` writes from. Meters the numpy route cannot represent
exactly (more than 6 decimals, huge values, parameters finer than 10^-6) and power-only or
sensor meters take the SQL route: the set-based steps in `sql/energy/`. Both run inside the
caller's transaction over the meters it names.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from app.schema import quote_ident
from app.settings import Settings
from app.sqlfiles import sql

log = logging.getLogger(__name__)

METHOD_VERSION = "loadbay-energy-1"
STEPS = ("energy/01_series.sql", "energy/02_steps.sql", "energy/03_intervals.sql", "energy/04_write.sql")
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # binary COPY timestamps count microseconds from here
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
COPY_TRAILER = b"\xff\xff"
# A value fits the numpy route when it is a whole number of 10^-6 units below this (int64 with
# room for the sums and the rollover unwrapping).
FIT_LIMIT = Decimal(10) ** 9


@dataclass(frozen=True)
class MeterWindow:
    """Recompute `meter_id` from readings at or after `window_from`; write from `emit_from`."""

    meter_id: str
    window_from: datetime
    emit_from: datetime
    seed_e: Decimal | None = None


@dataclass(frozen=True)
class EnergyResult:
    """What an energy run computed: meters, readings, half-hours, missing ones, gaps, anomalies, seconds."""

    meters: int = 0
    readings: int = 0
    intervals: int = 0
    missing: int = 0
    gaps: int = 0
    anomalies: int = 0
    seconds: float = 0.0

    def __add__(self, other: EnergyResult) -> EnergyResult:
        return EnergyResult(
            self.meters + other.meters,
            self.readings + other.readings,
            self.intervals + other.intervals,
            self.missing + other.missing,
            self.gaps + other.gaps,
            self.anomalies + other.anomalies,
            self.seconds + other.seconds,
        )


async def compute_energy(
    conn: asyncpg.Connection, settings: Settings, windows: list[MeterWindow]
) -> EnergyResult:
    """Recompute the given meters' half-hours, gaps and anomalies. Call inside a transaction."""
    if not windows:
        return EnergyResult()
    started = time.monotonic()
    # Sorting a million readings in memory rather than on disk halves the SQL route.
    await conn.execute("SET LOCAL work_mem = '256MB'")
    from services.energy.numpy_route import numpy_route  # numpy is imported only by the pipeline

    result, left = await numpy_route(conn, settings, windows)
    if left:
        result += await sql_route(conn, settings, left)
    return EnergyResult(
        len(windows),
        result.readings,
        result.intervals,
        result.missing,
        result.gaps,
        result.anomalies,
        time.monotonic() - started,
    )


async def summarize_reading_ranges(conn: asyncpg.Connection, settings: Settings) -> None:
    """Bring the staging tables' `reading_at` BRIN indexes up to date. COPY leaves the ranges it
    fills unsummarised (so scanned by every query) until autovacuum comes round; this reads only
    those pages, so an incremental run reads the new pages once and skips the history."""
    for table in ("meter_readings", "sensor_readings"):
        index = f"{quote_ident(settings.staging_schema)}.{quote_ident(table + '__reading_at')}"
        await conn.execute(
            "SELECT brin_summarize_new_values(i) FROM to_regclass($1) AS i WHERE i IS NOT NULL", index
        )


async def sql_route(conn: asyncpg.Connection, settings: Settings, windows: list[MeterWindow]) -> EnergyResult:
    """The energy rules in SQL (sql/energy/*), for the meters the numpy route does not take."""
    await create_parameters(conn, settings, windows)
    for step in STEPS:
        await conn.execute(sql(step, settings))
    counts = await conn.fetchrow(
        """
        SELECT (SELECT count(*) FROM e_ranked WHERE valid AND rank = 1) AS readings,
               (SELECT count(*) FROM e_result) AS intervals,
               (SELECT count(*) FROM e_result WHERE quality = 'MISSING') AS missing,
               (SELECT count(*) FROM e_gaps) AS gaps,
               (SELECT count(*) FROM e_anomalies) AS anomalies
        """
    )
    await drop_temp_tables(conn)
    return EnergyResult(len(windows), **dict(counts))


_TEMP_TABLES = (
    "e_params",
    "e_meters",
    "e_input",
    "e_anomalies",
    "e_ranked",
    "e_outliers",
    "e_steps",
    "e_points",
    "e_intervals",
    "e_result",
    "e_result_n",
    "e_labels",
    "e_gaps",
    "e_checkpoints",
    "e_existing",
    "e_changed",
)


async def drop_temp_tables(conn: asyncpg.Connection) -> None:
    """Drop the energy step's temp tables, so the next group of meters starts clean."""
    await conn.execute(f"DROP TABLE IF EXISTS {', '.join('pg_temp.' + t for t in _TEMP_TABLES)}")


def micro(value: Any) -> int | None:
    """value x 10^6 as an int when that is exact and fits the numpy route, else None."""
    if value is None:
        return 0
    number = Decimal(str(value))
    scaled = number.scaleb(6)
    if not number.is_finite() or abs(number) >= FIT_LIMIT or scaled != scaled.to_integral_value():
        return None
    return int(scaled)


async def create_parameters(conn: asyncpg.Connection, settings: Settings, windows: list[MeterWindow]) -> None:
    """e_params and e_meters: the energy settings and each meter's window, for the SQL steps."""
    await conn.execute(
        """
        CREATE TEMP TABLE e_params ON COMMIT DROP AS
        SELECT $1::numeric AS noise_tolerance_kwh, $2::numeric AS max_power_kw,
               $3::numeric AS register_modulus_kwh, $4::int AS max_actual_step_s,
               $5::int AS max_interp_step_s, $6::int AS power_max_step_s, $7::text AS power_quality,
               $8::boolean AS outlier_filter, $9::text AS settlement_tz, $10::numeric AS sensor_voltage,
               $11::numeric AS sensor_power_factor, $12::text AS method_version
        """,
        str(settings.energy_noise_tolerance_kwh),
        str(settings.energy_max_power_kw),
        None if settings.energy_register_modulus_kwh is None else str(settings.energy_register_modulus_kwh),
        settings.energy_max_actual_step_s,
        settings.energy_max_interp_step_s,
        settings.energy_power_max_step_s,
        settings.energy_power_quality,
        settings.energy_outlier_filter,
        settings.energy_settlement_tz,
        str(settings.sensor_voltage),
        str(settings.sensor_power_factor),
        METHOD_VERSION,
    )
    await conn.execute(
        f"""
        CREATE TEMP TABLE e_meters ON COMMIT DROP AS
        SELECT w.meter_id, w.window_from, w.emit_from, w.seed_e, w.idx::int4 - 1 AS idx,
               p.noise_tolerance_kwh AS noise,
               coalesce(c.max_power_kw, p.max_power_kw) AS max_kw,
               coalesce(c.register_modulus_kwh, p.register_modulus_kwh) AS modulus,
               p.max_actual_step_s AS max_actual_s, p.max_interp_step_s AS max_interp_s,
               p.power_max_step_s AS power_max_s, p.power_quality = 'ACTUAL' AS power_actual
        FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::numeric[]) WITH ORDINALITY
             AS w(meter_id, window_from, emit_from, seed_e, idx)
        CROSS JOIN e_params p
        LEFT JOIN {quote_ident(settings.warehouse_schema)}.meter_config c USING (meter_id)
        """,
        [w.meter_id for w in windows],
        [w.window_from for w in windows],
        [w.emit_from for w in windows],
        [w.seed_e for w in windows],
    )
    await conn.execute("ANALYZE e_meters")
