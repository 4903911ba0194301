"""The nesting count on raw JSON bytes agrees with a plain byte-by-byte reading, however split."""

from __future__ import annotations

import json
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest.json_nesting import NestingCounter, first_offset_too_deep

# Strings full of what could fool a count: brackets, quotes, backslashes, escapes.
_TEXT = st.text(alphabet='[]{}"\\ab\n\u00e9', max_size=12)
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=40,
)


def _reference(text: bytes, limit: int) -> int | None:
    """The offset of the first bracket opening level limit+1, reading one byte at a time."""
    depth, in_string, escaped = 0, False, False
    for offset, byte in enumerate(text):
        char = chr(byte)
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return offset
        elif char in "]}":
            depth -= 1
    return None


@settings(max_examples=400, deadline=None)
@given(value=_VALUES, limit=st.integers(0, 6), cuts=st.lists(st.integers(0, 400), max_size=6))
def test_count_in_blocks_matches_a_byte_by_byte_reading(value: object, limit: int, cuts: list[int]) -> None:
    text = json.dumps(value, ensure_ascii=False).encode()
    bounds = sorted({0, len(text), *(c for c in cuts if c < len(text))})
    counter = NestingCounter(limit)
    found = None
    for start, stop in pairwise(bounds):
        offset = counter.feed(text[start:stop])
        if offset is not None:
            found = start + offset
            break
    assert found == _reference(text, limit)
    if found is None:
        assert counter.depth == 0


def test_a_whole_line_is_checked_only_when_it_has_enough_brackets() -> None:
    assert first_offset_too_deep(b"[" * 65 + b"]" * 65) == 64
    assert first_offset_too_deep(b"[" * 64 + b"]" * 64) is None
    assert first_offset_too_deep(b'["' + b"[" * 100 + b'"]') is None
    prefix = b'{"a": "\\\\", "b": '  # an escaped backslash just before a closing quote
    assert first_offset_too_deep(prefix + b"[" * 64 + b"]" * 64 + b"}") == len(prefix) + 63
