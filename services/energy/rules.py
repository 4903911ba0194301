"""The energy rules for register meters, vectorised with numpy in exact integer arithmetic.

kWh are int64 micro-kWh (uWh x 1000: the facts' scale, 10^-6 kWh), instants int64 microseconds
since 2000-01-01 UTC (PostgreSQL's binary timestamps; that instant is a half-hour and a day
boundary), so differences, noise, rollover and high-water marks are exact. Two things are not
integers: the plausibility bound `max_power_kw x dt / 3600` and the share `d x cov / dt` of a step
cut at a half-hour boundary. Both are decided in floating point only where the answer is
certain by a wide margin; the few comparisons and roundings within a whisker of the limit are
redone with Python integers and fractions. The result is the exact rational answer rounded half
away from zero, as `round(numeric, 6)` does.

The caller (services/energy/numpy_route.py) sends here only meters whose values all fit this scale and
whose chosen series is the register; the others keep the SQL route (sql/energy/).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]

MICRO = 1_000_000
HALF_HOUR = 1800 * MICRO
DAY = 86400 * MICRO
# (delta - noise) x HOUR_UWH <= max_kw (micro-kW) x dt (us) is `delta <= max_power_kw x dt/3600 + noise`.
HOUR_UWH = 3600 * MICRO

# Reading states, as the read-out query codes them.
ABSENT, OK, NEGATIVE, NAN, INFINITY, MINUS_INFINITY, UNFIT = range(7)
SPECIAL_TEXT = {NAN: "NaN", INFINITY: "Infinity", MINUS_INFINITY: "-Infinity"}
# Quality codes of the written half-hours (1-based, for a SQL array).
ACTUAL, ESTIMATED, MISSING = 1, 2, 3
NORMAL, NOISE, ROLLOVER, RESET, BREAK = range(1, 6)


@dataclass(frozen=True)
class Params:
    """The energy settings in the numpy route's units (micro-kWh, microseconds)."""

    noise: int  # micro-kWh
    max_actual_us: int
    max_interp_us: int
    outlier_filter: bool


@dataclass(frozen=True)
class Meters:
    """Per meter, indexed by its position in the batch."""

    max_kw: Array  # int64 micro-kW
    modulus: Array  # int64 micro-kWh, 0 when the meter has none
    seed: Array  # int64 micro-kWh, the checkpoint's high-water mark
    has_seed: Array  # bool
    window_from: Array  # int64 us


@dataclass(frozen=True)
class Readings:
    """Every reading of the batch, in any order (one entry per staging row)."""

    meter: Array  # int64 position of the meter
    ts: Array
    sensor: Array  # bool: from staging.sensor_readings (field `channels`)
    reg: Array
    reg_state: Array
    reg_scale: Array
    pw: Array
    pw_state: Array
    pw_scale: Array
    file_id: Array
    record_no: Array


@dataclass
class Anomalies:
    """Readings set aside, column by column, as warehouse.reading_anomalies takes them."""

    meter: list[int]
    ts: list[int]
    field: list[str]
    value: list[str]
    file_id: list[int]
    record_no: list[int]
    reason: list[str]


@dataclass(frozen=True)
class Result:
    """What the rules produce: half-hours, gaps, anomalies and checkpoints, as arrays."""

    readings: int
    # Half-hours: meter, start (us), kwh (micro-kWh, -1 for NULL), quality code.
    iv_meter: Array
    iv_start: Array
    iv_kwh: Array
    iv_quality: Array
    # Gap records: meter, start, end, kwh (-1 for NULL), reason.
    gaps: list[tuple[int, int, int, int, str]]
    anomalies: Anomalies
    # Checkpoints: meter, ts, v, e_rel (micro-kWh).
    checkpoints: tuple[Array, Array, Array, Array]


