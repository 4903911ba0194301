"""A block of CSV lines seen and numbered whole (services/ingest/csv_blocks.py). Pure logic."""

from __future__ import annotations

import numpy as np
import pytest

from services.ingest.csv_blocks import line_ends, numbered, see, without


def seen(data: bytes, width: int = 3, delimiter: bytes = b",") -> tuple[bool, list[int], list[int]]:
    result = see(data, data.count(b"\n") + 1, delimiter, width)
    return result.gaps, result.ends.tolist(), result.wrong.tolist()


def test_a_clean_block_gives_its_line_ends() -> None:
    assert seen(b"a,b,c\nd,e,f\ng,h,i") == (False, [5, 11], [])
    assert seen(b"a;b;c\r\nd;e;f\r", delimiter=b";") == (False, [6], [])
    assert seen(b"a b,c d,e\nf,g,h") == (False, [9], [])  # blanks inside a field are no gap


@pytest.mark.parametrize(
    "data",
    [
        b"a,,c\nd,e,f",  # an empty field
        b"a,b,c\n,e,f",  # an empty first field
        b"a,b,c\nd,e,",  # an empty last field, last line
        b"a,b,\nd,e,f",  # an empty last field
        b"a,b,c\n\nd,e,f",  # a blank line
        b"a,b,c\n  \nd,e,f",  # a line of blanks
        b"a, ,c\nd,e,f",  # a field of blanks
        b"a,b,\r\nd,e,f\r",  # an empty last field before CR LF
        b"a,b,c\r\n\r\nd,e,f\r",  # a blank CR LF line
        b"",  # one blank line
    ],
)
def test_gaps_send_the_block_line_by_line(data: bytes) -> None:
    assert seen(data)[0] is True


def test_lines_with_a_field_too_many_or_too_few_are_named() -> None:
    assert seen(b"a,b,c\nd,e\nf,g,h,i\nj,k,l") == (False, [5, 9, 17], [1, 2])
    assert seen(b"a,b\nc,d,e,f") == (False, [3], [0, 1])
    # The counts can even out over the block: each line is checked, not the total.
    assert seen(b"a,b,c,d\ne,f") == (False, [7], [0, 1])


def test_without_takes_the_named_lines_out() -> None:
    data = b"l0\nl1\nl2\nl3\nl4"
    ends = line_ends(data)

    assert without(data, ends, np.array([1, 2])) == (b"l0\nl3\nl4", [b"l1", b"l2"])
    assert without(data, ends, np.array([0, 4])) == (b"l1\nl2\nl3", [b"l0", b"l4"])
    assert without(data, ends, np.arange(5)) == (b"", [b"l0", b"l1", b"l2", b"l3", b"l4"])


def test_numbers_share_the_width_of_the_last_one() -> None:
    data = b"a,b\nc,d\ne,f\ng,h"

    lines = numbered(data, line_ends(data), b"7,", b",", np.arange(98, 102))

    assert lines == b"7,098,a,b\n7,099,c,d\n7,100,e,f\n7,101,g,h\n"


def test_numbers_may_skip_and_lines_keep_their_cr() -> None:
    data = b"a;b\r\nc;d\r"

    lines = numbered(data, line_ends(data), b"12;", b";", np.array([9, 11]))

    assert lines == b"12;09;a;b\r\n12;11;c;d\r\n"


def test_one_line() -> None:
    assert numbered(b"x", line_ends(b"x"), b"1,", b",", np.array([1_234_567])) == b"1,1234567,x\n"
