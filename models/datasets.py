"""Datasets are declared, not coded: name, file patterns, staging table, key and column mapping.

The four built-ins live here as data; users add or adjust datasets in `datasets.toml`.
"""

from __future__ import annotations

import codecs
import fnmatch
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ColumnType = Literal["text", "integer", "numeric", "boolean", "date", "timestamptz"]

SQL_TYPES: dict[str, str] = {
    "text": "text",
    "integer": "bigint",
    "numeric": "numeric",
    "boolean": "boolean",
    "date": "date",
    "timestamptz": "timestamptz",
}

# How a person is told what a valid value looks like, per column type.
TYPE_EXPECTATIONS: dict[str, str] = {
    "text": "text",
    "integer": "a whole number",
    "numeric": "a number",
    "boolean": "a boolean (1/0, true/false, yes/no, y/n)",
    "date": "a date (YYYY-MM-DD)",
    "timestamptz": "a timestamp (ISO 8601, e.g. 2024-01-15T00:30:00Z)",
}

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def normalise_header(name: str) -> str:
    """Header matching ignores case, spaces and underscores: `Ship Address 1` = `ship_address1`."""
    return re.sub(r"[\s_]+", "", name.strip().lstrip("\ufeff")).lower()


def is_ascii_compatible(encoding: str) -> bool:
    """ASCII text is the same bytes in this encoding (lines split on b"\\n" before decoding)."""
    return "a,1\n".encode(encoding) == b"a,1\n"


def _check_identifier(value: str) -> str:
    if not _IDENTIFIER.match(value):
        raise ValueError(f"{value!r} is not a plain identifier (lower-case letters, digits, _)")
    return value


