"""Value conversions done in Python: declared formats and local times in zones with daylight saving."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.ingest.values import date_converter, has_offset, is_fixed_offset, localise, timestamp_converter

LONDON = ZoneInfo("Europe/London")
GAP = (
    "local time 2024-03-31 01:30 does not exist in Europe/London (clocks went forward); "
    "send it with a UTC offset"
)
OVERLAP = (
    "local time 2024-10-27 01:30 happens twice in Europe/London (clocks went back); send it with a UTC offset"
)


@pytest.mark.parametrize(
    ("zone", "fixed"),
    [
        ("UTC", True),
        ("Etc/UTC", True),
        ("Etc/GMT-5", True),
        ("Etc/GMT+10", True),
        ("Asia/Kolkata", True),
        ("Asia/Tokyo", True),
        ("Europe/London", False),
        ("America/New_York", False),
        ("Australia/Sydney", False),  # daylight saving in the southern summer
        ("Europe/Moscow", False),  # no daylight saving since 2014, but the offset changed in 2011 and 2014
    ],
)
def test_is_fixed_offset(zone: str, fixed: bool) -> None:
    assert is_fixed_offset(zone) is fixed


@pytest.mark.parametrize(
    "value",
    [
        "2024-01-15T00:30:00Z",
        "2024-01-15 00:30:00z",
        "2024-01-15T00:30:00+01:00",
        "2024-01-15T00:30:00-0530",
        "2024-01-15 00:30:00+01",
        " 2024-01-15T00:30:00+00:00 ",
    ],
)
def test_has_offset_true(value: str) -> None:
    assert has_offset(value)


@pytest.mark.parametrize(
    "value", ["2024-01-15T00:30:00", "2024-01-15 00:30", "20240115T003000", "15/01/2024 00:30"]
)
def test_has_offset_false(value: str) -> None:
    assert not has_offset(value)


def test_a_date_only_value_has_no_offset() -> None:
    assert not has_offset("2024-01-15")


# --- localise -------------------------------------------------------------------------------------


def test_localise_an_ordinary_time() -> None:
    assert localise(datetime(2024, 7, 1, 12, 0), LONDON).utcoffset() == timedelta(hours=1)
    assert localise(datetime(2024, 1, 15, 12, 0), LONDON).utcoffset() == timedelta(0)


def test_localise_refuses_a_time_that_happens_twice() -> None:
    with pytest.raises(ValueError) as caught:
        localise(datetime(2024, 10, 27, 1, 30), LONDON)

    assert str(caught.value) == OVERLAP


def test_localise_refuses_a_time_that_does_not_exist() -> None:
    with pytest.raises(ValueError) as caught:
        localise(datetime(2024, 3, 31, 1, 30), LONDON)

    assert str(caught.value) == GAP


def test_localise_at_the_edges_of_the_gap_and_the_overlap() -> None:
    assert localise(datetime(2024, 3, 31, 0, 59), LONDON).isoformat() == "2024-03-31T00:59:00+00:00"
    assert localise(datetime(2024, 3, 31, 2, 0), LONDON).isoformat() == "2024-03-31T02:00:00+01:00"
    assert localise(datetime(2024, 10, 27, 0, 59), LONDON).isoformat() == "2024-10-27T00:59:00+01:00"
    assert localise(datetime(2024, 10, 27, 2, 0), LONDON).isoformat() == "2024-10-27T02:00:00+00:00"
    for minute in (0, 59):
        with pytest.raises(ValueError):
            localise(datetime(2024, 10, 27, 1, minute), LONDON)
        with pytest.raises(ValueError):
            localise(datetime(2024, 3, 31, 1, minute), LONDON)


# --- timestamp_converter --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-15 12:00", "2024-01-15T12:00:00+00:00"),
        ("2024-07-01T12:00:00", "2024-07-01T12:00:00+01:00"),
        ("2024-07-01T12:00:00.250", "2024-07-01T12:00:00.250000+01:00"),
        (" 2024-07-01 12:00 ", "2024-07-01T12:00:00+01:00"),
        ("2024-10-27T01:30:00+01:00", "2024-10-27T01:30:00+01:00"),  # offsets pass unchanged
        ("2024-03-31 01:30Z", "2024-03-31 01:30Z"),
        (" 2024-03-31T01:30:00-0500", "2024-03-31T01:30:00-0500"),
        ("yesterday", "yesterday"),  # not ISO: left to PostgreSQL, which rejects it with its reason
    ],
)
def test_timestamp_converter_in_london(value: str, expected: str) -> None:
    assert timestamp_converter("Europe/London", ())(value) == expected


def test_timestamp_converter_rejects_the_overlap() -> None:
    with pytest.raises(ValueError) as caught:
        timestamp_converter("Europe/London", ())("2024-10-27 01:30")

    assert str(caught.value) == OVERLAP


def test_timestamp_converter_rejects_the_gap() -> None:
    with pytest.raises(ValueError) as caught:
        timestamp_converter("Europe/London", ())("2024-03-31 01:30")

    assert str(caught.value) == GAP


def test_timestamp_converter_with_formats() -> None:
    convert = timestamp_converter("Europe/London", ("%d/%m/%Y %H:%M", "%d/%m/%Y %H:%M %z"))

    assert convert("15/01/2024 12:00") == "2024-01-15T12:00:00+00:00"
    assert convert("01/07/2024 12:00") == "2024-07-01T12:00:00+01:00"
    assert convert("01/07/2024 12:00 +0200") == "2024-07-01T12:00:00+02:00"
    assert convert("2024-07-01T12:00:00") == "2024-07-01T12:00:00+01:00"  # ISO still accepted
    assert convert("2024-07-01T12:00:00Z") == "2024-07-01T12:00:00Z"
    assert convert("31/02/2024 12:00") == "31/02/2024 12:00"  # left to PostgreSQL to reject
    with pytest.raises(ValueError) as caught:
        convert("27/10/2024 01:30")
    assert str(caught.value) == OVERLAP


def test_timestamp_converter_with_formats_in_utc() -> None:
    assert timestamp_converter("UTC", ("%Y%m%d%H%M%S",))("20240131174501") == "2024-01-31T17:45:01+00:00"


# --- date_converter -------------------------------------------------------------------------------


def test_date_converter_tries_each_format_in_order() -> None:
    convert = date_converter(("%d/%m/%Y", "%m-%d-%y", "%d.%m.%Y"))

    assert convert("15/01/2024") == "2024-01-15"
    assert convert("01-31-24") == "2024-01-31"
    assert convert(" 16.01.2024 ") == "2024-01-16"
    assert convert("05/04/2024") == "2024-04-05"  # the first format that fits wins
    assert convert("2024-01-17") == "2024-01-17"
    assert convert("31/02/2024") == "31/02/2024"  # no format fits: left to PostgreSQL


def test_results_are_timezone_aware_for_every_naive_input() -> None:
    convert = timestamp_converter("America/New_York", ())
    parsed = datetime.fromisoformat(convert("2024-07-04 09:00"))

    assert parsed.astimezone(UTC) == datetime(2024, 7, 4, 13, 0, tzinfo=UTC)