def decimal_text(micro: int, scale: int) -> str:
    """PostgreSQL's text of a numeric with `scale` decimals whose value is micro x 10^-6."""
    return format((Decimal(micro).scaleb(-6)).quantize(Decimal(1).scaleb(-scale)), "f")


def products_le(a: Array, b: Array, c: Array, d: Array) -> Array:
    """a x b <= c x d, exactly, for int64 arrays whose products may overflow int64."""
    left = a.astype(np.float64) * b
    right = c.astype(np.float64) * d
    result: Array = left <= right
    close = np.flatnonzero(np.abs(right - left) <= (np.abs(left) + np.abs(right)) * 1e-12 + 2)
    for k in close.tolist():
        result[k] = int(a[k]) * int(b[k]) <= int(c[k]) * int(d[k])
    return result


def within_bound(delta: Array, dt: Array, max_kw: Array, noise: int) -> Array:
    """delta <= max_kw x dt / 3600 + noise: the plausibility bound of the spec, exactly."""
    excess = delta - noise
    if not len(excess):
        return np.zeros(0, dtype=bool)
    biggest = max(abs(int(excess.max())), abs(int(excess.min())))
    if biggest * HOUR_UWH < 2**62 and int(max_kw.max()) * max(abs(int(dt.max())), abs(int(dt.min()))) < 2**62:
        # The usual case: both products fit in int64.
        fits: Array = excess * HOUR_UWH <= max_kw * dt
        return fits
    return products_le(excess, np.full_like(excess, HOUR_UWH), max_kw, dt)


def group_starts(*keys: Array) -> Array:
    """Mask of the first element of each run of equal keys (arrays sorted by those keys)."""
    n = len(keys[0])
    first = np.zeros(n, dtype=bool)
    if n:
        first[0] = True
        for key in keys:
            first[1:] |= key[1:] != key[:-1]
    return first


def compute(readings: Readings, meters: Meters, params: Params) -> Result:
    """The energy rules on the readings of a group of meters: exact, in int64 micro-units."""
    anomalies = Anomalies([], [], [], [], [], [], [])
    _invalid_values(readings, anomalies)
    kept = _deduplicated(readings, anomalies)
    meter, ts, v = readings.meter[kept], readings.ts[kept], readings.reg[kept]
    n_readings = len(kept)
    if params.outlier_filter:
        outlier = _outliers(meter, ts, v, meters, params)
        for k in np.flatnonzero(outlier).tolist():
            i = kept[k]
            _add(
                anomalies,
                readings,
                i,
                "register_kwh",
                decimal_text(int(v[k]), int(readings.reg_scale[i])),
                "OUTLIER",
            )
        keep = ~outlier
        meter, ts, v = meter[keep], ts[keep], v[keep]
    steps = _steps(meter, ts, v, meters, params)
    iv_meter, iv_start, iv_kwh, iv_quality, gaps = _half_hours(steps)
    return Result(n_readings, iv_meter, iv_start, iv_kwh, iv_quality, gaps, anomalies, _checkpoints(steps))


def _add(anomalies: Anomalies, r: Readings, i: int, field: str, value: str, reason: str) -> None:
    anomalies.meter.append(int(r.meter[i]))
    anomalies.ts.append(int(r.ts[i]))
    anomalies.field.append(field)
    anomalies.value.append(value)
    anomalies.file_id.append(int(r.file_id[i]))
    anomalies.record_no.append(int(r.record_no[i]))
    anomalies.reason.append(reason)


def _invalid_values(r: Readings, anomalies: Anomalies) -> None:
    """Negative or non-finite registers and power outside [0, max power], on every row."""
    for i in np.flatnonzero(r.reg_state >= NEGATIVE).tolist():
        state = int(r.reg_state[i])
        text = SPECIAL_TEXT.get(state) or decimal_text(int(r.reg[i]), int(r.reg_scale[i]))
        _add(anomalies, r, i, "register_kwh", text, "INVALID")
    for i in np.flatnonzero(r.pw_state >= NEGATIVE).tolist():
        state = int(r.pw_state[i])
        text = SPECIAL_TEXT.get(state) or decimal_text(int(r.pw[i]), int(r.pw_scale[i]))
        field = "channels" if r.sensor[i] else "power_w"
        _add(anomalies, r, i, field, text, "INVALID" if state in SPECIAL_TEXT else "OUT_OF_RANGE")


