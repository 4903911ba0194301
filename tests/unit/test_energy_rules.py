"""The exact arithmetic under the numpy energy route: comparisons whose products overflow int64
and roundings of sums of fractions that fall exactly on, or a hair either side of, a half."""

from __future__ import annotations

import numpy as np

from services.energy.rules import HOUR_UWH, _rounded_sums, decimal_text, products_le, within_bound


def test_products_le_is_exact_where_int64_and_float_are_not() -> None:
    big = 3_000_000_007
    a = np.array([big, big, big], dtype=np.int64)
    b = np.array([big, big, big], dtype=np.int64)
    c = np.array([big, big - 1, big + 1], dtype=np.int64)
    d = np.array([big, big + 1, big], dtype=np.int64)
    # big^2 vs big^2, big^2 - 1, big^2 + big: only one unit apart in the second case.
    assert products_le(a, b, c, d).tolist() == [True, False, True]


def test_the_plausibility_bound_is_inclusive_to_the_micro_kwh() -> None:
    # 100 kW for 600 s is 16.666666... kWh; with 0.01 kWh noise the bound is 16.676666...
    dt = np.array([600_000_000] * 3, dtype=np.int64)
    max_kw = np.array([100_000_000] * 3, dtype=np.int64)
    delta = np.array([16_676_666, 16_676_667, 16_676_666 + 10**12], dtype=np.int64)
    assert within_bound(delta, dt, max_kw, 10_000).tolist() == [True, False, False]
    assert HOUR_UWH == 3_600_000_000


def test_sums_of_fractions_round_half_away_from_zero_exactly() -> None:
    # Group 0: 1 x 1/2 = 0.5 -> 1. Group 1: 1/3 + 1/6 = 0.5 (inexact in binary) -> 1.
    # Group 2: 7 + 2 x 999999/1000000 = 8.999998 -> 9. Group 3: whole steps only, 5 + 6 = 11.
    # Group 4: 0.4999999 (just under a half, by 10^-7) -> 0.
    group = np.array([0, 1, 1, 2, 2, 3, 3, 4], dtype=np.int64)
    d = np.array([1, 1, 1, 2, 7, 5, 6, 4_999_999], dtype=np.int64)
    cov = np.array([1, 1, 1, 999_999, 10, 3, 4, 1], dtype=np.int64)
    dt = np.array([2, 3, 6, 1_000_000, 10, 3, 4, 10_000_000], dtype=np.int64)
    assert _rounded_sums(group, 5, d, cov, dt).tolist() == [1, 1, 9, 11, 0]


def test_values_are_written_back_with_their_own_scale_as_postgresql_prints_them() -> None:
    assert decimal_text(100_500_000, 3) == "100.500"
    assert decimal_text(-1_500_000, 1) == "-1.5"
    assert decimal_text(0, 0) == "0"
    assert decimal_text(12, 6) == "0.000012"
