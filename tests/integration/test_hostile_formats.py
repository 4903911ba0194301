"""Hostile workbooks and Parquet files through the CLI: each fails with its reason, in bounded
memory, and nothing is lost (the exact bytes wait in imports/failed/ beside their .error.json)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from tests.integration.helpers import drop
from tests.integration.workbooks import xlsx
from tests.memory import run_cli_measured
from tests.pg import fetch

MEMORY_BOUND_MB = 150
SHIPMENTS = [["JobNumber", "ShipmentNumber"], *[[f"J{i}", f"S{i}"] for i in range(200)]]


def with_shared_strings_bomb(workbook: bytes, expands_to: int) -> bytes:
    """The workbook with its shared-strings part replaced by one that inflates to `expands_to`
    bytes (a few MB on disk)."""
    out = io.BytesIO()
    piece = b"<si><t>aaaaaaaaaaaaaaaaaaaa</t></si>" * 30_000
    with (
        zipfile.ZipFile(io.BytesIO(workbook)) as source,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as bomb,
    ):
        for info in source.infolist():
            if info.filename != "xl/sharedStrings.xml":
                bomb.writestr(info.filename, source.read(info.filename))
        with bomb.open("xl/sharedStrings.xml", "w", force_zip64=True) as part:
            part.write(b'<?xml version="1.0"?><sst>')
            written = 0
            while written < expands_to:
                part.write(piece)
                written += len(piece)
            part.write(b"</sst>")
    return out.getvalue()


def assert_failed_through_the_cli(dsn: str, workdir: Path, name: str, content: bytes, error: str) -> float:
    drop(workdir / "imports", name, content)

    run = run_cli_measured(dsn, workdir, "--ingest", "imports", timeout=300)

    assert run.returncode == 1, run.stderr[-2000:]
    files = fetch(dsn, "SELECT name, status, error, rows_loaded FROM ingest.files")
    assert [tuple(f) for f in files] == [(name, "failed", error, 0)]
    failed = workdir / "imports" / "failed" / name
    assert failed.read_bytes() == content
    sidecar = json.loads((failed.parent / f"{name}.error.json").read_text(encoding="utf-8"))
    assert f"{sidecar['message']}. {sidecar['hint']}" == error
    assert not (workdir / "imports" / name).exists()
    print(f"{name}: peak {run.peak_mb:.0f} MB")  # for the record (pytest -s)
    assert run.peak_mb <= MEMORY_BOUND_MB
    return run.peak_mb


@pytest.mark.slow
def test_a_workbook_whose_shared_strings_expand_to_gigabytes(dsn: str, workdir: Path) -> None:
    content = with_shared_strings_bomb(xlsx({"S": SHIPMENTS}), 2 << 30)
    assert len(content) < 20 << 20

    assert_failed_through_the_cli(
        dsn,
        workdir,
        "shipments_bomb.xlsx",
        content,
        "the workbook's part xl/sharedStrings.xml would expand to 2,148,120,032 bytes, more than the "
        "50,331,648 loadbay reads (a zip bomb, or a sheet to split). Split the data into smaller "
        "workbooks, or export it as CSV",
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "content", "error"),
    [
        (
            "shipments_cut.xlsx",
            xlsx({"S": SHIPMENTS})[:1500],
            "the workbook is damaged or incomplete (File is not a zip file). Open it in Excel, save it "
            "again as .xlsx and drop it again",
        ),
        (
            "shipments_locked.xlsx",
            b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(4096),
            "the workbook is password-protected (encrypted), so it cannot be read. Save it without a "
            "password (File > Info > Protect Workbook > Encrypt with Password: clear it) and drop it again",
        ),
        (
            "shipments_blank.xlsx",
            xlsx({"Sheet1": []}),
            "sheet 'Sheet1' of the workbook has no rows. Nothing to load; drop the file again once it "
            "has rows",
        ),
        (
            "meter_fake.parquet",
            b"PAR1" + bytes(2000),
            "the file is not Parquet (a Parquet file starts and ends with PAR1; this one starts with "
            "b'PAR1' and ends with b'\\x00\\x00\\x00\\x00'). Write the file again (it may be cut off), or "
            "give it the extension of what it is",
        ),
    ],
    ids=["truncated-xlsx", "encrypted-xlsx", "no-rows-xlsx", "not-parquet"],
)
def test_hostile_files_fail_with_a_reason_in_bounded_memory(
    dsn: str, workdir: Path, name: str, content: bytes, error: str
) -> None:
    assert_failed_through_the_cli(dsn, workdir, name, content, error)
