"""Embedding files: one Parquet table per `embed` run.

Layout: an id column (its type kept: ints stay ints, strings stay strings), an `embedding`
column of `fixed_size_list<float32>[D]` (one contiguous buffer, so reading is zero-copy),
optional extra columns (labels, paths, ...), and file-level metadata:

    sslkit.format = "embeddings/1"   sslkit.dim = "D"   sslkit.id_column = "<id_name>"
    sslkit.metadata = JSON of the caller's metadata (model, run, ...)

pyarrow is imported inside the functions: `sslkit --help` must stay fast.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from sslkit.core.files import atomic_writer, check_file_out
from sslkit.core.errors import UserError

FORMAT = "embeddings/1"
EMBEDDING_COLUMN = "embedding"


def _vectors(vectors: Any) -> np.ndarray:
    """(N, D) float32, C-contiguous; refuses wrong shapes and non-finite values (after the cast)."""
    arr = np.asarray(vectors)
    if arr.ndim != 2:
        raise UserError(f"embeddings must be a 2-D array (samples, dim), got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise UserError("embeddings have dimension 0 — check the encoder output")
    if arr.dtype.kind not in "fiub":
        raise UserError(f"embeddings must be numeric, got dtype {arr.dtype}")
    with np.errstate(over="ignore"):  # overflow becomes inf, reported just below
        arr = np.ascontiguousarray(arr, dtype=np.float32)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise UserError(f"embeddings contain NaN or inf (or values too large for float32) in {len(rows)} row(s), "
                        f"first at row {int(rows[0])} — nothing was written; check the encoder")
    return arr


def _column(values: Any, name: str, n: int):
    """A pyarrow array of length n; numpy arrays keep their dtype, lists are type-inferred."""
    import pyarrow as pa

    try:
        arr = pa.array(values) if isinstance(values, np.ndarray) else pa.array(list(values))
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
        raise UserError(f"column {name!r} cannot be stored ({exc}) — give values of one type") from None
    if len(arr) != n:
        raise UserError(f"column {name!r} has {len(arr)} values but there are {n} embeddings — give one per row")
    return arr


def _build_table(ids: Sequence, vectors: np.ndarray, id_name: str, extra: Mapping[str, Sequence] | None,
                 metadata: Mapping[str, Any] | None):
    """Validate everything and build the table in memory, before anything touches the disk."""
    import pyarrow as pa

    n, dim = vectors.shape
    extra = dict(extra or {})
    if id_name == EMBEDDING_COLUMN or id_name in extra or EMBEDDING_COLUMN in extra:
        raise UserError(f"column names clash: id {id_name!r}, extra {sorted(extra)}, and reserved {EMBEDDING_COLUMN!r} "
                        "— rename the id or extra column")
    try:
        meta_json = json.dumps(dict(metadata or {}), sort_keys=True)
    except TypeError as exc:
        raise UserError(f"embedding metadata must be JSON-serialisable: {exc}") from None
    columns = {id_name: _column(ids, id_name, n)}
    columns[EMBEDDING_COLUMN] = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
    for name, values in extra.items():
        columns[name] = _column(values, name, n)
    table = pa.table(columns)
    return table.replace_schema_metadata({
        "sslkit.format": FORMAT, "sslkit.dim": str(dim), "sslkit.id_column": id_name, "sslkit.metadata": meta_json,
    })


def check_embeddings_out(path: str | Path, overwrite: bool) -> Path:
    """Refuse an `embed --out` that is a folder, is not named .parquet/.pq (the file is Parquet whatever its name
    says), or exists without --overwrite: before any embedding is computed."""
    path = Path(path)
    if not path.is_dir() and path.suffix.lower() not in (".parquet", ".pq"):
        raise UserError(f"--out {path}: embeddings are written as Parquet — give a name ending in .parquet "
                        f"(e.g. {path.with_suffix('.parquet')})")
    return check_file_out(path, overwrite, "embeddings.parquet")


def write_embeddings(path: str | Path, ids: Sequence, vectors: Any, *, id_name: str = "id",
                     extra: Mapping[str, Sequence] | None = None, overwrite: bool = False,
                     metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ids (N,) and vectors (N, D) to a Parquet file, atomically; returns the path.

    Vectors are stored as float32. Inputs are validated before anything is written; an
    existing file is kept unless overwrite=True; the file appears only once complete
    (temp file in the same folder, then os.replace), so a crash never leaves half a file.
    """
    import pyarrow.parquet as pq

    path = check_embeddings_out(path, overwrite)
    table = _build_table(ids, _vectors(vectors), id_name, extra, metadata)

    with atomic_writer(path) as fh:
        pq.write_table(table, fh)
    return path


def _embedding_matrix(column, dim: int) -> np.ndarray:
    """(N, D) float32 from a chunked fixed_size_list column; zero-copy for a single float32 chunk."""
    import pyarrow as pa

    parts = []
    for chunk in column.chunks:
        if chunk.null_count:
            raise UserError("the embedding column has missing rows — rewrite the file with write_embeddings")
        values = chunk.flatten()  # respects the chunk's offset, no copy
        if values.type != pa.float32():
            values = values.cast(pa.float32())
        parts.append(values.to_numpy(zero_copy_only=False).reshape(-1, dim))
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)


def read_embeddings(path: str | Path, id_name: str | None = None) -> tuple[list, np.ndarray]:
    """Ids (list, original type) and vectors (N, D) float32 from a file written by write_embeddings.

    The vectors are a read-only view of Arrow memory when the file has one row group
    (the usual case); call `.copy()` before modifying them in place.
    id_name defaults to the id column recorded in the file.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise UserError(f"embedding file {path} does not exist — run the domain's `embed` command first")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{path} is not a readable Parquet file ({exc}) — give an sslkit embeddings file") from None
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    field = table.schema.field(EMBEDDING_COLUMN) if EMBEDDING_COLUMN in table.column_names else None
    if meta.get("sslkit.format") != FORMAT or field is None or not pa.types.is_fixed_size_list(field.type) \
            or not pa.types.is_floating(field.type.value_type):
        raise UserError(f"{path} is not an sslkit embeddings file (needs a fixed-size float '{EMBEDDING_COLUMN}' "
                        "column and sslkit metadata) — write it with sslkit's `embed` command")
    id_name = id_name or meta.get("sslkit.id_column", "id")
    if id_name not in table.column_names:
        others = [c for c in table.column_names if c != EMBEDDING_COLUMN]
        raise UserError(f"{path} has no id column {id_name!r}; columns are {others} — pick one of them")
    vectors = _embedding_matrix(table.column(EMBEDDING_COLUMN), field.type.list_size)
    return table.column(id_name).to_pylist(), vectors