class ColumnSpec(BaseModel):
    """One staging column and the source field(s) it comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str
    source: str = ""
    type: ColumnType = "text"
    required: bool = False
    aliases: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()

    @field_validator("column")
    @classmethod
    def _column_identifier(cls, value: str) -> str:
        return _check_identifier(value)

    @model_validator(mode="after")
    def _default_source(self) -> ColumnSpec:
        if not self.source:
            object.__setattr__(self, "source", self.column)
        return self

    def matches(self) -> set[str]:
        """The normalised header names that map to this column."""
        return {normalise_header(n) for n in (self.source, self.column, *self.aliases)}


class ChildSpec(BaseModel):
    """An array of objects inside a record whose items are rows of another dataset (JSON only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str
    dataset: str
    # Parent fields copied into each child row that does not carry them itself.
    inherit: tuple[str, ...] = ()


class DatasetSpec(BaseModel):
    """A dataset: which files belong to it and how their fields become typed staging columns."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    patterns: tuple[str, ...]
    table: str
    key: tuple[str, ...] = ()
    columns: tuple[ColumnSpec, ...]
    # Each group needs at least one non-empty value per row (e.g. register_kwh or power_w).
    require_any: tuple[tuple[str, ...], ...] = ()
    encoding: str = "utf-8"
    # Delimited text: the field delimiter (None: found from the header line) and the quote.
    delimiter: Literal[",", ";", "\t", "|"] | None = None
    quote: str = '"'
    # Numbers written the continental way: decimal = ",", thousands = "." (or " "). Undeclared,
    # a lone decimal comma (`1,5`) is still read as one in a file not separated by commas.
    decimal: Literal[".", ","] | None = None
    thousands: Literal["", ".", ",", " ", "'"] = ""
    # Workbooks: the sheet to read (None: the first) and the header row (None: the first
    # non-empty row), counted as Excel counts rows, from 1.
    sheet: str | None = None
    header_row: int | None = Field(None, ge=1)
    max_reject_ratio: float | None = Field(None, ge=0, le=1)
    children: tuple[ChildSpec, ...] = ()

    @field_validator("name", "table")
    @classmethod
    def _name_identifier(cls, value: str) -> str:
        return _check_identifier(value)

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        # One that is not ASCII-compatible (utf-16, utf-32) is transcoded to UTF-8 as it is read.
        try:
            name = codecs.lookup(value).name
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None
        if not is_ascii_compatible(value) and not name.startswith(("utf-16", "utf-32")):
            raise ValueError(f"encoding {value!r} is not ASCII-compatible (use utf-8, latin-1, cp1252…)")
        return value

    @field_validator("quote")
    @classmethod
    def _one_quote_character(cls, value: str) -> str:
        if len(value) != 1 or value in ",;\t|\r\n":
            raise ValueError(f"quote must be one character other than a delimiter or line end, not {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSpec:
        names = [c.column for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset {self.name!r} declares a column twice")
        reserved = {"_file_id", "_record_no", "_extra"}
        if reserved & set(names):
            raise ValueError(f"dataset {self.name!r} uses a reserved column name {reserved}")
        for col in (*self.key, *(c for group in self.require_any for c in group)):
            if col not in names:
                raise ValueError(f"dataset {self.name!r} names unknown column {col!r}")
        if not self.patterns:
            raise ValueError(f"dataset {self.name!r} needs at least one file pattern")
        if self.thousands == self.decimal_mark:
            raise ValueError(f"dataset {self.name!r}: decimal and thousands separators must differ")
        if self.decimal == "," and self.delimiter == ",":
            raise ValueError(f'dataset {self.name!r}: decimal = "," needs another delimiter (e.g. ";")')
        return self

    @property
    def decimal_mark(self) -> str:
        """The declared decimal mark; undeclared, `,` when `.` groups thousands, else `.`."""
        if self.decimal is not None:
            return self.decimal
        return "," if self.thousands == "." else "."

    def column(self, name: str) -> ColumnSpec:
        """The column declaration named `name`."""
        return next(c for c in self.columns if c.column == name)


def _col(column: str, source: str = "", **kw: object) -> ColumnSpec:
    return ColumnSpec(column=column, source=source or column, **kw)


SHIPMENTS = DatasetSpec(
    name="shipments",
    patterns=("shipment*",),
    table="shipments",
    key=("shipment_number",),
    columns=(
        _col("job_number", "JobNumber", required=True),
        _col("shipment_number", "ShipmentNumber", required=True),
        _col("ship_name", "ShipName"),
        _col("ship_address1", "ShipAddress1"),
        _col("ship_address2", "ShipAddress2"),
        _col("ship_address3", "ShipAddress3"),
        _col("ship_city", "ShipCity"),
        _col("ship_state", "ShipState"),
        _col("ship_zip", "ShipZip"),
        _col("ship_country", "ShipCountry"),
        _col("ship_contact", "ShipContact"),
        _col("instructions", "Instructions"),
        _col("ship_phone", "ShipPhone"),
        _col("email", "Email"),
        _col("ship_via", "ShipVia"),
        _col("is_partial", "IsPartial", type="boolean"),
        _col("shipped", "Shipped", type="boolean"),
        _col("ship_via_service", "ShipViaService"),
        _col("scheduled_ship_date", "ScheduledShipDate", type="date"),
        _col("scheduled_ship_quantity", "ScheduledShipQuantity", type="integer"),
    ),
    children=(ChildSpec(field="Packages", dataset="packages", inherit=("JobNumber", "ShipmentNumber")),),
)

PACKAGES = DatasetSpec(
    name="packages",
    patterns=("package*",),
    table="packages",
    key=("package_id",),
    columns=(
        _col("package_id", "PackageID"),
        _col("shipment_number", "ShipmentNumber"),
        _col("job_number", "JobNumber", required=True),
        _col("total_qty_shipped", "TotalQtyShipped", type="integer"),
        _col("description", "Description"),
    ),
)

METER_READINGS = DatasetSpec(
    name="meter_readings",
    patterns=("meter*",),
    table="meter_readings",
    key=("meter_id", "reading_at"),
    columns=(
        _col("meter_id", required=True),
        _col("reading_at", type="timestamptz", required=True, aliases=("timestamp", "ts", "time")),
        _col("register_kwh", type="numeric"),
        _col("power_w", type="numeric"),
    ),
    require_any=(("register_kwh", "power_w"),),
)

SENSOR_READINGS = DatasetSpec(
    name="sensor_readings",
    patterns=("sensor*", "iot*"),
    table="sensor_readings",
    key=("device_name", "reading_at"),
    columns=(
        _col("reading_at", "timestamp", type="timestamptz", required=True),
        _col("device_name", "deviceName", required=True),
        _col("channel1_a", "channel1", type="numeric"),
        _col("channel2_a", "channel2", type="numeric"),
        _col("channel3_a", "channel3", type="numeric"),
        _col("gateway_name", "gatewayName"),
        _col("location"),
        _col("dbm", type="numeric"),
    ),
)

BUILTIN_DATASETS: tuple[DatasetSpec, ...] = (SHIPMENTS, PACKAGES, METER_READINGS, SENSOR_READINGS)


class DatasetRegistry:
    """The datasets loadbay knows: built-ins merged with the user's `datasets.toml`."""

    def __init__(self, datasets: tuple[DatasetSpec, ...]) -> None:
        tables = [d.table for d in datasets]
        if len(set(tables)) != len(tables):
            raise ValueError("two datasets write to the same staging table")
        names = {d.name for d in datasets}
        for dataset in datasets:
            for child in dataset.children:
                if child.dataset not in names or child.dataset == dataset.name:
                    raise ValueError(
                        f"dataset {dataset.name!r}: child array {child.field!r} names unknown "
                        f"dataset {child.dataset!r}"
                    )
        self.datasets = datasets

    @classmethod
    def from_toml(cls, data: dict[str, object]) -> DatasetRegistry:
        """Merge `[datasets.NAME]` tables into the built-ins: new names add a dataset, a
        built-in's name changes only the keys given (columns merge by column name)."""
        unknown = set(data) - {"datasets"}
        if unknown:
            raise ValueError(f"unknown top-level key(s) {sorted(unknown)}; expected [datasets.NAME]")
        merged = {d.name: d.model_dump() for d in BUILTIN_DATASETS}
        entries = data.get("datasets", {})
        if not isinstance(entries, dict):
            raise ValueError("`datasets` must be a table of [datasets.NAME] tables")
        for name, body in entries.items():
            if not isinstance(body, dict):
                raise ValueError(f"[datasets.{name}] must be a table")
            body = dict(body)
            columns = body.pop("columns", {})
            if not isinstance(columns, dict):
                raise ValueError(f"[datasets.{name}.columns] must be a table of column tables")
            base = merged.get(name, {"name": name, "table": name, "columns": []})
            base.update(body)
            by_column = {c["column"]: c for c in base["columns"]}
            for column, spec in columns.items():
                if not isinstance(spec, dict):
                    raise ValueError(
                        f"[datasets.{name}.columns.{column}] must be a table, e.g. "
                        f'{column} = {{ source = "{column}", type = "text" }}'
                    )
                by_column[column] = {**by_column.get(column, {"column": column}), **spec}
            base["columns"] = list(by_column.values())
            merged[name] = base
        return cls(tuple(DatasetSpec.model_validate(d) for d in merged.values()))

    def by_name(self, file_name: str) -> DatasetSpec | None:
        """The dataset whose matching pattern is the most specific (most literal characters)."""
        scored = [
            (len(p.replace("*", "").replace("?", "")), dataset)
            for dataset in self.datasets
            for p in dataset.patterns
            if fnmatch.fnmatchcase(file_name.lower(), p.lower())
        ]
        return max(scored, key=lambda pair: pair[0])[1] if scored else None

    def by_header(self, header: list[str]) -> DatasetSpec | None:
        """The one dataset whose required columns are all present and that maps most fields."""
        found = {normalise_header(h) for h in header}
        scored = []
        for dataset in self.datasets:
            mapped = [c for c in dataset.columns if c.matches() & found]
            names = {c.column for c in mapped}
            complete = all(c.column in names for c in dataset.columns if c.required) and all(
                names & set(group) for group in dataset.require_any
            )
            if complete and mapped:
                scored.append((len(mapped), dataset))
        scored.sort(key=lambda pair: -pair[0])
        if not scored or (len(scored) > 1 and scored[0][0] == scored[1][0]):
            return None
        return scored[0][1]

    def describe(self) -> str:
        """Every dataset with its file patterns, for messages."""
        return "; ".join(f"{d.name} ({', '.join(d.patterns)})" for d in self.datasets)

    def get(self, name: str) -> DatasetSpec:
        """The dataset named `name` (KeyError if none)."""
        return next(d for d in self.datasets if d.name == name)
