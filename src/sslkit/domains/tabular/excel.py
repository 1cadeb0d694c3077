"""Excel (.xlsx/.xlsm): the first sheet streamed through openpyxl's read-only mode as record batches, typed as CSV is."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from sslkit.core.console import info
from sslkit.core.errors import UserError
from sslkit.domains.tabular.formats import NULL_VALUES, unreadable


def _filled(cell: Any) -> bool:
    return cell is not None and cell != ""


def excel_rows(path: Path) -> Iterator[tuple[int, tuple]]:
    """(sheet row number, cell values) of the first sheet's rows (cached results for formulas), header first; rows
    with no value are skipped. Streamed: openpyxl's read-only mode never holds the whole sheet."""
    try:
        import openpyxl
    except ImportError:
        raise UserError(f"{path}: reading Excel files needs openpyxl — pip install 'sslkit[tabular]', or save the "
                        "sheet as CSV") from None
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # zipfile, XML and openpyxl errors of a broken or mislabelled file
        raise unreadable(path, "Excel", exc, " (as .xlsx, or as CSV)") from None
    try:
        sheet = book.worksheets[0]
        if len(book.sheetnames) > 1:
            info(f"reading sheet '{sheet.title}' of {path.name}; its other sheets ({', '.join(book.sheetnames[1:])}) "
                 "are not read — save one as its own file to use it")
        for number, row in enumerate(sheet.iter_rows(values_only=True), start=1):
            if any(map(_filled, row)):
                yield number, row
    finally:
        book.close()


def excel_header(path: Path, rows: Iterator[tuple[int, tuple]]) -> list[str]:
    """The column names: the first non-empty row of the sheet, up to its last filled cell, each cell filled."""
    _, header = next(rows, (0, None))
    if header is None:
        raise UserError(f"{path}: the first sheet is empty — put a header row and data on it")
    width = max(i + 1 for i, v in enumerate(header) if _filled(v))
    names = [str(v).strip() if v is not None else "" for v in header[:width]]
    if "" in names:
        raise UserError(f"{path}: the header has an empty cell in column {names.index('') + 1} — name every column")
    return names


def excel_batches(path: Path, batch_rows: int) -> Iterator[Any]:
    """Record batches of the first sheet. A column whose cells mix numbers and text is read as text, and one of
    numbers stored as text as numbers; text that spells a missing value ("NA", "?", …) is missing: as in CSV."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = excel_rows(path)
    names = excel_header(path, rows)
    width = len(names)
    nulls = set(NULL_VALUES)

    def column(values: list) -> Any:
        values = [None if isinstance(v, str) and v.strip() in nulls else v for v in values]
        try:
            arr = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):      # numbers and text in one column: text
            arr = pa.array([None if v is None else str(v) for v in values], pa.string())
        if pa.types.is_string(arr.type):                  # numbers stored as text ('123, a green corner in Excel)
            for numeric in (pa.int64(), pa.float64()):
                try:
                    return pc.cast(pc.utf8_trim_whitespace(arr), numeric)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    continue
        return arr

    def batch(chunk: list[tuple]) -> Any:
        cols = [[(r[i] if i < len(r) else None) for r in chunk] for i in range(width)]
        return pa.RecordBatch.from_arrays([column(c) for c in cols], names=names)

    chunk: list[tuple] = []
    for number, row in rows:
        if any(map(_filled, row[width:])):
            raise UserError(f"{path}: row {number} has values right of the header's {width} column(s) "
                            f"({', '.join(names[:3])}{', …' if width > 3 else ''}) — the first non-empty row must be "
                            "the header (delete any title rows above it) and name every column")
        chunk.append(row)
        if len(chunk) == batch_rows:
            yield batch(chunk)
            chunk = []
    if chunk:
        yield batch(chunk)
