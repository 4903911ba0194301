"""Value conversions done in Python, only where PostgreSQL's own input functions cannot decide.

Most values go to PostgreSQL as text and its input functions type them (the same rules on the
fast and the robust path). Python steps in where PostgreSQL cannot decide: dates and timestamps in a
dataset-declared format, numbers written the continental way (`1.234,56`), and local timestamps
in a zone with daylight saving, where a time that does not exist or happens twice must be a
rejected row rather than a silent guess.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

Converter = Callable[[str], str]

# An offset only counts after a time of day: the "-15" of "2024-01-15" is a day, not an offset.
_OFFSET = re.compile(r"\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[zZ]|[+-]\d{2}(?::?\d{2})?)$")


@lru_cache(maxsize=64)
def is_fixed_offset(zone_name: str) -> bool:
    """True when the zone has one UTC offset for all of 1970–2050 (UTC, Etc/GMT-5, …)."""
    zone = ZoneInfo(zone_name)
    offsets = {
        datetime(year, month, 15, 12, tzinfo=zone).utcoffset()
        for year in range(1970, 2051)
        for month in (1, 4, 7, 10)
    }
    return len(offsets) == 1


def has_offset(value: str) -> bool:
    """The timestamp text carries a UTC offset (`Z`, `+01:00`)."""
    return bool(_OFFSET.search(value.strip()))


def localise(naive: datetime, zone: ZoneInfo) -> datetime:
    """Attach `zone`, refusing local times that do not exist or are ambiguous."""
    early = naive.replace(tzinfo=zone, fold=0)
    round_trip = early.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    if round_trip != naive:
        raise ValueError(
            f"local time {naive:%Y-%m-%d %H:%M} does not exist in {zone.key} (clocks went "
            "forward); send it with a UTC offset"
        )
    if early.utcoffset() != naive.replace(tzinfo=zone, fold=1).utcoffset():
        raise ValueError(
            f"local time {naive:%Y-%m-%d %H:%M} happens twice in {zone.key} (clocks went back); "
            "send it with a UTC offset"
        )
    return early


def timestamp_converter(zone_name: str, formats: tuple[str, ...]) -> Converter:
    """Values with an offset pass through; naive ones are parsed and localised in `zone_name`."""
    zone = ZoneInfo(zone_name)

    def convert(value: str) -> str:
        text = value.strip()
        for fmt in formats:
            try:
                parsed = datetime.strptime(text, fmt)
            except ValueError:
                continue
            return (parsed if parsed.tzinfo else localise(parsed, zone)).isoformat()
        if has_offset(text):
            return text
        try:
            naive = datetime.fromisoformat(text)
        except ValueError:
            return value  # not ISO either: PostgreSQL decides, and rejects it with its reason
        return localise(naive, zone).isoformat()

    return convert


def date_converter(formats: tuple[str, ...]) -> Converter:
    """A converter that reads dates in the column's declared formats as ISO dates."""

    def convert(value: str) -> str:
        text = value.strip()
        for fmt in formats:
            try:
                return datetime.strptime(text, fmt).date().isoformat()
            except ValueError:
                continue
        return value

    return convert


def number_converter(decimal: str, thousands: str) -> Converter:
    """Numbers written the dataset's way (`1.234,56`) as PostgreSQL reads them (`1234.56`); a
    value written any other way is refused, so the row is rejected naming the column."""
    separators = "[ \u00a0\u202f]" if thousands == " " else re.escape(thousands)
    whole = rf"(?:\d{{1,3}}(?:{separators}\d{{3}})+|\d+)" if thousands else r"\d+"
    pattern = re.compile(rf"[+-]?(?:{whole}(?:{re.escape(decimal)}\d*)?|{re.escape(decimal)}\d+)")
    example = f"1{thousands}234{decimal}56" if thousands else f"1234{decimal}56"
    strip = str.maketrans("", "", " \u00a0\u202f" if thousands == " " else thousands)

    def convert(value: str) -> str:
        text = value.strip()
        # Without thousands, as the fast path's SQL: no point allowed, PostgreSQL checks the rest.
        if pattern.fullmatch(text) if thousands else "." not in text:
            return text.translate(strip).replace(decimal, ".")
        raise ValueError(f"not a number written as this dataset declares (e.g. {example})")

    return convert


_LONE_DECIMAL_COMMA = re.compile(r"\s*[+-]?\d*,\d+\s*")


def lone_decimal_comma(value: str) -> str:
    """`1,5` as `1.5`: in a file not separated by commas, a number with one comma and nothing
    else can only be written the continental way (what a spreadsheet in such a locale saves).
    Anything else goes to PostgreSQL as it is, which decides."""
    if "," in value and _LONE_DECIMAL_COMMA.fullmatch(value):
        return value.replace(",", ".")
    return value