def _deduplicated(r: Readings, anomalies: Anomalies) -> Array:
    """Indices of the kept readings in (meter, instant) order: within an instant the latest
    ingest wins (valid values first); the other valid copies are DUPLICATE or CONFLICT_SUPERSEDED."""
    valid = r.reg_state == OK
    order = np.lexsort((-r.record_no, -r.file_id, ~valid, r.ts, r.meter))
    first = group_starts(r.meter[order], r.ts[order])
    winner_pos = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    winner = order[winner_pos]
    for k in np.flatnonzero(~first & valid[order]).tolist():
        i, w = int(order[k]), int(winner[k])
        reason = "DUPLICATE" if r.reg[i] == r.reg[w] else "CONFLICT_SUPERSEDED"
        _add(anomalies, r, i, "register_kwh", decimal_text(int(r.reg[i]), int(r.reg_scale[i])), reason)
    kept: Array = order[first & valid[order]]
    return kept


def _outliers(meter: Array, ts: Array, v: Array, meters: Meters, params: Params) -> Array:
    """Isolated outliers, against the original neighbours (one pass)."""
    n = len(v)
    outlier = np.zeros(n, dtype=bool)
    if n < 3:
        return outlier
    mid = np.arange(1, n - 1)
    same = (meter[mid - 1] == meter[mid]) & (meter[mid + 1] == meter[mid])
    mid = mid[same]
    v_prev, v_next, v_mid = v[mid - 1], v[mid + 1], v[mid]
    span = v_next - v_prev
    consistent = (span >= -params.noise) & within_bound(
        span, ts[mid + 1] - ts[mid - 1], meters.max_kw[meter[mid]], params.noise
    )
    deviates = (v_mid < v_prev - params.noise) | (v_mid > v_next + params.noise)
    outlier[mid[consistent & deviates]] = True
    return outlier


@dataclass(frozen=True)
class Steps:
    """One row per kept reading; the first of each meter (`first`) has no incoming step."""

    meter: Array
    t1: Array
    v1: Array
    first: Array
    dt: Array
    cls: Array
    d: Array  # micro-kWh, 0 where the energy is unknown (BREAK) or there is no step
    usable: Array
    actual: Array
    e_rel: Array


def _steps(meter: Array, t1: Array, v1: Array, meters: Meters, params: Params) -> Steps:
    n = len(v1)
    first = group_starts(meter)
    prev = np.maximum(np.arange(n) - 1, 0)
    dt = np.where(first, 0, t1 - t1[prev])
    delta = np.where(first, 0, v1 - v1[prev])
    max_kw, modulus = meters.max_kw[meter], meters.modulus[meter]
    noise = params.noise
    normal = (delta >= 0) & within_bound(delta, dt, max_kw, noise)
    noisy = (delta < 0) & (delta >= -noise)
    jump = (delta > 0) & ~normal
    falls = delta < -noise
    # Decreases are few: their bounds are checked on them alone.
    drop = np.flatnonzero(falls)
    wrapped = delta[drop] + modulus[drop]
    rollover = np.zeros(n, dtype=bool)
    rollover[drop] = (
        (modulus[drop] > 0) & (wrapped >= 0) & within_bound(wrapped, dt[drop], max_kw[drop], noise)
    )
    reset = np.zeros(n, dtype=bool)
    reset[drop] = ~rollover[drop] & within_bound(v1[drop], dt[drop], max_kw[drop], noise)
    cls = np.select(
        [first, normal, noisy, jump, rollover, reset], [0, NORMAL, NOISE, BREAK, ROLLOVER, RESET], BREAK
    )
    plain = (cls == NORMAL) | (cls == NOISE) | (cls == ROLLOVER)
    usable = first | ((cls != BREAK) & (dt <= params.max_interp_us))
    actual = first | ((dt <= params.max_actual_us) & plain)

    # Segments start at each RESET or BREAK; within one, u = v + modulus x rollovers so far and the
    # high-water mark is the running maximum of u (the first reading of an incremental window
    # starts from the checkpoint's mark).
    meter_start = np.flatnonzero(first)
    seg_break = (cls == RESET) | (cls == BREAK)
    wraps = _running_count(cls == ROLLOVER, meter_start)
    seeded = first & meters.has_seed[meter] & (t1 == meters.window_from[meter])
    u = modulus * wraps + np.where(seeded, np.maximum(v1, meters.seed[meter]), v1)
    mark = _segmented_running_max(u, first | seg_break)
    d = np.where(plain, mark - mark[prev], 0)
    d = np.where(cls == RESET, v1, d)
    return Steps(meter, t1, v1, first, dt, cls, d, usable, actual, mark - modulus * wraps)


