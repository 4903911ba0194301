"""Load energy test vectors into staging and read the warehouse back in the vectors' shape."""

from __future__ import annotations

import json
import secrets
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg

from app.settings import Settings
from tests.conftest import CASES, make_settings

VECTORS: list[dict[str, Any]] = json.loads((CASES / "energy-vectors.json").read_text())


def vector_settings(dsn: str, workdir: Path, params: dict[str, Any]) -> Settings:
    return make_settings(
        dsn,
        workdir,
        energy_noise_tolerance_kwh=params["noise_tolerance_kwh"],
        energy_max_power_kw=params["max_power_kw"],
        energy_register_modulus_kwh=params["register_modulus_kwh"],
        energy_max_actual_step_s=params["max_actual_step_s"],
        energy_max_interp_step_s=params["max_interp_step_s"],
        energy_power_max_step_s=params["power_max_step_s"],
        energy_power_quality=params["power_quality"],
        energy_outlier_filter=params["outlier_filter"],
        energy_settlement_tz=params["settlement_tz"],
    )


async def stage_readings(conn: asyncpg.Connection, readings: list[dict[str, Any]]) -> int:
    """One ledger file holding the readings in ingest order (record number = ingest_seq)."""
    file_id: int = await conn.fetchval(
        "INSERT INTO ingest.files (name, dataset, sha256, size_bytes, status, rows_loaded, loaded_at) "
        "VALUES ('vector.csv', 'meter_readings', $2, 0, 'loaded', $1, now()) RETURNING id",
        len(readings),
        secrets.token_hex(32),
    )
    await conn.executemany(
        "INSERT INTO staging.meter_readings "
        "(_file_id, _record_no, meter_id, reading_at, register_kwh, power_w) "
        "VALUES ($1, $2, $3, $4::text::timestamptz, $5::text::numeric, $6::text::numeric)",
        [
            (
                file_id,
                r["ingest_seq"],
                r["meter_id"],
                r["ts"],
                None if r["register_kwh"] is None else str(r["register_kwh"]),
                None if r["power_w"] is None else str(r["power_w"]),
            )
            for r in sorted(readings, key=lambda r: r["ingest_seq"])
        ],
    )
    return file_id


def _kwh(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value)).quantize(Decimal("0.000001"))


def expected_intervals(case: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (
            e["meter_id"],
            e["interval_start"],
            _kwh(e["kwh"]),
            e["quality"],
            e["source"],
            e["settlement_date"],
            e["settlement_period"],
        )
        for e in case["expected"]
    ]


def expected_gaps(case: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(g["meter_id"], g["start"], g["end"], _kwh(g["kwh"]), g["reason"]) for g in case["expected_gaps"]]


async def actual_intervals(conn: asyncpg.Connection) -> list[tuple[Any, ...]]:
    rows = await conn.fetch(
        """
        SELECT meter_id, to_char(interval_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS start,
               kwh, quality, source, settlement_date::text, settlement_period
        FROM warehouse.fact_energy_interval ORDER BY meter_id, interval_start
        """
    )
    return [tuple(r) for r in rows]


async def actual_gaps(conn: asyncpg.Connection) -> list[tuple[Any, ...]]:
    rows = await conn.fetch(
        """
        SELECT meter_id, to_char(gap_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
               to_char(gap_end AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), kwh, reason
        FROM warehouse.energy_gaps ORDER BY meter_id, gap_start
        """
    )
    return [tuple(r) for r in rows]
