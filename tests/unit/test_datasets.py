"""Dataset declarations: merging datasets.toml into the built-ins, choosing a dataset for a file."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.datasets import load_registry
from app.errors import ConfigError
from app.settings import Settings
from models.datasets import (
    BUILTIN_DATASETS,
    METER_READINGS,
    SHIPMENTS,
    DatasetRegistry,
    normalise_header,
)

BUILTIN_NAMES = ["shipments", "packages", "meter_readings", "sensor_readings"]


def errors(exc: ValidationError) -> list[tuple[tuple[object, ...], str]]:
    return [(tuple(e["loc"]), e["msg"]) for e in exc.errors()]


# --- normalise_header -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Ship Address 1", "shipaddress1"),
        ("ShipAddress1", "shipaddress1"),
        ("ship_address1", "shipaddress1"),
        ("  SHIP__ADDRESS _1\t", "shipaddress1"),
        ("\ufeffJobNumber", "jobnumber"),
        ("Reading\tAt", "readingat"),
        ("ship-address", "ship-address"),  # only case, spaces and underscores are ignored
        ("Zähler Nr", "zählernr"),
        ("", ""),
    ],
)
def test_normalise_header(raw: str, expected: str) -> None:
    assert normalise_header(raw) == expected


# --- from_toml: merging -----------------------------------------------------------------------------


def test_empty_toml_gives_the_built_ins_unchanged() -> None:
    registry = DatasetRegistry.from_toml({})

    assert registry.datasets == BUILTIN_DATASETS
    assert [d.name for d in registry.datasets] == BUILTIN_NAMES


def test_a_new_dataset_is_added_after_the_built_ins_with_defaults() -> None:
    registry = DatasetRegistry.from_toml(
        {
            "datasets": {
                "customers": {
                    "patterns": ["customer*", "crm_*"],
                    "key": ["customer_id"],
                    "columns": {
                        "customer_id": {"source": "CustomerID", "required": True},
                        "joined": {"type": "date", "formats": ["%d/%m/%Y"]},
                    },
                }
            }
        }
    )

    assert [d.name for d in registry.datasets] == [*BUILTIN_NAMES, "customers"]
    customers = registry.get("customers")
    assert (
        customers.table,
        customers.patterns,
        customers.key,
        customers.encoding,
        customers.require_any,
    ) == (
        "customers",
        ("customer*", "crm_*"),
        ("customer_id",),
        "utf-8",
        (),
    )
    assert customers.max_reject_ratio is None
    assert [(c.column, c.source, c.type, c.required, c.aliases, c.formats) for c in customers.columns] == [
        ("customer_id", "CustomerID", "text", True, (), ()),
        ("joined", "joined", "date", False, (), ("%d/%m/%Y",)),
    ]


def test_overriding_a_built_ins_encoding_changes_only_the_encoding() -> None:
    registry = DatasetRegistry.from_toml({"datasets": {"meter_readings": {"encoding": "cp1252"}}})

    meters = registry.get("meter_readings")
    assert meters.encoding == "cp1252"
    assert meters.model_copy(update={"encoding": "utf-8"}) == METER_READINGS
    assert [d.name for d in registry.datasets] == BUILTIN_NAMES
    assert registry.get("shipments") == SHIPMENTS


def test_overriding_a_columns_aliases_replaces_them_and_keeps_the_rest() -> None:
    registry = DatasetRegistry.from_toml(
        {"datasets": {"meter_readings": {"columns": {"reading_at": {"aliases": ["Zeitstempel", "ts"]}}}}}
    )

    meters = registry.get("meter_readings")
    reading_at = meters.column("reading_at")
    assert (reading_at.source, reading_at.type, reading_at.required, reading_at.aliases) == (
        "reading_at",
        "timestamptz",
        True,
        ("Zeitstempel", "ts"),
    )
    assert reading_at.matches() == {"readingat", "zeitstempel", "ts"}
    assert [c.column for c in meters.columns] == ["meter_id", "reading_at", "register_kwh", "power_w"]
    assert [c for c in meters.columns if c.column != "reading_at"] == [
        c for c in METER_READINGS.columns if c.column != "reading_at"
    ]
    assert (meters.patterns, meters.key, meters.require_any) == (
        METER_READINGS.patterns,
        METER_READINGS.key,
        METER_READINGS.require_any,
    )


def test_a_new_column_on_a_built_in_is_appended() -> None:
    registry = DatasetRegistry.from_toml(
        {"datasets": {"packages": {"columns": {"weight_kg": {"source": "Weight", "type": "numeric"}}}}}
    )

    packages = registry.get("packages")
    assert [c.column for c in packages.columns] == [
        "package_id",
        "shipment_number",
        "job_number",
        "total_qty_shipped",
        "description",
        "weight_kg",
    ]
    assert packages.column("weight_kg").source == "Weight"


# --- from_toml: refusals --------------------------------------------------------------------------


def test_unknown_top_level_key_is_refused() -> None:
    with pytest.raises(ValueError) as caught:
        DatasetRegistry.from_toml({"dataset": {"x": {}}, "datasets": {}})

    assert str(caught.value) == "unknown top-level key(s) ['dataset']; expected [datasets.NAME]"


def test_unknown_dataset_key_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        DatasetRegistry.from_toml({"datasets": {"meter_readings": {"encodng": "latin-1"}}})

    assert errors(caught.value) == [(("encodng",), "Extra inputs are not permitted")]


def test_unknown_column_key_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        DatasetRegistry.from_toml(
            {"datasets": {"things": {"patterns": ["thing*"], "columns": {"a": {"kind": "text"}}}}}
        )

    assert errors(caught.value) == [(("columns", 0, "kind"), "Extra inputs are not permitted")]


def test_invalid_dataset_name_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        DatasetRegistry.from_toml({"datasets": {"Bad-Name": {"patterns": ["x*"], "columns": {"a": {}}}}})

    message = "Value error, 'Bad-Name' is not a plain identifier (lower-case letters, digits, _)"
    assert errors(caught.value) == [(("name",), message), (("table",), message)]


def test_invalid_column_identifier_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        DatasetRegistry.from_toml(
            {"datasets": {"things": {"patterns": ["x*"], "columns": {'a"; DROP TABLE x; --': {}}}}}
        )

    assert errors(caught.value) == [
        (
            ("columns", 0, "column"),
            "Value error, 'a\"; DROP TABLE x; --' is not a plain identifier (lower-case letters, digits, _)",
        )
    ]


def test_invalid_table_identifier_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        DatasetRegistry.from_toml(
            {"datasets": {"things": {"patterns": ["x*"], "table": "staging.x", "columns": {"a": {}}}}}
        )

    assert errors(caught.value) == [
        (("table",), "Value error, 'staging.x' is not a plain identifier (lower-case letters, digits, _)")
    ]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf_32_be"])
def test_utf16_and_utf32_are_taken_though_not_ascii_compatible(encoding: str) -> None:
    registry = DatasetRegistry.from_toml({"datasets": {"meter_readings": {"encoding": encoding}}})

    assert registry.get("meter_readings").encoding == encoding


@pytest.mark.parametrize("encoding", ["cp037", "cp500"])
def test_an_encoding_that_is_not_ascii_compatible_is_refused(encoding: str) -> None:
    with pytest.raises(ValidationError) as caught:
        DatasetRegistry.from_toml({"datasets": {"meter_readings": {"encoding": encoding}}})

    assert errors(caught.value) == [
        (
            ("encoding",),
            f"Value error, encoding {encoding!r} is not ASCII-compatible (use utf-8, latin-1, cp1252…)",
        )
    ]


def test_an_unknown_encoding_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        DatasetRegistry.from_toml({"datasets": {"meter_readings": {"encoding": "klingon"}}})

    assert errors(caught.value) == [(("encoding",), "Value error, unknown encoding 'klingon'")]


def test_a_new_dataset_needs_patterns() -> None:
    with pytest.raises(ValidationError) as caught:
        DatasetRegistry.from_toml({"datasets": {"things": {"columns": {"a": {}}}}})

    assert errors(caught.value) == [(("patterns",), "Field required")]


def test_key_naming_an_unknown_column_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        DatasetRegistry.from_toml(
            {"datasets": {"things": {"patterns": ["x*"], "key": ["id"], "columns": {"a": {}}}}}
        )

    assert errors(caught.value) == [((), "Value error, dataset 'things' names unknown column 'id'")]


def test_two_datasets_on_one_table_are_refused() -> None:
    with pytest.raises(ValueError) as caught:
        DatasetRegistry.from_toml(
            {
                "datasets": {
                    "more_meters": {"patterns": ["mm*"], "table": "meter_readings", "columns": {"a": {}}}
                }
            }
        )

    assert str(caught.value) == "two datasets write to the same staging table"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"datasets": ["x"]}, "`datasets` must be a table of [datasets.NAME] tables"),
        ({"datasets": {"x": 1}}, "[datasets.x] must be a table"),
        ({"datasets": {"x": {"columns": ["a"]}}}, "[datasets.x.columns] must be a table of column tables"),
    ],
)
def test_wrong_shapes_are_refused_with_the_table_named(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        DatasetRegistry.from_toml(data)

    assert str(caught.value) == message


def test_a_column_that_is_not_a_table_is_refused_with_the_table_named() -> None:
    with pytest.raises(ValueError) as caught:
        DatasetRegistry.from_toml({"datasets": {"things": {"patterns": ["x*"], "columns": {"a": "text"}}}})

    assert "[datasets.things.columns.a]" in str(caught.value)


# --- load_registry: datasets.toml on disk ---------------------------------------------------------


def settings_for(tmp_path: Path) -> Settings:
    return Settings(_env_file=None, datasets_file=tmp_path / "datasets.toml")


def test_no_datasets_file_means_the_built_ins(tmp_path: Path) -> None:
    assert load_registry(settings_for(tmp_path)).datasets == BUILTIN_DATASETS


def test_datasets_file_is_read(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    settings.datasets_file.write_text('[datasets.meter_readings]\nencoding = "latin-1"\n', encoding="utf-8")

    assert load_registry(settings).get("meter_readings").encoding == "latin-1"


def test_invalid_toml_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    settings.datasets_file.write_text("[datasets.meter_readings\nencoding = 1\n", encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        load_registry(settings)

    assert str(caught.value) == (
        f"{settings.datasets_file} is not valid TOML: Expected ']' at the end of a table declaration "
        "(at line 1, column 25). Fix the file or remove it"
    )


def test_invalid_dataset_is_a_config_error_pointing_to_the_readme(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    settings.datasets_file.write_text('[datasets.meter_readings]\nencoding = "cp037"\n', encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        load_registry(settings)

    assert caught.value.message.startswith(f"{settings.datasets_file} declares an invalid dataset: ")
    assert "encoding 'cp037' is not ASCII-compatible (use utf-8, latin-1, cp1252…)" in caught.value.message
    assert caught.value.hint == "See the README section 'Datasets' for the format"


# --- by_name / by_header --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file_name", "dataset"),
    [
        ("shipments_2024-01-15.csv", "shipments"),
        ("Shipment.CSV", "shipments"),
        ("packages.csv.gz", "packages"),
        ("meter_readings_1.csv", "meter_readings"),
        ("METER.json", "meter_readings"),
        ("sensor_a.csv", "sensor_readings"),
        ("iot_gateway.ndjson", "sensor_readings"),
        ("readings_meter.csv", None),
        ("export.csv", None),
        ("", None),
    ],
)
def test_by_name(file_name: str, dataset: str | None) -> None:
    found = DatasetRegistry.from_toml({}).by_name(file_name)

    assert (found.name if found else None) == dataset


def test_by_name_finds_a_user_dataset() -> None:
    registry = DatasetRegistry.from_toml(
        {"datasets": {"customers": {"patterns": ["crm_*.csv"], "columns": {"customer_id": {}}}}}
    )

    assert registry.get("customers") is registry.by_name("CRM_export.CSV")
    assert registry.by_name("crm_export.json") is None


@pytest.mark.parametrize(
    ("header", "dataset"),
    [
        (["JobNumber", "ShipmentNumber", "ShipName", "ShipVia"], "shipments"),
        (["PackageID", "JobNumber", "TotalQtyShipped"], "packages"),
        (["\ufeffPackage ID", "job_number", "Total Qty Shipped", "Description"], "packages"),
        (["meter_id", "reading_at", "register_kwh"], "meter_readings"),
        (["Meter ID", "ts", "power_w"], "meter_readings"),
        (["timestamp", "deviceName", "channel1", "dbm"], "sensor_readings"),
        (["JobNumber", "ShipmentNumber", "ShipName"], "shipments"),  # 3 fields beat packages' 2
    ],
)
def test_by_header_picks_the_complete_dataset_mapping_most_fields(header: list[str], dataset: str) -> None:
    found = DatasetRegistry.from_toml({}).by_header(header)

    assert found is not None and found.name == dataset


@pytest.mark.parametrize(
    "header",
    [
        ["JobNumber", "ShipmentNumber"],  # shipments and packages both complete with 2 fields: ambiguous
        ["city", "temp"],  # nothing fits
        ["meter_id", "reading_at"],  # meter_readings needs register_kwh or power_w
        ["ShipmentNumber", "ShipName"],  # shipments without its required JobNumber
        [],
    ],
)
def test_by_header_returns_none_when_no_single_dataset_fits(header: list[str]) -> None:
    assert DatasetRegistry.from_toml({}).by_header(header) is None


def test_by_header_uses_aliases_declared_in_toml() -> None:
    registry = DatasetRegistry.from_toml(
        {"datasets": {"meter_readings": {"columns": {"meter_id": {"aliases": ["Zählernummer"]}}}}}
    )

    found = registry.by_header(["Zählernummer", "ts", "register_kwh"])
    assert found is not None and found.name == "meter_readings"
