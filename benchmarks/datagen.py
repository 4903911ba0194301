"""Meter CSV files for the benchmarks: deterministic, clean or with a known share of bad rows.

200 meters read every 10 minutes; each time step writes one row per meter. Register values grow
with the power drawn, so the data looks like what the energy stage will later consume.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

HEADER = "meter_id,reading_at,register_kwh,power_w\n"
METERS = 200
STEP = timedelta(minutes=10)
START = datetime(2024, 1, 1, tzinfo=UTC)

# One bad row every BAD_EVERY rows (1 %), cycling through these kinds so that each is spread
# over the whole file. Each maps a good (meter, time, register, power) row to a bad line.
BAD_EVERY = 100
BAD_KINDS: tuple[str, ...] = (
    "bad number (register_kwh)",
    "bad number (power_w)",
    "bad timestamp (out of range)",
    "bad timestamp (not a time)",
    "too many fields",
    "too few fields",
)


@dataclass(frozen=True)
class Generated:
    path: Path
    rows: int
    bad_rows: int
    size_bytes: int


def _bad_line(kind: int, meter: str, stamp: str, register: str, power: str) -> str:
    if kind == 0:
        return f"{meter},{stamp},{register}.5.1,{power}\n"
    if kind == 1:
        return f"{meter},{stamp},{register},n/a\n"
    if kind == 2:
        return f"{meter},{stamp[:8]}31T25:61:00Z,{register},{power}\n"
    if kind == 3:
        return f"{meter},yesterday noon,{register},{power}\n"
    if kind == 4:
        return f"{meter},{stamp},{register},{power},surplus\n"
    return f"{meter},{stamp},{register}\n"


def _lines(rows: int, *, bad: bool, first_step: int, seed: int) -> Iterator[str]:
    rng = random.Random(seed)
    meters = [f"MTR-{n:05d}" for n in range(1, METERS + 1)]
    registers = [rng.uniform(1_000, 50_000) for _ in meters]
    record = 0
    step = first_step
    while record < rows:
        stamp = (START + step * STEP).strftime("%Y-%m-%dT%H:%M:%SZ")
        for m, meter in enumerate(meters):
            if record >= rows:
                return
            record += 1
            watts = rng.uniform(0, 9_000)
            registers[m] += watts / 6_000  # kWh drawn in 10 minutes
            register, power = f"{registers[m]:.3f}", f"{watts:.1f}"
            if bad and record % BAD_EVERY == BAD_EVERY // 2:
                kind = (record // BAD_EVERY) % len(BAD_KINDS)
                yield _bad_line(kind, meter, stamp, register, power)
            else:
                yield f"{meter},{stamp},{register},{power}\n"
        step += 1


def bad_row_count(rows: int) -> int:
    return sum(1 for r in range(1, rows + 1) if r % BAD_EVERY == BAD_EVERY // 2)


def write_meter_csv(
    path: Path, rows: int, *, bad: bool = False, first_step: int = 0, seed: int = 7
) -> Generated:
    """Write `rows` data rows (plus the header) to `path` by open/write/close."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write(HEADER)
        batch: list[str] = []
        for line in _lines(rows, bad=bad, first_step=first_step, seed=seed):
            batch.append(line)
            if len(batch) >= 10_000:
                out.write("".join(batch))
                batch.clear()
        out.write("".join(batch))
    return Generated(path, rows, bad_row_count(rows) if bad else 0, path.stat().st_size)


def meter_csv_text(rows: int, *, first_step: int, seed: int) -> str:
    """A small clean file as one string (the latency drops)."""
    return HEADER + "".join(_lines(rows, bad=False, first_step=first_step, seed=seed))


def ensure_meter_csv(path: Path, rows: int, *, bad: bool = False) -> Generated:
    """Reuse a file generated earlier with the same parameters (the name encodes them)."""
    if path.exists() and path.stat().st_size > 0:
        with open(path, "rb") as f:
            lines = sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
        if lines == rows + 1:
            return Generated(path, rows, bad_row_count(rows) if bad else 0, path.stat().st_size)
    tmp = path.with_name("." + path.name + ".tmp")
    generated = write_meter_csv(tmp, rows, bad=bad)
    tmp.replace(path)
    return Generated(path, generated.rows, generated.bad_rows, generated.size_bytes)


def with_lineage(path: Path, out: Path) -> Path:
    """`path` with `_file_id,_record_no` in front of every line (file 1, records from 1), as the
    fast path sends it to COPY; generated once next to it."""
    if out.exists() and out.stat().st_size > path.stat().st_size:
        return out
    tmp = out.with_name("." + out.name + ".tmp")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        dst.write(b"_file_id,_record_no," + src.readline())
        for record_no, line in enumerate(src, 1):
            dst.write(b"1,%d,%b" % (record_no, line))
    tmp.replace(out)
    return out
