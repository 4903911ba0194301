"""How a file's (or an ERP table's) field names map onto a dataset's columns: one rule for every
source. Header matching ignores case, spaces and underscores (`Ship Address 1` = `ship_address1`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from models.datasets import ColumnSpec, DatasetSpec, normalise_header


class HeaderProblem(ValueError):
    """The field names cannot feed the dataset: two map to one column (`clash`), or a required
    column is not there (`missing`). The message names the fields; the caller adds the fix."""

    def __init__(self, kind: Literal["clash", "missing"], message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass
class HeaderMap:
    """How the fields of a file's header map onto the dataset's columns."""

    fields: list[str]
    targets: list[ColumnSpec | None]

    @property
    def extras(self) -> list[int]:
        """Positions of the fields no column takes (they go to `_extra`)."""
        return [i for i, t in enumerate(self.targets) if t is None]

    def mapped(self) -> list[tuple[int, ColumnSpec]]:
        """(position, column) of every field a column takes, in field order."""
        return [(i, t) for i, t in enumerate(self.targets) if t is not None]


def match_header(fields: list[str], dataset: DatasetSpec) -> HeaderMap:
    """The columns `fields` feed; HeaderProblem when they clash or a required one is missing."""
    by_name = {name: column for column in dataset.columns for name in column.matches()}
    targets: list[ColumnSpec | None] = []
    seen: dict[str, str] = {}
    for field_name in fields:
        column = by_name.get(normalise_header(field_name)) if field_name.strip() else None
        if column is not None and column.column in seen:
            raise HeaderProblem(
                "clash",
                f"header fields {seen[column.column]!r} and {field_name!r} both map to column "
                f"{column.column!r} of dataset {dataset.name}",
            )
        if column is not None:
            seen[column.column] = field_name
        targets.append(column)
    expected = ", ".join(c.source for c in dataset.columns)
    missing = [c.source for c in dataset.columns if c.required and c.column not in seen]
    missing += [
        " or ".join(dataset.column(c).source for c in group)
        for group in dataset.require_any
        if not set(group) & set(seen)
    ]
    if missing:
        raise HeaderProblem(
            "missing",
            f"required column(s) missing for dataset {dataset.name}: {', '.join(missing)}. "
            f"Found: {', '.join(fields) or '(nothing)'}. Expected: {expected}",
        )
    return HeaderMap(fields, targets)
