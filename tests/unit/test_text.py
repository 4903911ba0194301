from __future__ import annotations

from app.text import table


def test_a_table_lines_up_columns_and_aligns_numbers_right() -> None:
    lines = table(
        [("a.csv", "loaded", 12, "x"), ("long_name.csv", "failed", 0, "")],
        ("file", "status", "rows", "note"),
        right=(2,),
        rule=True,
    )
    assert lines == [
        "file           status  rows  note",
        "-------------  ------  ----  ----",
        "a.csv          loaded    12  x",
        "long_name.csv  failed     0",
    ]


def test_no_rows_no_header_is_no_lines() -> None:
    assert table([]) == []
