"""The pure pieces of the formats: registry, dialect sniffing, BOMs, number styles, Excel cells."""

from __future__ import annotations

import codecs
import io

import pytest

from app.errors import EncodingError, UnsupportedFormat
from services.ingest.csv_dialect import Transcoder, bom_encoding, sniff_delimiter
from services.ingest.files import FileFormat
from services.ingest.formats import FORMATS, format_of
from services.ingest.values import lone_decimal_comma, number_converter
from services.ingest.xlsx_reader import cell_reference, column_letter, shown_number


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.csv", FileFormat("csv", False)),
        ("a.TSV.gz", FileFormat("csv", True)),
        ("Book1.txt", FileFormat("csv", False)),
        ("x.jsonl", FileFormat("ndjson", False)),
        ("shipments.XLSX", FileFormat("xlsx", False)),
        ("m.xlsm", FileFormat("xlsx", False)),
        ("part-0.parquet", FileFormat("parquet", False)),
    ],
)
def test_the_registry_names_the_format(name: str, expected: FileFormat) -> None:
    assert format_of(name) == expected


@pytest.mark.parametrize("name", ["a.xlsx.gz", "a.parquet.gz", "a.xls", "a.csv.zip"])
def test_names_no_format_reads_are_unsupported(name: str) -> None:
    with pytest.raises(UnsupportedFormat):
        format_of(name)


def test_every_format_has_its_own_extensions() -> None:
    extensions = [e for f in FORMATS for e in f.extensions]
    assert len(extensions) == len(set(extensions))
    assert [f.kind for f in FORMATS] == ["csv", "json", "ndjson", "xlsx", "parquet"]


@pytest.mark.parametrize(
    ("header", "delimiter"),
    [
        ("a,b,c", ","),
        ("a;b;c", ";"),
        ("a\tb\tc", "\t"),
        ("a|b|c", "|"),
        ('"a;b",c', ","),  # inside quotes does not count
        ("a;b,c", ","),  # a tie: the comma
        ("single", ","),
        ("Name, first;Name, last;Zip;City", ";"),
    ],
)
def test_the_delimiter_that_splits_the_header_most(header: str, delimiter: str) -> None:
    assert sniff_delimiter(header) == delimiter


@pytest.mark.parametrize(
    ("head", "encoding"),
    [
        (codecs.BOM_UTF8 + b"a", "utf-8"),
        (codecs.BOM_UTF16_LE + b"a\x00", "utf-16"),
        (codecs.BOM_UTF16_BE + b"\x00a", "utf-16"),
        (codecs.BOM_UTF32_LE + b"a\x00\x00\x00", "utf-32"),
        (codecs.BOM_UTF32_BE + b"\x00\x00\x00a", "utf-32"),
        (b"abc", None),
    ],
)
def test_a_bom_names_the_encoding(head: bytes, encoding: str | None) -> None:
    assert bom_encoding(head) == encoding


def test_the_transcoder_hands_out_utf8_and_places_a_bad_unit() -> None:
    text = "a;b\r\nä;€\r\n"
    good = Transcoder(io.BytesIO(codecs.BOM_UTF16_LE + text.encode("utf-16-le")), "utf-16", "f.txt")
    assert good.read() == text.encode("utf-8")
    broken = codecs.BOM_UTF16_LE + "x\ny".encode("utf-16-le") + b"\x00\xdc" + "z".encode("utf-16-le")
    with pytest.raises(EncodingError) as caught:
        Transcoder(io.BytesIO(broken), "utf-16", "f.txt").read()
    assert caught.value.message == "bytes 0x00dc at line 2, position 2, are not valid utf-16"


@pytest.mark.parametrize(
    ("decimal", "thousands", "value", "expected"),
    [
        (",", ".", "1.234,56", "1234.56"),
        (",", ".", "-1.234.567", "-1234567"),
        (",", ".", ",5", ".5"),
        (",", "", "1234,5", "1234.5"),
        (",", " ", "1 234\u00a0567,5", "1234567.5"),
        (".", ",", "1,234.5", "1234.5"),
        (",", "'", "1'234,5", "1234.5"),
    ],
)
def test_numbers_in_the_declared_style(decimal: str, thousands: str, value: str, expected: str) -> None:
    assert number_converter(decimal, thousands)(value) == expected


@pytest.mark.parametrize(
    ("decimal", "thousands", "value"),
    [(",", ".", "1,234.5"), (",", ".", "12.5"), (",", ".", "1.2345"), (",", "", "1.5"), (".", ",", "1,23")],
)
def test_numbers_in_another_style_are_refused(decimal: str, thousands: str, value: str) -> None:
    with pytest.raises(ValueError, match="not a number written as this dataset declares"):
        number_converter(decimal, thousands)(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0,25", "0.25"), ("-3,5", "-3.5"), ("1.234,5", "1.234,5"), ("12", "12"), ("a,b", "a,b")],
)
def test_a_lone_decimal_comma(value: str, expected: str) -> None:
    assert lone_decimal_comma(value) == expected


@pytest.mark.parametrize(
    ("raw", "shown"),
    [("0.1", "0.1"), ("0.30000000000000004", "0.3"), ("42", "42"), ("42.0", "42"), ("1E-7", "1e-07"),
     ("123456789012345678", "1.23456789012346e+17"), ("-0.5", "-0.5")],
)  # fmt: skip
def test_numbers_as_excel_shows_them(raw: str, shown: str) -> None:
    assert shown_number(raw) == shown


def test_cells_named_as_excel_names_them() -> None:
    assert [column_letter(i) for i in (0, 25, 26, 701, 702)] == ["A", "Z", "AA", "ZZ", "AAA"]
    assert cell_reference("Sheet1", 2, 17) == "Sheet1!C17"
    assert cell_reference("Week 23", 0, 5) == "'Week 23'!A5"
    assert cell_reference("O'Neil", None, 9) == "'O''Neil'!9:9"
