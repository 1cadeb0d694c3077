"""Reading tables, streamed in pyarrow record batches: one entry point (`iter_batches`, `table_columns`) over every
format — CSV/TSV (`csv_reader.py`), JSON lines, Excel (`excel.py`), Parquet and Feather/Arrow.

CSV/TSV are read with `pyarrow.csv.open_csv` block by block, JSON lines with `pyarrow.json.open_json`, and
Parquet with `ParquetFile.iter_batches`, so a table larger than memory is never loaded whole:
the preprocessing is fitted in one streaming pass and the encoded rows are
written to a memory-mapped cache (see `preprocess.py`). The bundled sample tables are in `samples.py`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

from sslkit.core.errors import UserError
from sslkit.domains.tabular.csv_reader import csv_message, open_csv
from sslkit.domains.tabular.excel import excel_batches, excel_header, excel_rows
from sslkit.domains.tabular.formats import BLOCK_BYTES, check_table_path, table_kind, unreadable


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
            raise unreadable(path, "Parquet", exc) from None
        return
    if table_kind(path) == "excel":
        yield from excel_batches(path, batch_rows)
        return
    if table_kind(path) == "arrow":
        batches: Iterator[Any] = _arrow_batches(path)
    elif table_kind(path) == "json":   # no parse-time text columns: values are formatted as text when encoded
        batches = _stream(_json_reader(path), lambda exc: _json_message(path, exc))
    else:                              # CSV blocks come in at the reader's block size
        yield from _stream(open_csv(path, list(string_columns)), lambda exc: csv_message(path, exc))
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


def _arrow_reader(path: Path) -> Any:
    """A Feather v2 / Arrow IPC file (memory-mapped, random access) or stream reader."""
    import pyarrow as pa

    try:
        try:
            return pa.ipc.open_file(pa.memory_map(str(path)))
        except pa.ArrowInvalid:                 # the IPC stream format: read front to back
            return pa.ipc.open_stream(pa.OSFile(str(path)))
    except (pa.ArrowException, OSError) as exc:
        raise unreadable(path, "Feather/Arrow", exc, " (Feather v1 files: re-save with pyarrow.feather.write_feather)"
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
        raise unreadable(path, "Feather/Arrow", exc) from None


def table_columns(path: Path) -> list[str]:
    """Column names from the header (CSV) or schema (Parquet, Arrow), without reading the rows."""
    import pyarrow as pa

    path = check_table_path(path)
    if table_kind(path) == "arrow":
        return _check_names(path, _arrow_reader(path).schema.names)
    if table_kind(path) == "json":
        return _check_names(path, _json_reader(path).schema.names)
    if table_kind(path) == "excel":
        return _check_names(path, excel_header(path, excel_rows(path)))
    if table_kind(path) == "parquet":
        import pyarrow.parquet as pq

        try:
            return _check_names(path, pq.read_schema(path).names)
        except (pa.ArrowException, OSError) as exc:
            raise unreadable(path, "Parquet", exc) from None
    return _check_names(path, open_csv(path, []).schema.names)
