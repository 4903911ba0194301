"""Workbooks for tests, written the way Excel writes them: shared strings, date styles, formulas
with cached values, booleans and error cells (openpyxl cannot write cached formula values)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from xml.sax.saxutils import escape

from services.ingest.xlsx_reader import column_letter

_NS = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
_REL_NS = 'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"'
_EPOCH = datetime(1899, 12, 30)


@dataclass(frozen=True)
class Formula:
    expression: str
    cached: object


@dataclass(frozen=True)
class ErrorCell:
    code: str


class _Strings:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.index: dict[str, int] = {}

    def add(self, text: str) -> int:
        if text not in self.index:
            self.index[text] = len(self.items)
            self.items.append(text)
        return self.index[text]


def _cell(ref: str, value: object, strings: _Strings) -> str:
    if isinstance(value, Formula):
        formula = f"<f>{escape(value.expression)}</f>"
        if isinstance(value.cached, str):
            return f'<c r="{ref}" t="str">{formula}<v>{escape(value.cached)}</v></c>'
        style = ' s="1"' if isinstance(value.cached, date) else ""
        return f'<c r="{ref}"{style}>{formula}<v>{_value_xml(value.cached)}</v></c>'
    if isinstance(value, ErrorCell):
        return f'<c r="{ref}" t="e"><v>{escape(value.code)}</v></c>'
    if isinstance(value, bool):
        return f'<c r="{ref}" t="b"><v>{int(value)}</v></c>'
    if isinstance(value, str):
        return f'<c r="{ref}" t="s"><v>{strings.add(value)}</v></c>'
    if isinstance(value, datetime):
        return f'<c r="{ref}" s="2"><v>{_value_xml(value)}</v></c>'
    if isinstance(value, date):
        return f'<c r="{ref}" s="1"><v>{_value_xml(value)}</v></c>'
    return f'<c r="{ref}"><v>{_value_xml(value)}</v></c>'


def _value_xml(value: object) -> str:
    if isinstance(value, datetime):
        return repr((value - _EPOCH).total_seconds() / 86400)
    if isinstance(value, date):
        return str((datetime(value.year, value.month, value.day) - _EPOCH).days)
    return repr(value) if isinstance(value, float) else str(value)


def sheet_xml(rows: Sequence[Sequence[object]], strings: _Strings) -> str:
    out = [f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><worksheet {_NS}><sheetData>']
    for r, row in enumerate(rows, start=1):
        cells = [
            _cell(f"{column_letter(c)}{r}", v, strings)
            for c, v in enumerate(row)
            if v is not None and v != ""
        ]
        if cells:
            out.append(f'<row r="{r}">{"".join(cells)}</row>')
    out.append("</sheetData></worksheet>")
    return "".join(out)


def _content_types(sheets: int) -> str:
    main = "application/vnd.openxmlformats-officedocument.spreadsheetml"
    overrides = [
        f'<Override PartName="/xl/workbook.xml" ContentType="{main}.sheet.main+xml"/>',
        f'<Override PartName="/xl/sharedStrings.xml" ContentType="{main}.sharedStrings+xml"/>',
        f'<Override PartName="/xl/styles.xml" ContentType="{main}.styles+xml"/>',
        *(
            f'<Override PartName="/xl/worksheets/sheet{i}.xml" ContentType="{main}.worksheet+xml"/>'
            for i in range(1, sheets + 1)
        ),
    ]
    return (
        '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>' + "".join(overrides) + "</Types>"
    )


def xlsx(sheets: dict[str, Sequence[Sequence[object]]]) -> bytes:
    """A workbook with these sheets (rows of cell values; None or "" leaves a cell empty, an
    empty list leaves a row out)."""
    strings = _Strings()
    parts = {
        f"xl/worksheets/sheet{i}.xml": sheet_xml(rows, strings) for i, rows in enumerate(sheets.values(), 1)
    }
    sheet_list = "".join(
        f'<sheet name="{escape(name)}" sheetId="{i}" r:id="rId{i}"/>' for i, name in enumerate(sheets, 1)
    )
    rels = "".join(
        f'<Relationship Id="rId{i}" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
        f'relationships/worksheet" Target="worksheets/sheet{i}.xml"/>'
        for i in range(1, len(sheets) + 1)
    )
    n = len(sheets)
    rels += (
        f'<Relationship Id="rId{n + 1}" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
        f'relationships/sharedStrings" Target="sharedStrings.xml"/>'
        f'<Relationship Id="rId{n + 2}" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
        f'relationships/styles" Target="styles.xml"/>'
    )
    sst = "".join(f'<si><t xml:space="preserve">{escape(s)}</t></si>' for s in strings.items)
    parts.update(
        {
            "[Content_Types].xml": _content_types(len(sheets)),
            "_rels/.rels": '<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/'
            'package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/'
            'officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>',
            "xl/workbook.xml": f'<?xml version="1.0"?><workbook {_NS} {_REL_NS}><sheets>{sheet_list}</sheets>'
            "</workbook>",
            "xl/_rels/workbook.xml.rels": '<?xml version="1.0"?><Relationships xmlns="http://schemas.'
            f'openxmlformats.org/package/2006/relationships">{rels}</Relationships>',
            "xl/sharedStrings.xml": f'<?xml version="1.0"?><sst {_NS} count="{len(strings.items)}">'
            f"{sst}</sst>",
            "xl/styles.xml": f'<?xml version="1.0"?><styleSheet {_NS}><cellXfs count="3"><xf numFmtId="0"/>'
            '<xf numFmtId="14" applyNumberFormat="1"/><xf numFmtId="22" applyNumberFormat="1"/></cellXfs>'
            "</styleSheet>",
        }
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in parts.items():
            archive.writestr(name, text)
    return out.getvalue()
