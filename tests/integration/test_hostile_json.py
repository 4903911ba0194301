"""Deeply nested JSON: refused at MAX_JSON_DEPTH (64) levels in bounded memory, never retried.

A `.json` file nested too deep fails (yajl parses the document as one stream: skipping a deep
record would need a second parser on every event); an NDJSON line nested too deep is one rejected
row. 100,000 levels once took ijson past 20 GB and Python's decoder into RecursionError.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from app.settings import Settings
from services.ingest.json_nesting import MAX_JSON_DEPTH
from tests.integration.helpers import drop, ingest
from tests.integration.test_hostile_input import assert_failed
from tests.memory import run_cli_measured
from tests.pg import fetch, fetchval

DEEP = 100_000
DEEP_HINT = (
    "loadbay reads at most 64 levels of arrays and objects inside each other; "
    "check the program that wrote the file"
)
GOOD = '{"meter_id": "M1", "reading_at": "2024-01-01T00:%02d:00Z", "power_w": 5}'


def _too_deep_at(offset: int) -> str:
    return f"the JSON nests arrays and objects deeper than 64 levels at byte {offset}. {DEEP_HINT}"


def _nested_arrays(levels: int) -> str:
    return "[" * levels + "]" * levels


def _good_lines(first: int, count: int) -> str:
    return "".join(GOOD % minute + "\n" for minute in range(first, first + count))


def _ingest_measured(dsn: str, workdir: Path, path: Path) -> float:
    """`main.py --ingest PATH` as a user runs it, within 60 s; its peak memory in MB."""
    run = run_cli_measured(dsn, workdir, "--ingest", str(path), timeout=60)
    assert run.returncode in (0, 1), run.stderr
    return run.peak_mb


# --- through the CLI, measured: the reported files ------------------------------------------------


def test_100k_deep_array_file_fails_in_bounded_memory(settings: Settings, dsn: str, workdir: Path) -> None:
    content = _nested_arrays(DEEP).encode()
    path = drop(settings.imports_dir, "meter_deep.json", content)

    peak = _ingest_measured(dsn, workdir, path)

    assert peak <= 150
    # The 65th "[" is the one too many: offset 64.
    assert_failed(
        settings,
        dsn,
        "meter_deep.json",
        content,
        dataset="meter_readings",
        error_class="MalformedFile",
        error=_too_deep_at(64),
    )


def test_100k_deep_object_file_fails_in_bounded_memory(settings: Settings, dsn: str, workdir: Path) -> None:
    content = ('{"a":' * DEEP + "1" + "}" * DEEP).encode()
    path = drop(settings.imports_dir, "meter_deep_object.json", content)

    peak = _ingest_measured(dsn, workdir, path)

    assert peak <= 150
    assert_failed(
        settings,
        dsn,
        "meter_deep_object.json",
        content,
        dataset="meter_readings",
        error_class="MalformedFile",
        error=_too_deep_at(5 * 64),
    )


def test_100k_deep_ndjson_line_is_one_rejected_row_and_the_rest_loads(
    settings: Settings, dsn: str, workdir: Path
) -> None:
    deep_line = '{"meter_id": "M1", "x": ' + _nested_arrays(DEEP) + "}"
    content = _good_lines(0, 10) + deep_line + "\n" + _good_lines(10, 10)
    path = drop(settings.imports_dir, "meter_deep_line.ndjson", content)

    peak = _ingest_measured(dsn, workdir, path)

    assert peak <= 150
    file = fetch(dsn, "SELECT status, rows_loaded, rows_rejected, error FROM ingest.files")
    assert [tuple(f) for f in file] == [("loaded_with_rejects", 20, 1, None)]
    rejects = fetch(
        dsn, "SELECT dataset, record_no, line_no, column_name, value, reason, raw FROM ingest.rejected_rows"
    )
    # The record is level 1, its array level 2: the 64th "[" opens level 65.
    column = len('{"meter_id": "M1", "x": ') + 64
    assert [tuple(r) for r in rejects] == [
        (
            "meter_readings",
            11,
            11,
            None,
            None,
            f"the line nests arrays and objects deeper than 64 levels (at column {column})",
            deep_line[:10_000],
        )
    ]
    loaded = fetch(dsn, "SELECT _record_no FROM staging.meter_readings ORDER BY _record_no")
    assert [r["_record_no"] for r in loaded] == [*range(1, 11), *range(12, 22)]
    assert list((settings.imports_dir / "processed").glob("*/meter_deep_line.ndjson"))


# --- the limit itself -----------------------------------------------------------------------------


def test_ndjson_line_at_the_limit_loads_and_one_level_more_is_rejected(settings: Settings, dsn: str) -> None:
    # The record object is level 1, so its field may hold 63 levels of arrays.
    at_limit = '{"meter_id": "M1", "reading_at": "2024-01-01T01:00:00Z", "power_w": 1, "x": %s}'
    content = (
        _good_lines(0, 10)
        + at_limit % _nested_arrays(MAX_JSON_DEPTH - 1)
        + "\n"
        + at_limit % _nested_arrays(MAX_JSON_DEPTH)
        + "\n"
    )
    settings.max_reject_ratio = 0.5
    ingest(settings, drop(settings.imports_dir, "meter_limit.ndjson", content))

    rejects = fetch(dsn, "SELECT record_no, line_no, reason FROM ingest.rejected_rows")
    column = len(at_limit.split("%s")[0]) + 64
    assert [tuple(r) for r in rejects] == [
        (12, 12, f"the line nests arrays and objects deeper than 64 levels (at column {column})")
    ]
    extra = fetchval(dsn, "SELECT _extra::text FROM staging.meter_readings WHERE _record_no = 11")
    assert extra == '{"x": ' + "[" * 63 + "]" * 63 + "}"


def test_json_file_at_the_limit_loads_and_one_level_more_fails(settings: Settings, dsn: str) -> None:
    # The outer array is level 1 and each record level 2: 62 levels are left inside a record.
    record = '{"meter_id": "M1", "reading_at": "2024-01-01T00:00:00Z", "power_w": 1, "x": %s}'
    fits = "[" + record % _nested_arrays(MAX_JSON_DEPTH - 2) + "]"
    ingest(settings, drop(settings.imports_dir, "meter_fits.json", fits))
    assert [tuple(r) for r in fetch(dsn, "SELECT status, rows_loaded FROM ingest.files")] == [("loaded", 1)]

    deeper = "[" + record % _nested_arrays(MAX_JSON_DEPTH - 1) + "]"
    ingest(settings, drop(settings.imports_dir, "meter_deeper.json", deeper))
    failed = fetch(dsn, "SELECT status, error FROM ingest.files WHERE name = 'meter_deeper.json'")
    offset = 1 + len(record.split("%s")[0]) + 62
    assert [tuple(r) for r in failed] == [("failed", _too_deep_at(offset))]


def test_a_deep_record_among_good_ones_fails_the_json_file(settings: Settings, dsn: str) -> None:
    """The decision: a `.json` document nested too deep fails as a whole, good records included."""
    records = [GOOD % minute for minute in range(5)]
    deep = '{"meter_id": "M1", "x": ' + _nested_arrays(1000) + "}"
    content = "[" + ",\n".join([*records[:2], deep, *records[2:]]) + "]"
    path = drop(settings.imports_dir, "meter_mixed.json", content)

    ingest(settings, path)

    offset = content.index(deep) + len('{"meter_id": "M1", "x": ') + 62
    assert_failed(
        settings,
        dsn,
        "meter_mixed.json",
        content.encode(),
        dataset="meter_readings",
        error_class="MalformedFile",
        error=_too_deep_at(offset),
    )


def test_brackets_and_quotes_inside_strings_do_not_count(settings: Settings, dsn: str) -> None:
    tricky = ["[" * 200, "{" * 200 + '"', '\\"' + "[" * 200, "\\" * 3 + "[{" * 100, "]" * 300]
    records = [
        {"meter_id": "M1", "reading_at": f"2024-01-01T00:0{n}:00Z", "power_w": 1, "note": text}
        for n, text in enumerate(tricky)
    ]
    # A 70,000-character string spans two 64 KiB reads of the .json file.
    records.append(
        {"meter_id": "M1", "reading_at": "2024-01-01T01:00:00Z", "power_w": 1, "note": "[\\" * 35_000}
    )
    as_json = json.dumps(records)
    as_ndjson = "".join(json.dumps(r) + "\n" for r in records)
    for name, content in (("meter_strings.json", as_json), ("meter_strings.ndjson", as_ndjson)):
        ingest(settings, drop(settings.imports_dir, name, content))

    files = fetch(dsn, "SELECT name, status, rows_loaded, rows_rejected FROM ingest.files ORDER BY id")
    assert [tuple(f) for f in files] == [
        ("meter_strings.json", "loaded", 6, 0),
        ("meter_strings.ndjson", "loaded", 6, 0),
    ]
    notes = fetch(
        dsn, "SELECT _extra->>'note' AS note FROM staging.meter_readings ORDER BY _file_id, _record_no"
    )
    assert [n["note"] for n in notes] == [r["note"] for r in records] * 2


# --- the relatives: every other way into a parser or a recursive walk ------------------------------


def test_deep_gzipped_json_fails_at_the_byte_of_the_content(settings: Settings, dsn: str) -> None:
    content = gzip.compress(_nested_arrays(DEEP).encode())
    ingest(settings, drop(settings.imports_dir, "meter_deep.json.gz", content))

    assert_failed(
        settings,
        dsn,
        "meter_deep.json.gz",
        content,
        dataset="meter_readings",
        error_class="MalformedFile",
        error=_too_deep_at(64),
    )


def test_deep_field_before_the_wrapped_array_fails_in_the_wrapper_probe(settings: Settings, dsn: str) -> None:
    """The probe that looks for `data` / `records` / … reads the object before the records."""
    prefix = '{"meta": '
    content = prefix + _nested_arrays(DEEP) + ', "data": [' + GOOD % 0 + "]}"
    ingest(settings, drop(settings.imports_dir, "meter_wrapped.json", content))

    assert_failed(
        settings,
        dsn,
        "meter_wrapped.json",
        content.encode(),
        dataset="meter_readings",
        error_class="MalformedFile",
        error=_too_deep_at(len(prefix) + 63),
    )


@pytest.mark.parametrize("name", ["readings.json", "readings.ndjson"])
def test_deep_file_recognised_by_its_fields_fails_without_a_dataset(
    settings: Settings, dsn: str, name: str
) -> None:
    """No name pattern fits, so the first record's fields are read to find the dataset."""
    content = _nested_arrays(DEEP)
    ingest(settings, drop(settings.imports_dir, name, content))

    error = fetchval(dsn, "SELECT error FROM ingest.files")
    if name.endswith(".json"):
        assert error == _too_deep_at(64)
    else:
        # The deep line is no record: with no fields, no dataset matches.
        assert error.startswith("no dataset matches this file's name or header. ")
    assert fetchval(dsn, "SELECT status FROM ingest.files") == "failed"


