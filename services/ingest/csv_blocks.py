"""A block of CSV lines seen whole and numbered whole, with numpy: the fast path's per-byte work.

`see` finds, in one pass of vector operations, what would make COPY stop or load a row it should
not: an empty or blank field, a blank line, a line with more or fewer fields than the header.
`numbered` puts each line of a clean block behind its `_file_id` and `_record_no`.

Why numpy and not bytes methods: the bytes methods held the interpreter for about 0.2 s of CPU a
million rows (a translate and a substring search for the gaps, another translate for the shape, a
split, a `%` format a line), and the loads of one process share the interpreter; this takes about
0.09 s, much of it in numpy loops that let the other loads run (benchmarks/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

LF, CR, SPACE = 10, 13, 32

Offsets = npt.NDArray[np.intp]


@dataclass(frozen=True)
class Seen:
    """What a block of lines holds."""

    gaps: bool  # an empty or blank field, or a blank line: the block is read line by line
    ends: Offsets = field(default_factory=lambda: NONE)  # the LFs between its lines
    wrong: Offsets = field(default_factory=lambda: NONE)  # lines with a field too many or too few


NONE: Offsets = np.empty(0, np.intp)
GAPS = Seen(gaps=True)


def see(data: bytes, count: int, delimiter: bytes, width: int) -> Seen:
    """`count` lines joined by LF, with no quote or NUL byte in them, against a header of `width`
    fields split by `delimiter`."""
    if not data:
        return GAPS
    codes = np.frombuffer(data, np.uint8)
    lf = codes == LF
    separators = lf | (codes == delimiter[0])
    blanks = b" " in data or b"\r" in data  # a field of blanks is empty too: look past them
    apart = separators[(codes != SPACE) & (codes != CR)] if blanks else separators
    if not apart.size or apart[0] or apart[-1] or (apart[1:] & apart[:-1]).any():
        return GAPS
    at = np.flatnonzero(separators)
    is_lf = lf[at]
    ends = at[is_lf]
    # Each line's separators: `width - 1` delimiters, then its LF (the last line has none).
    if at.size == count * width - 1:
        kinds = np.append(is_lf, True).reshape(count, width)
        if not kinds[:, :-1].any() and kinds[:, -1].all():
            return Seen(gaps=False, ends=ends)
    line = np.cumsum(is_lf) - is_lf  # the line each separator is on
    delimiters = np.bincount(line[~is_lf], minlength=count)
    return Seen(gaps=False, ends=ends, wrong=np.flatnonzero(delimiters != width - 1))


def without(data: bytes, ends: Offsets, wrong: Offsets) -> tuple[bytes, list[bytes]]:
    """The lines of `data` but those numbered in `wrong` (in order), and those lines."""
    starts = [0, *(ends + 1).tolist()]
    stops = [*ends.tolist(), len(data)]
    kept, taken, after = [], [], 0  # `after`: the first line not looked at yet
    for line in wrong.tolist():
        if line > after:
            kept.append(data[starts[after] : stops[line - 1]])
        taken.append(data[starts[line] : stops[line]])
        after = line + 1
    if after < len(starts):
        kept.append(data[starts[after] :])
    return b"\n".join(kept), taken


def line_count(data: bytes) -> int:
    """The lines of `data`, joined by LF (a sixth of the time of `bytes.count`)."""
    return int(np.count_nonzero(np.frombuffer(data, np.uint8) == LF)) + 1


def line_ends(data: bytes) -> Offsets:
    """The LFs of `data`."""
    return np.flatnonzero(np.frombuffer(data, np.uint8) == LF)


def numbered(data: bytes, ends: Offsets, head: bytes, delimiter: bytes, numbers: Offsets) -> bytes:
    """The lines of `data` (`ends` are the LFs between them) as COPY lines, each behind `head`,
    its record number (`numbers`, ascending) and `delimiter`.

    Every number of the block is written with as many digits as its last (`0099`, `0100`: COPY
    reads the leading zeros away), so that one `replace` puts a same-sized gap in front of each
    line. The leading digits all the block's numbers share are in the gap already; the others go
    in by position, a digit place at a time.
    """
    count = ends.size + 1
    last = str(numbers[-1])
    varying = 1  # trailing digit places not all numbers share
    while varying < len(last) and int(numbers[0]) // 10**varying != int(last) // 10**varying:
        varying += 1
    gap = head + last[:-varying].encode() + b"0" * varying + delimiter
    lines = bytearray(gap)
    lines += data.replace(b"\n", b"\n" + gap)
    lines += b"\n"
    view = np.frombuffer(lines, np.uint8)
    last_digit = np.empty(count, np.intp)  # where each line's number ends
    last_digit[0] = 0
    last_digit[1:] = ends + 1
    last_digit += np.arange(count) * len(gap) + (len(head) + len(last) - 1)
    rest = numbers % 10**varying
    for place in range(varying):
        view[last_digit - place] = rest % 10 + ord("0")
        rest //= 10
    del view  # the buffer is exported while a view of it lives
    return bytes(lines)
