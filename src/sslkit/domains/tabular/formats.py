"""The table formats sslkit reads, recognised from the file name, and the checks and messages shared by their readers."""
from __future__ import annotations

from pathlib import Path

from sslkit.core.errors import UserError


JSON = (".jsonl", ".ndjson", ".json")            # JSON lines: one object per line


TEXT = (".csv", ".tsv") + JSON


EXCEL = (".xlsx", ".xlsm")                       # the first sheet, through openpyxl


SUFFIXES = TEXT + EXCEL + (".parquet", ".pq", ".feather", ".arrow", ".ipc")


COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")   # CSV/TSV/JSON lines only; pyarrow decompresses them on the fly


NULL_VALUES = ["", "?", "NA", "N/A", "NaN", "nan", "null", "NULL", "None", "#N/A", "-nan", "-NaN"]


BLOCK_BYTES = 8 << 20  # 8 MiB CSV blocks: type inference sees tens of thousands of rows


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


def unreadable(path: Path, kind: str, exc: Exception, hint: str = "") -> UserError:
    return UserError(f"{path} is not a readable {kind} file ({str(exc).splitlines()[0]}) — "
                     f"check the file or write it again{hint}")
