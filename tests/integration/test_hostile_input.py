"""Hostile drops: each ends with a clear ledger entry and nothing lost.

A file that cannot be loaded ends in imports/failed/ byte for byte, with NAME.error.json beside
it and the same message in `ingest.files.error`; a file that can be loaded is loaded and moved to
imports/processed/DATE/ under its exact name. Links and folders are never taken.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from app.datasets import load_registry
from app.migrate import migrate
from app.settings import Settings
from tests.conftest import run_cli
from tests.integration.helpers import METER_HEADER, drop, ingest, meter_rows
from tests.pg import fetch, fetchval

EXTENSIONS_HINT = (
    "Drop .csv, .tsv, .txt, .json, .ndjson or .jsonl files, optionally gzipped (.gz), "
    "or .xlsx, .xlsm or .parquet files"
)
ENCODING_HINT = (
    "If the file uses another encoding, set `encoding` for this dataset in datasets.toml "
    '(e.g. encoding = "cp1252"); a binary file cannot be loaded'
)
GZIP_HINT = "Compress the file again and send it again"


def assert_failed(
    settings: Settings,
    dsn: str,
    name: str,
    content: bytes,
    *,
    dataset: str | None,
    error_class: str,
    error: str,
) -> None:
    """One `failed` ledger row with `error`; the exact bytes in failed/ with NAME.error.json."""
    files = fetch(dsn, "SELECT * FROM ingest.files")
    assert len(files) == 1
    file = files[0]
    assert (file["name"], file["dataset"], file["status"], file["rows_loaded"], file["rows_rejected"]) == (
        name,
        dataset,
        "failed",
        0,
        0,
    )
    assert file["error"] == error
    assert file["size_bytes"] == len(content)
    assert file["sha256"] == hashlib.sha256(content).hexdigest()
    failed = settings.imports_dir / "failed" / name
    assert Path(file["moved_to"]) == failed
    assert failed.read_bytes() == content
    assert not (settings.imports_dir / name).exists()
    sidecar = json.loads((settings.imports_dir / "failed" / f"{name}.error.json").read_text(encoding="utf-8"))
    assert (sidecar["file"], sidecar["file_id"], sidecar["dataset"], sidecar["error"]) == (
        name,
        file["id"],
        dataset,
        error_class,
    )
    assert f"{sidecar['message']}. {sidecar['hint']}" == error
    assert sidecar["sha256"] == file["sha256"]
    log = fetch(dsn, "SELECT component, message, file_id FROM ingest.error_log")
    assert [tuple(r) for r in log] == [("ingest", error, file["id"])]
    assert fetchval(dsn, "SELECT count(*) FROM ingest.rejected_rows") == 0
    for table in ("meter_readings", "shipments", "packages", "sensor_readings"):
        assert fetchval(dsn, f"SELECT count(*) FROM staging.{table}") == 0


def processed_copy(settings: Settings, name: str) -> Path:
    moved = list((settings.imports_dir / "processed").glob("*/*"))
    matches = [p for p in moved if p.name == name]
    assert len(matches) == 1, sorted(p.name for p in moved)
    return matches[0]


# --- files that cannot be loaded ------------------------------------------------------------------


def test_empty_file_fails_as_empty(settings: Settings, dsn: str) -> None:
    path = drop(settings.imports_dir, "meter_empty.csv", b"")

    result = ingest(settings, path)

    assert [(o.name, o.status, o.error) for o in result.outcomes] == [
        ("meter_empty.csv", "failed", "the file is empty (0 bytes). Drop it again once it has data"),
    ]
    assert_failed(
        settings,
        dsn,
        "meter_empty.csv",
        b"",
        dataset=None,
        error_class="EmptyFile",
        error="the file is empty (0 bytes). Drop it again once it has data",
    )


def test_header_only_fails_as_having_no_rows(settings: Settings, dsn: str) -> None:
    content = METER_HEADER.encode()
    path = drop(settings.imports_dir, "meter_header_only.csv", content)

    result = ingest(settings, path)

    assert result.outcomes[0].status == "failed"
    assert_failed(
        settings,
        dsn,
        "meter_header_only.csv",
        content,
        dataset="meter_readings",
        error_class="EmptyFile",
        error="the file has a header but no data rows. Nothing to load; drop the file again once it has rows",
    )


def test_binary_junk_fails_naming_the_first_bad_byte(settings: Settings, dsn: str) -> None:
    # NULs first (valid UTF-8), then 0xff: the first byte that is not UTF-8 is the 3rd of line 1.
    junk = b"\x00\x00\xff\xd8\xff\xe0\x00\x10JFIF\x00" + random.Random(7).randbytes(4096)
    path = drop(settings.imports_dir, "meter_junk.csv", junk)

    result = ingest(settings, path)

    assert result.outcomes[0].status == "failed"
    assert_failed(
        settings,
        dsn,
        "meter_junk.csv",
        junk,
        dataset="meter_readings",
        error_class="EncodingError",
        error=f"byte 0xff at line 1, position 3, is not valid utf-8. {ENCODING_HINT}",
    )


def test_binary_junk_that_decodes_is_refused_for_its_nul_bytes(settings: Settings, dsn: str) -> None:
    junk = bytes(range(0, 10)) + bytes(range(11, 128)) * 30  # every ASCII byte but \n: valid UTF-8
    path = drop(settings.imports_dir, "meter_nul.csv", junk)

    ingest(settings, path)

    assert_failed(
        settings,
        dsn,
        "meter_nul.csv",
        junk,
        dataset="meter_readings",
        error_class="MalformedFile",
        error="the header contains NUL bytes: this looks like a binary file. Drop CSV text files (or set "
        "the dataset's encoding)",
    )


def test_invalid_utf8_in_a_data_row_fails_naming_byte_and_line(settings: Settings, dsn: str) -> None:
    content = (
        (METER_HEADER + meter_rows(5)).encode() + b"M\xe9,2024-01-15T01:00:00Z,1,\n" + meter_rows(5).encode()
    )
    path = drop(settings.imports_dir, "meter_latin.csv", content)

    result = ingest(settings, path)

    assert result.outcomes[0].status == "failed"
    assert_failed(
        settings,
        dsn,
        "meter_latin.csv",
        content,
        dataset="meter_readings",
        error_class="EncodingError",
        error=f"byte 0xe9 at line 7, position 2, is not valid utf-8. {ENCODING_HINT}. It looks like "
        'cp1252: add the line encoding = "cp1252" under [datasets.meter_readings] in datasets.toml',
    )


def test_undecodable_byte_in_a_declared_cp1252_dataset_names_the_encoding(
    settings: Settings, dsn: str
) -> None:
    settings.datasets_file.write_text('[datasets.meter_readings]\nencoding = "cp1252"\n', encoding="utf-8")
    registry = load_registry(settings)
    # 0x81 is one of the five bytes cp1252 leaves undefined.
    content = METER_HEADER.encode() + b"M\x80,2024-01-15T00:00:00Z,1,\nM\x81,2024-01-15T00:10:00Z,2,\n"
    path = drop(settings.imports_dir, "meter_cp1252.csv", content)

    ingest(settings, path, registry=registry)

    assert_failed(
        settings,
        dsn,
        "meter_cp1252.csv",
        content,
        dataset="meter_readings",
        error_class="EncodingError",
        error=f"byte 0x81 at line 3, position 2, is not valid cp1252. {ENCODING_HINT}. It looks like "
        'cp850: add the line encoding = "cp850" under [datasets.meter_readings] in datasets.toml',
    )


def test_a_10_mb_single_line_is_not_taken_for_a_header(settings: Settings, dsn: str) -> None:
    content = (b"M1,2024-01-15T00:00:00Z,1.5,10," * 350_000)[:10_000_000]
    assert len(content) == 10_000_000 and b"\n" not in content
    path = drop(settings.imports_dir, "meter_long.csv", content)

    result = ingest(settings, path)

    assert result.outcomes[0].status == "failed"
    assert_failed(
        settings,
        dsn,
        "meter_long.csv",
        content,
        dataset="meter_readings",
        error_class="MalformedFile",
        error="the first line is longer than 1 MiB, so it is not a header. Check that the file is a CSV "
        "file with a header line",
    )


def test_a_10_mb_data_line_fails_the_file_naming_the_line(settings: Settings, dsn: str) -> None:
    content = (
        (METER_HEADER + meter_rows(1)).encode() + b"x" * 10_000_000 + b"\n" + meter_rows(3, "M2").encode()
    )
    path = drop(settings.imports_dir, "meter_long_row.csv", content)

    ingest(settings, path)

    assert_failed(
        settings,
        dsn,
        "meter_long_row.csv",
        content,
        dataset="meter_readings",
        error_class="MalformedFile",
        error="line 3 is longer than 1 MiB. Check that the file is a CSV file with one record a line",
    )


def test_unsupported_extension_fails_listing_the_extensions_read(settings: Settings, dsn: str) -> None:
    # An Excel 97-2003 workbook (an OLE compound file): loadbay reads .xlsx, not .xls.
    content = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + random.Random(3).randbytes(512)
    path = drop(settings.imports_dir, "meter_readings.xls", content)

    result = ingest(settings, path)

    assert result.outcomes[0].status == "failed"
    assert_failed(
        settings,
        dsn,
        "meter_readings.xls",
        content,
        dataset=None,
        error_class="UnsupportedFormat",
        error=f".xls files are not read by loadbay. {EXTENSIONS_HINT}",
    )


def test_a_name_without_extension_fails_as_unsupported(settings: Settings, dsn: str) -> None:
    content = (METER_HEADER + meter_rows(2)).encode()
    ingest(settings, drop(settings.imports_dir, "meter_readings", content))

    assert_failed(
        settings,
        dsn,
        "meter_readings",
        content,
        dataset=None,
        error_class="UnsupportedFormat",
        error=f"(no extension) files are not read by loadbay. {EXTENSIONS_HINT}",
    )


def test_damaged_gzip_fails_with_a_clear_message(settings: Settings, dsn: str) -> None:
    whole = gzip.compress((METER_HEADER + meter_rows(2000)).encode(), mtime=0)
    content = whole[: len(whole) // 2]
    path = drop(settings.imports_dir, "meter_cut.csv.gz", content)

    result = ingest(settings, path)

    assert result.outcomes[0].status == "failed"
    assert_failed(
        settings,
        dsn,
        "meter_cut.csv.gz",
        content,
        dataset="meter_readings",
        error_class="MalformedFile",
        error="the gzip data is damaged (Compressed file ended before the end-of-stream marker was reached). "
        f"{GZIP_HINT}",
    )


def test_gz_name_on_plain_text_fails_as_not_gzip(settings: Settings, dsn: str) -> None:
    content = (METER_HEADER + meter_rows(2)).encode()
    ingest(settings, drop(settings.imports_dir, "meter_plain.csv.gz", content))

    assert_failed(
        settings,
        dsn,
        "meter_plain.csv.gz",
        content,
        dataset="meter_readings",
        error_class="MalformedFile",
        error=f"the gzip data is damaged (Not a gzipped file (b'me')). {GZIP_HINT}",
    )


def test_failed_files_are_not_taken_again_from_the_folder(settings: Settings, dsn: str) -> None:
    drop(settings.imports_dir, "meter_empty.csv", b"")
    first = ingest(settings, settings.imports_dir)
    second = ingest(settings, settings.imports_dir)

    assert [o.status for o in first.outcomes] == ["failed"]
    assert second.outcomes == []
    assert fetchval(dsn, "SELECT count(*) FROM ingest.files") == 1
    assert sorted(p.name for p in (settings.imports_dir / "failed").iterdir()) == [
        "meter_empty.csv",
        "meter_empty.csv.error.json",
    ]


# --- hostile names load normally ------------------------------------------------------------------

HOSTILE_NAMES = [
    "meter readings 2024 01.csv",
    "meter 'single' \"double\".csv",
    "meter_ünïcødé_東京_🔌.csv",
    "-meter.csv",
    "--help.csv",
    ";DROP TABLE x;--.csv",
    "meter'); DROP TABLE staging.meter_readings;--.csv",
    "meter_$(touch pwned)_`id`.csv",
    "meter %s %d %(name)s.csv",
    "meter\\back\\slash.csv",
    "meter\nnewline.csv",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_load_under_their_exact_name(settings: Settings, dsn: str, name: str) -> None:
    content = METER_HEADER + meter_rows(3, meter="H1")
    path = drop(settings.imports_dir, name, content)

    result = ingest(settings, path)

    assert [(o.name, o.status, o.rows_loaded) for o in result.outcomes] == [(name, "loaded", 3)]
    file = fetch(dsn, "SELECT * FROM ingest.files")[0]
    assert (file["name"], file["dataset"], file["status"], file["rows_loaded"]) == (
        name,
        "meter_readings",
        "loaded",
        3,
    )
    assert [tuple(r) for r in fetch(dsn, "SELECT _file_id, meter_id FROM staging.meter_readings")] == [
        (file["id"], "H1")
    ] * 3
    moved = processed_copy(settings, name)
    assert Path(file["moved_to"]) == moved and moved.read_bytes() == content.encode()
    assert os.listdir(settings.imports_dir) == ["processed"]
    assert not (settings.imports_dir / "pwned").exists() and not Path("pwned").exists()


def test_hostile_names_through_the_cli_folder_ingest(dsn: str, workdir: Path) -> None:
    imports = workdir / "imports"
    for i, name in enumerate(HOSTILE_NAMES):
        drop(imports, name, METER_HEADER + meter_rows(2, meter=f"H{i}"))

    proc = run_cli(dsn, workdir, "--ingest", "imports")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = fetch(dsn, "SELECT name, status, rows_loaded FROM ingest.files ORDER BY name")
    assert [tuple(f) for f in files] == [(n, "loaded", 2) for n in sorted(HOSTILE_NAMES)]
    assert fetchval(dsn, "SELECT count(*) FROM staging.meter_readings") == 2 * len(HOSTILE_NAMES)
    moved = sorted(p.name for p in (imports / "processed").glob("*/*"))
    assert moved == sorted(HOSTILE_NAMES)
    assert sorted(os.listdir(imports)) == ["processed"]
    assert not (workdir / "pwned").exists() and not (imports / "pwned").exists()


def test_a_name_at_the_file_system_limit_fails_into_failed_with_its_error(
    settings: Settings, dsn: str
) -> None:
    # 255 bytes is the longest name Linux allows; failed/ must still take the file and its reason.
    name = "meter_" + "x" * 244 + ".xlsx"
    assert len(name.encode()) == 255
    content = b"PK\x03\x04 not a csv"
    drop(settings.imports_dir, name, content)
    ingest(settings, settings.imports_dir)
    again = ingest(settings, settings.imports_dir)

    assert again.outcomes == []

    file = fetch(dsn, "SELECT name, status, moved_to FROM ingest.files")
    assert [(f["name"], f["status"]) for f in file] == [(name, "failed")]
    moved = Path(file[0]["moved_to"])
    assert moved.parent == settings.imports_dir / "failed" and moved.read_bytes() == content
    assert not (settings.imports_dir / name).exists()
    sidecars = list((settings.imports_dir / "failed").glob("*.error.json"))
    assert len(sidecars) == 1
    assert json.loads(sidecars[0].read_text(encoding="utf-8"))["file"] == name


# --- links and folders are never taken ------------------------------------------------------------


def outside_file(workdir: Path) -> tuple[Path, bytes]:
    outside = workdir / "outside"
    outside.mkdir()
    target = outside / "meter_secret.csv"
    content = (METER_HEADER + meter_rows(4, meter="SECRET")).encode()
    target.write_bytes(content)
    return target, content


def assert_link_untouched(settings: Settings, dsn: str, link: Path, target: Path, content: bytes) -> None:
    assert fetchval(dsn, "SELECT count(*) FROM ingest.files") == 0
    assert fetchval(dsn, "SELECT count(*) FROM staging.meter_readings") == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == content
    assert sorted(os.listdir(target.parent)) == [target.name]
    assert not (settings.imports_dir / "processed").exists()
    assert not (settings.imports_dir / "failed").exists()


def test_symlink_to_a_file_outside_is_not_followed_from_the_folder(
    settings: Settings, dsn: str, workdir: Path
) -> None:
    target, content = outside_file(workdir)
    link = settings.imports_dir / "meter_link.csv"
    link.symlink_to(target)

    result = ingest(settings, settings.imports_dir)

    assert result.outcomes == []
    assert_link_untouched(settings, dsn, link, target, content)


def test_symlink_named_explicitly_is_skipped_not_followed(
    settings: Settings, dsn: str, workdir: Path
) -> None:
    target, content = outside_file(workdir)
    link = settings.imports_dir / "meter_link.csv"
    link.symlink_to(target)

    result = ingest(settings, link)

    assert [(o.name, o.status, o.error) for o in result.outcomes] == [
        ("meter_link.csv", "skipped", "not a regular, complete file"),
    ]
    assert_link_untouched(settings, dsn, link, target, content)


def test_symlink_through_the_cli_is_not_loaded(dsn: str, workdir: Path) -> None:
    target, content = outside_file(workdir)
    link = workdir / "imports" / "meter_link.csv"
    link.symlink_to(target)
    dir_link = workdir / "imports" / "meter_dir_link"
    dir_link.symlink_to(target.parent, target_is_directory=True)

    proc = run_cli(dsn, workdir, "--ingest", "imports")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fetchval(dsn, "SELECT count(*) FROM ingest.files") == 0
    assert link.is_symlink() and dir_link.is_symlink()
    assert target.read_bytes() == content and sorted(os.listdir(target.parent)) == ["meter_secret.csv"]


def test_subfolders_are_ignored(settings: Settings, dsn: str) -> None:
    sub = settings.imports_dir / "sub"
    sub.mkdir()
    inner = (METER_HEADER + meter_rows(2, meter="SUB")).encode()
    (sub / "meter_inner.csv").write_bytes(inner)
    (settings.imports_dir / "meter_folder.csv").mkdir()
    top = METER_HEADER + meter_rows(2, meter="TOP")
    drop(settings.imports_dir, "meter_top.csv", top)

    result = ingest(settings, settings.imports_dir)

    assert [(o.name, o.status) for o in result.outcomes] == [("meter_top.csv", "loaded")]
    assert [tuple(r) for r in fetch(dsn, "SELECT name, status FROM ingest.files")] == [
        ("meter_top.csv", "loaded")
    ]
    assert [r["meter_id"] for r in fetch(dsn, "SELECT meter_id FROM staging.meter_readings")] == [
        "TOP",
        "TOP",
    ]
    assert (sub / "meter_inner.csv").read_bytes() == inner
    assert (settings.imports_dir / "meter_folder.csv").is_dir()
    assert sorted(os.listdir(settings.imports_dir)) == ["meter_folder.csv", "processed", "sub"]


# --- compressed drops -----------------------------------------------------------------------------


def test_gzipped_csv_loads(settings: Settings, dsn: str) -> None:
    content = gzip.compress((METER_HEADER + meter_rows(3)).encode(), mtime=0)
    path = drop(settings.imports_dir, "meter_day.csv.gz", content)

    result = ingest(settings, path)

    assert [(o.status, o.rows_loaded) for o in result.outcomes] == [("loaded", 3)]
    rows = fetch(
        dsn, "SELECT _record_no, meter_id, reading_at, register_kwh FROM staging.meter_readings ORDER BY 1"
    )
    assert [tuple(r) for r in rows] == [
        (1, "M1", datetime(2024, 1, 15, 0, 0, tzinfo=UTC), Decimal("100.000")),
        (2, "M1", datetime(2024, 1, 15, 0, 10, tzinfo=UTC), Decimal("100.500")),
        (3, "M1", datetime(2024, 1, 15, 0, 20, tzinfo=UTC), Decimal("101.000")),
    ]
    file = fetch(dsn, "SELECT name, dataset, size_bytes, sha256 FROM ingest.files")[0]
    assert tuple(file) == (
        "meter_day.csv.gz",
        "meter_readings",
        len(content),
        hashlib.sha256(content).hexdigest(),
    )
    assert processed_copy(settings, "meter_day.csv.gz").read_bytes() == content


def test_gzipped_csv_is_recognised_by_its_header(settings: Settings, dsn: str) -> None:
    content = gzip.compress(b"PackageID,JobNumber,TotalQtyShipped\nP1,J1,3\nP2,J1,4\n", mtime=0)
    ingest(settings, drop(settings.imports_dir, "export.csv.gz", content))

    assert tuple(fetch(dsn, "SELECT dataset, status, rows_loaded FROM ingest.files")[0]) == (
        "packages",
        "loaded",
        2,
    )
    rows = fetch(dsn, "SELECT package_id, job_number, total_qty_shipped FROM staging.packages ORDER BY 1")
    assert [tuple(r) for r in rows] == [("P1", "J1", 3), ("P2", "J1", 4)]


# --- bad rows inside otherwise good files ---------------------------------------------------------


def test_unterminated_quote_rejects_its_line_and_keeps_the_rows_after_it(
    settings: Settings, dsn: str
) -> None:
    content = (
        METER_HEADER
        + meter_rows(10, meter="A")  # records 1-10, lines 2-11
        + '"Q,2024-01-15T05:00:00Z,7,\n'  # record 11, line 12: the quote never closes
        + meter_rows(10, meter="B")  # records 12-21, lines 13-22
    )
    path = drop(settings.imports_dir, "meter_quote.csv", content)

    result = ingest(settings, path)

    assert [(o.status, o.rows_loaded, o.rows_rejected) for o in result.outcomes] == [
        ("loaded_with_rejects", 20, 1)
    ]
    rejects = fetch(dsn, "SELECT record_no, line_no, column_name, value, reason FROM ingest.rejected_rows")
    assert [tuple(r) for r in rejects] == [(11, 12, None, None, "a quote opened here is never closed")]
    rows = fetch(dsn, "SELECT _record_no, meter_id FROM staging.meter_readings ORDER BY 1")
    assert [tuple(r) for r in rows] == [(n, "A") for n in range(1, 11)] + [(n, "B") for n in range(12, 22)]
    file = fetch(dsn, "SELECT status, rows_loaded, rows_rejected, error FROM ingest.files")[0]
    assert tuple(file) == ("loaded_with_rejects", 20, 1, None)
    assert processed_copy(settings, "meter_quote.csv").read_bytes() == content.encode()


def test_user_dataset_in_latin1_keeps_good_rows_and_rejects_bad_ones(settings: Settings, dsn: str) -> None:
    settings.datasets_file.write_text(
        """