def test_deep_package_in_an_ndjson_shipment_rejects_the_shipment_and_its_packages(
    settings: Settings, dsn: str
) -> None:
    package = {"PackageID": "P1", "TotalQtyShipped": 1}
    good = {"JobNumber": "J1", "ShipmentNumber": "S1", "Packages": [package]}
    deep = '{"JobNumber": "J2", "ShipmentNumber": "S2", "Packages": [{"PackageID": "P2", "Description": '
    deep_line = deep + _nested_arrays(DEEP) + "}]}"
    content = json.dumps(good) + "\n" + deep_line + "\n"
    settings.max_reject_ratio = 0.5

    result = ingest(settings, drop(settings.imports_dir, "shipments_deep.ndjson", content))

    assert [(o.status, o.rows_loaded, o.rows_rejected) for o in result.outcomes] == [
        ("loaded_with_rejects", 2, 1)
    ]
    rejects = fetch(dsn, "SELECT dataset, record_no, line_no, reason FROM ingest.rejected_rows")
    # Levels: record 1, Packages 2, package 3, Description 4 …: the 62nd "[" opens level 65.
    column = len(deep) + 62
    assert [tuple(r) for r in rejects] == [
        ("shipments", 2, 2, f"the line nests arrays and objects deeper than 64 levels (at column {column})")
    ]
    assert [r["package_id"] for r in fetch(dsn, "SELECT package_id FROM staging.packages")] == ["P1"]


