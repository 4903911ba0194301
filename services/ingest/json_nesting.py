"""How deep arrays and objects nest in JSON text, counted on the bytes before any parser sees them.

A parser pays for depth: ijson keeps a path string per open level, so memory grows with the
square of the depth (100,000 levels took more than 20 GB), and Python's json decoder and every
recursive walk over a record recurse once per level. loadbay therefore refuses nesting deeper
than `MAX_JSON_DEPTH` on the raw text, in blocks, with bytes methods only (translate, replace,
count): a pure-Python loop over every byte would cost more than the parsing itself. The loop in
`_offset_past_limit` runs only once the count says the limit is passed, to say exactly where.
"""

from __future__ import annotations

import re
from itertools import accumulate

MAX_JSON_DEPTH = 64

_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_OPENERS, _CLOSERS = frozenset(b"[{"), frozenset(b"]}")
_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'"[]{}')))
_STRING = re.compile(rb'"[^"]*"')
_STEP = [0] * 256
for _byte in _OPENERS:
    _STEP[_byte] = 1
for _byte in _CLOSERS:
    _STEP[_byte] = -1


class NestingCounter:
    """The nesting depth of a JSON text fed block by block (a string may span two blocks)."""

    def __init__(self, limit: int = MAX_JSON_DEPTH) -> None:
        self.limit = limit
        self.depth = 0
        self._in_string = False
        self._escape_pending = False  # the last block ended in an odd run of backslashes

    def feed(self, block: bytes) -> int | None:
        """The offset in `block` of the bracket that opens one level too many, or None.

        Valid JSON is counted exactly. Where the text is not JSON the count may differ from a
        parser's, but only after the first error, where the parser stops anyway.
        """
        text = b"\\" + block if self._escape_pending else block
        kept = text.rstrip(b"\\")
        escape_pending = (len(text) - len(kept)) % 2 == 1
        if b"\\" in kept:
            # Escaped backslashes, then escaped quotes: neither delimits a string.
            kept = kept.replace(b"\\\\", b"").replace(b'\\"', b"")
        marks = kept.translate(None, _NOT_STRUCTURE)
        if self._in_string:
            marks = b'"' + marks
        # Two adjacent quotes end or start an empty stretch: dropping them keeps every bracket
        # on the same side of a string boundary. What is left of strings holds brackets.
        marks = marks.replace(b'""', b"")
        in_string = False
        if b'"' in marks:
            marks = _STRING.sub(b"", marks)
            unclosed = marks.find(b'"')
            if unclosed >= 0:
                in_string = True
                marks = marks[:unclosed]
        # Dropping the innermost pairs ({} then [], one pass each) lowers the deepest point by at
        # most 2 and leaves records of plain fields with no brackets: usually nothing to add up.
        inner = marks.replace(b"{}", b"").replace(b"[]", b"")
        opens = inner.count(b"[") + inner.count(b"{")
        if self.depth + opens + 2 > self.limit:
            deepest = max(accumulate(map(_STEP.__getitem__, marks), initial=self.depth))
            if deepest > self.limit:
                return _offset_past_limit(
                    block, self.depth, self.limit, self._in_string, self._escape_pending
                )
        self.depth += 2 * opens - len(inner)
        self._in_string = in_string
        self._escape_pending = escape_pending
        return None


def _offset_past_limit(block: bytes, depth: int, limit: int, in_string: bool, escaped: bool) -> int:
    """Byte by byte from a known state: where the depth first exceeds `limit`."""
    for offset, byte in enumerate(block):
        if in_string:
            if escaped:
                escaped = False
            elif byte == _BACKSLASH:
                escaped = True
            elif byte == _QUOTE:
                in_string = False
        elif byte == _QUOTE:
            in_string = True
        elif byte in _OPENERS:
            depth += 1
            if depth > limit:
                return offset
        elif byte in _CLOSERS:
            depth -= 1
    # Only text that is not JSON (a backslash outside a string) reads differently byte by byte.
    return len(block) - 1


def first_offset_too_deep(text: bytes, limit: int = MAX_JSON_DEPTH) -> int | None:
    """Where a whole JSON text (an NDJSON line) first nests deeper than `limit`, or None."""
    if len(text) <= 2 * limit or text.count(b"[") + text.count(b"{") <= limit:
        # The usual line: too few brackets to nest that deep (valid JSON closes each one; text
        # that is not JSON fails to parse within this many levels).
        return None
    return NestingCounter(limit).feed(text)