[datasets.customers]
patterns = ["customer*"]
encoding = "latin-1"
max_reject_ratio = 0.5

[datasets.customers.columns.customer_id]
source = "CustomerID"
required = true

[datasets.customers.columns.name]
source = "Name"

[datasets.customers.columns.joined]
source = "Joined"
type = "date"

[datasets.customers.columns.credit]
source = "Credit"
type = "numeric"
""",
        encoding="utf-8",
    )
    registry = load_registry(settings)
    migrate(dsn, settings, registry)
    text = (
        "CustomerID,Name,Joined,Credit\r\n"
        "C1,Zoë Ångström,2024-01-15,12.50\r\n"  # record 1, line 2
        "C2,Renée,2024-02-30,3\r\n"  # record 2, line 3: no such date
        "C3,Søren,2024-03-01,½\r\n"  # record 3, line 4: not a number
        ",Anaïs,2024-03-02,1\r\n"  # record 4, line 5: required value missing
        "C5,Zoë,2024-03-03\r\n"  # record 5, line 6: a field short
        'C6,"Müller, Jürgen",2024-03-04,7\r\n'  # record 6, line 7
        "C7,Çelik,,\r\n"  # record 7, line 8
        'C8,"Ørsted\r\nJr.",2024-03-05,-1.5\r\n'  # record 8, lines 9-10
        "C9,Þór,2024-03-06,0\r\n"  # record 9, line 11
        "C10,Éloïse,2024-03-07,100\r\n"  # record 10, line 12
    )
    content = text.encode("latin-1")
    path = drop(settings.imports_dir, "customers_2024.csv", content)

    result = ingest(settings, path, registry=registry)

    assert [(o.dataset, o.status, o.rows_loaded, o.rows_rejected) for o in result.outcomes] == [
        ("customers", "loaded_with_rejects", 6, 4)
    ]
    rejects = fetch(
        dsn,
        "SELECT record_no, line_no, column_name, value, reason FROM ingest.rejected_rows ORDER BY record_no",
    )
    assert [tuple(r) for r in rejects] == [
        (2, 3, "joined", "2024-02-30", "not a date (YYYY-MM-DD)"),
        (3, 4, "credit", "½", "not a number"),
        (4, 5, "customer_id", None, "a required value is missing"),
        (5, 6, None, "C5,Zoë,2024-03-03", "has 3 fields; the header has 4"),
    ]
    rows = fetch(
        dsn, "SELECT _record_no, customer_id, name, joined, credit FROM staging.customers ORDER BY 1"
    )
    assert [tuple(r) for r in rows] == [
        (1, "C1", "Zoë Ångström", datetime(2024, 1, 15).date(), Decimal("12.50")),
        (6, "C6", "Müller, Jürgen", datetime(2024, 3, 4).date(), Decimal("7")),
        (7, "C7", "Çelik", None, None),
        (8, "C8", "Ørsted\r\nJr.", datetime(2024, 3, 5).date(), Decimal("-1.5")),
        (9, "C9", "Þór", datetime(2024, 3, 6).date(), Decimal("0")),
        (10, "C10", "Éloïse", datetime(2024, 3, 7).date(), Decimal("100")),
    ]
    file = fetch(dsn, "SELECT name, dataset, status, rows_loaded, rows_rejected FROM ingest.files")[0]
    assert tuple(file) == ("customers_2024.csv", "customers", "loaded_with_rejects", 6, 4)
    assert processed_copy(settings, "customers_2024.csv").read_bytes() == content


def test_nul_byte_in_a_data_row_rejects_that_row_only(settings: Settings, dsn: str) -> None:
    content = METER_HEADER + "M\x00X,2024-01-15T00:00:00Z,1,\n" + meter_rows(10, meter="OK")
    result = ingest(settings, drop(settings.imports_dir, "meter_nul_row.csv", content))

    assert [(o.status, o.rows_loaded, o.rows_rejected) for o in result.outcomes] == [
        ("loaded_with_rejects", 10, 1)
    ]
    rejects = fetch(dsn, "SELECT record_no, line_no, column_name, value, reason FROM ingest.rejected_rows")
    assert [tuple(r) for r in rejects] == [(1, 2, None, None, "contains a NUL byte (binary data?)")]
    rows = fetch(dsn, "SELECT _record_no, meter_id FROM staging.meter_readings ORDER BY 1")
    assert [tuple(r) for r in rows] == [(n, "OK") for n in range(2, 12)]


def test_bad_value_after_a_first_row_with_a_quoted_newline_is_attributed_to_its_record(
    settings: Settings, dsn: str
) -> None:
    settings.max_reject_ratio = 0.5
    content = METER_HEADER + (
        '"A\nB",2024-01-15T00:00:00Z,1,\n'  # record 1, lines 2-3
        "M1,2024-01-15T00:10:00Z,bad,\n"  # record 2, line 4
        "M1,2024-01-15T00:20:00Z,3,\n"  # record 3, line 5
    )
    ingest(settings, drop(settings.imports_dir, "meter_multiline_first.csv", content))

    rows = fetch(dsn, "SELECT _record_no, meter_id FROM staging.meter_readings ORDER BY 1")
    assert [tuple(r) for r in rows] == [(1, "A\nB"), (3, "M1")]
    rejects = fetch(dsn, "SELECT record_no, line_no, column_name, value, reason FROM ingest.rejected_rows")
    assert [tuple(r) for r in rejects] == [(2, 4, "register_kwh", "bad", "not a number")]


def test_bad_value_after_a_later_row_with_a_quoted_newline_is_attributed_to_its_record(
    settings: Settings, dsn: str
) -> None:
    settings.max_reject_ratio = 0.5
    content = METER_HEADER + (
        "M0,2024-01-15T00:00:00Z,0,\n"  # record 1, line 2
        '"A\r\nB\nC",2024-01-15T00:10:00Z,1,\n'  # record 2, lines 3-5
        "M1,2024-01-15T00:20:00Z,bad,\n"  # record 3, line 6
        "M1,2024-01-15T00:30:00Z,3,\n"  # record 4, line 7
        "M1,nope,4,\n"  # record 5, line 8
    )
    ingest(settings, drop(settings.imports_dir, "meter_multiline_later.csv", content))

    rows = fetch(dsn, "SELECT _record_no, meter_id FROM staging.meter_readings ORDER BY 1")
    assert [tuple(r) for r in rows] == [(1, "M0"), (2, "A\r\nB\nC"), (4, "M1")]
    rejects = fetch(
        dsn,
        "SELECT record_no, line_no, column_name, value, reason FROM ingest.rejected_rows ORDER BY record_no",
    )
    assert [tuple(r) for r in rejects] == [
        (3, 6, "register_kwh", "bad", "not a number"),
        (5, 8, "reading_at", "nope", "not a timestamp (ISO 8601, e.g. 2024-01-15T00:30:00Z)"),
    ]
