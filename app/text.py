"""Plain-text tables for the terminal: one way to line up what a command prints."""

from __future__ import annotations

from collections.abc import Sequence


def table(
    rows: Sequence[Sequence[object]],
    header: Sequence[str] | None = None,
    *,
    right: Sequence[int] = (),
    rule: bool = False,
    last_unpadded: bool = True,
) -> list[str]:
    """Rows as lines of aligned columns two spaces apart; `right` lists the columns aligned right
    (numbers), `rule` underlines the header with dashes. The last column is not padded (it holds
    free text) unless `last_unpadded` is False."""
    cells = [[str(c) for c in row] for row in ([header] if header else []) + list(rows)]
    if not cells:
        return []
    count = len(cells[0])
    widths = [max(len(row[i]) for row in cells) for i in range(count)]
    if last_unpadded and header:
        widths[-1] = len(header[-1])
    if rule and header:
        cells.insert(1, ["-" * w for w in widths])
    lines = []
    for row in cells:
        parts = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
    return lines