def _running_count(flag: Array, meter_start: Array) -> Array:
    total = np.cumsum(flag, dtype=np.int64)
    before = np.zeros(len(flag), dtype=np.int64)
    if len(flag):
        start_of = np.repeat(meter_start, np.diff(np.r_[meter_start, len(flag)]))
        before = total[start_of] - flag[start_of]
    result: Array = total - before
    return result


def _segmented_running_max(u: Array, start: Array) -> Array:
    if not len(u):
        return u
    segment = np.cumsum(start) - 1
    low, high = int(u.min()), int(u.max())
    span = high - low + 1
    if span * (int(segment[-1]) + 1) < 2**62:
        # Later segments are lifted above all earlier values, so one running maximum serves all.
        lifted = (u - low) + segment * span
        result: Array = np.maximum.accumulate(lifted) - segment * span + low
        return result
    out = u.copy()
    bounds = np.r_[np.flatnonzero(start), len(u)]
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        out[a:b] = np.maximum.accumulate(u[a:b])
    return out


def _half_hours(s: Steps) -> tuple[Array, Array, Array, Array, list[tuple[int, int, int, int, str]]]:
    """Every half-hour a step overlaps, with its kWh and quality, and the gap records.

    One function of vectorised steps over the same arrays (longer than 50 lines on purpose:
    split, each part would take and return a dozen of them)."""
    k = np.flatnonzero(~s.first)
    t1 = s.t1[k]
    t0 = t1 - s.dt[k]
    first_iv = t0 // HALF_HOUR
    count = -(-t1 // HALF_HOUR) - first_iv
    step = np.repeat(k, count)
    offset = np.arange(len(step)) - np.repeat(np.cumsum(count) - count, count)
    iv = np.repeat(first_iv, count) + offset
    start = iv * HALF_HOUR
    p_t1 = s.t1[step]
    p_dt = s.dt[step]
    cov = np.minimum(p_t1, start + HALF_HOUR) - np.maximum(p_t1 - p_dt, start)
    p_d = s.d[step]

    head = group_starts(s.meter[step], iv)
    group = np.cumsum(head) - 1
    at = np.flatnonzero(head)
    g_meter, g_iv = s.meter[step][at], iv[at]

    def per_group(values: Array) -> Array:
        summed: Array = np.add.reduceat(values.astype(np.int64), at) if len(at) else np.zeros(0, np.int64)
        return summed

    covered = per_group(cov) == HALF_HOUR
    bad = per_group(~s.usable[step])
    estimated = per_group(~s.actual[step])
    breaks = per_group(s.cls[step] == BREAK)
    resets = per_group(s.cls[step] == RESET)
    missing = ~covered | (bad > 0)
    kwh = _rounded_sums(group, len(at), p_d, cov, p_dt)
    iv_kwh = np.where(missing, -1, kwh)
    quality = np.where(missing, MISSING, np.where(estimated > 0, ESTIMATED, ACTUAL))
    if (iv_kwh < -1).any():
        raise ArithmeticError("a negative half-hour kWh was computed; nothing was written")

    # Gap records: maximal runs of fully covered MISSING half-hours.
    gap_iv = np.flatnonzero(covered & missing)
    run_head = group_starts(g_meter[gap_iv], g_iv[gap_iv] - np.arange(len(gap_iv)))
    run = np.cumsum(run_head) - 1
    run_of_group = np.full(len(at), -1, dtype=np.int64)
    run_of_group[gap_iv] = run
    n_runs = int(run_head.sum())
    gaps: list[tuple[int, int, int, int, str]] = []
    if n_runs:
        in_gap = run_of_group[group] >= 0
        run_kwh = _rounded_sums(run_of_group[group][in_gap], n_runs, p_d[in_gap], cov[in_gap], p_dt[in_gap])
        run_at = np.flatnonzero(run_head)
        run_end = np.r_[run_at[1:], len(gap_iv)] - 1
        run_breaks = np.add.reduceat(breaks[gap_iv], run_at)
        run_resets = np.add.reduceat(resets[gap_iv], run_at)
        for r in range(n_runs):
            a, b = gap_iv[run_at[r]], gap_iv[run_end[r]]
            reason = "BREAK" if run_breaks[r] else "GAP_RESET_LOWER_BOUND" if run_resets[r] else "GAP"
            gaps.append(
                (
                    int(g_meter[a]),
                    int(g_iv[a]) * HALF_HOUR,
                    (int(g_iv[b]) + 1) * HALF_HOUR,
                    -1 if run_breaks[r] else int(run_kwh[r]),
                    reason,
                )
            )
    return g_meter, g_iv * HALF_HOUR, iv_kwh, quality, gaps


def _rounded_sums(group: Array, n_groups: int, d: Array, cov: Array, dt: Array) -> Array:
    """Per group, round(sum of d x cov / dt, 0) half away from zero, exactly (all terms >= 0)."""
    whole = np.zeros(n_groups, dtype=np.int64)
    np.add.at(whole, group, np.where(cov == dt, d, 0))
    part = cov < dt
    share = np.zeros(n_groups, dtype=np.float64)
    np.add.at(share, group[part], d[part].astype(np.float64) * cov[part] / dt[part])
    rounded = np.floor(share + 0.5)
    fraction = share - np.floor(share)
    # Within a whisker of a half: decide with exact fractions.
    for g in np.flatnonzero(np.abs(fraction - 0.5) <= 1e-6 + share * 1e-12).tolist():
        pieces = np.flatnonzero(part & (group == g))
        exact = sum((Fraction(int(d[p]) * int(cov[p]), int(dt[p])) for p in pieces.tolist()), Fraction(0))
        rounded[g] = int(exact + Fraction(1, 2)) if exact >= 0 else -int(-exact + Fraction(1, 2))
    result: Array = whole + rounded.astype(np.int64)
    return result


def _checkpoints(s: Steps) -> tuple[Array, Array, Array, Array]:
    """The last reading of each UTC day whose incoming step was a plain one (or the first)."""
    day = s.t1 // DAY
    last_of_day = np.ones(len(day), dtype=bool)
    if len(day):
        last_of_day[:-1] = (day[1:] != day[:-1]) | (s.meter[1:] != s.meter[:-1])
    plain = (s.cls == NORMAL) | (s.cls == NOISE) | (s.cls == ROLLOVER)
    pick = last_of_day & (s.first | (s.usable & plain))
    return s.meter[pick], s.t1[pick], s.v1[pick], s.e_rel[pick]