# --- records too big for the parser ----------------------------------------------------------------


def _gzip_of_one_huge_record(path: Path, value_bytes: int) -> None:
    """A .json.gz whose one record holds a `value_bytes` long string, written in compressed blocks."""
    block = b"x" * (1 << 20)
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(b'[{"meter_id": "M1", "reading_at": "2024-01-01T00:00:00Z", "note": "')
        for _ in range(value_bytes >> 20):
            out.write(block)
        out.write(b'"}]\n')


@pytest.mark.slow
def test_a_gibibyte_record_in_a_json_gzip_fails_in_bounded_memory(
    settings: Settings, dsn: str, workdir: Path
) -> None:
    path = settings.imports_dir / "meter_huge_record.json.gz"
    _gzip_of_one_huge_record(path, 1 << 30)

    peak = _ingest_measured(dsn, workdir, path)

    assert peak <= 150
    [file] = fetch(dsn, "SELECT status, error FROM ingest.files")
    assert file["status"] == "failed"
    assert file["error"].startswith("a record runs past byte ")
    assert file["error"].endswith(
        ", longer than 16 MiB. A record this large is not a data row; split the data into records"
    )
    assert (settings.imports_dir / "failed" / "meter_huge_record.json.gz").exists()


@pytest.mark.slow
def test_a_record_just_under_the_limit_loads(settings: Settings, dsn: str) -> None:
    record = {"meter_id": "M1", "reading_at": "2024-01-01T00:00:00Z", "power_w": 5, "note": "x" * (15 << 20)}
    path = drop(
        settings.imports_dir, "meter_big_record.json", json.dumps([record, record | {"meter_id": "M2"}])
    )
    [outcome] = ingest(settings, path).outcomes
    assert (outcome.status, outcome.rows_loaded) == ("loaded", 2)
    assert fetchval(
        dsn, "SELECT length(_extra->>'note') FROM staging.meter_readings WHERE meter_id = 'M2'"
    ) == (15 << 20)
