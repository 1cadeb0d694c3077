"""CSV/TSV (maybe compressed): sniffing the dialect (delimiter, encoding, decimal mark), the streaming pyarrow reader,
and read errors turned into one line that names the bad row or column."""
from __future__ import annotations

import collections
import csv
import functools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sslkit.core.console import info
from sslkit.core.errors import UserError
from sslkit.domains.tabular.formats import BLOCK_BYTES, NULL_VALUES, table_kind


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


def open_csv(path: Path, string_columns: list[str]) -> Any:
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
        raise UserError(csv_message(path, exc)) from None


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


def csv_message(path: Path, exc: Exception) -> str:
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
            name = open_csv(path, []).schema.names[int(found.group(1))]
            return (f"{path}: column '{name}' is {found.group(2)} in the first {BLOCK_BYTES >> 20} MiB but further "
                    f"down holds {found.group(3)[:40]!r} — clean that value (empty or NA for missing), or pass "
                    f"--categorical {shlex.quote(name)} if the column is text")
        col = text.split("column #")[1].split(":")[0] if "column #" in text else "?"
        return (f"{path}: column #{col} changes type part-way through ({text}) — "
                "pass --categorical NAME for that column or clean the values")
    return f"{path} is not a readable CSV/TSV table ({text}) — check the delimiter and the file"
