"""Applying the fitted preprocessing (column typing, missing values, scaling) to record batches; fitted in one
streaming pass by `preprocess_fit.py` and saved in the run.

A fitted `Preprocessor` turns any record batch with the pretraining columns into
    num  (n, Dn) float32  scaled numeric values, missing ones set to 0
    miss (n, Dn) uint8    1 where the numeric value was missing
    cat  (n, Dc) int64    category codes: 0 = missing, 1 = unknown (unseen at fit), 2.. = categories
It is saved as `preprocess.json` in the run folder and applied unchanged by `embed`/`evaluate`.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from sslkit.core.errors import UserError

MISSING, UNKNOWN = 0, 1
NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"   # a text cell that counts as a number


@dataclass
class NumericColumn:
    name: str
    source: str                      # int | float | datetime
    center: float                    # imputation value (median), also the robust/standard centre
    scale: float
    quantiles: list[float] = field(default_factory=list)
    has_missing: bool = False
    text_as_missing: int = 0         # values at fit that were text, not numbers, and are read as missing (embed too)


@dataclass
class CategoricalColumn:
    name: str
    categories: list[str]            # code = 2 + position
    has_missing: bool = False
    dropped_rare: int = 0            # distinct values folded into the unknown token


@dataclass
class Preprocessor:
    numeric: list[NumericColumn]
    categorical: list[CategoricalColumn]
    scaling: str
    ignored: dict[str, str]          # column -> why it is not a feature (id, target, dropped, text, constant)
    n_rows: int
    notes: list[str] = field(default_factory=list)

    @property
    def features(self) -> list[str]:
        return [c.name for c in self.numeric] + [c.name for c in self.categorical]

    @property
    def cardinalities(self) -> list[int]:
        """Embedding rows per categorical column: categories + missing + unknown."""
        return [len(c.categories) + 2 for c in self.categorical]

    def to_json(self) -> str:
        return json.dumps({"format": 1, **asdict(self)})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessor:
        return cls(numeric=[NumericColumn(**c) for c in data["numeric"]],
                   categorical=[CategoricalColumn(**c) for c in data["categorical"]],
                   scaling=data["scaling"], ignored=data["ignored"], n_rows=data["n_rows"], notes=data.get("notes", []))

    @classmethod
    def load(cls, path: Path) -> Preprocessor:
        if not Path(path).is_file():
            raise UserError(f"{path} is missing — this run was not written by `sslkit tabular pretrain`")
        return cls.from_dict(json.loads(Path(path).read_text()))

    def string_columns(self) -> list[str]:
        return [c.name for c in self.categorical]

    # -- applying -------------------------------------------------------------------------
    def check_columns(self, names: Iterable[str], source: str, drop: Iterable[str] = ()) -> None:
        """The table must hold every feature column and nothing unknown besides id/target/dropped columns."""
        names = [n for n in names if n not in set(drop)]
        missing = [f for f in self.features if f not in names]
        extra = [n for n in names if n not in self.features and n not in self.ignored]
        if missing or extra:
            parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"extra {', '.join(extra)}"] if extra else [])
            raise UserError(f"{source}: columns differ from pretraining ({'; '.join(parts)}) — "
                            "give a table with the pretraining columns (use --drop for extra ones)")

    def encode(self, batch: Any, *, source: str = "table", row0: int = 0,
               stray: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A pyarrow RecordBatch/Table -> (num, miss, cat) as described in the module docstring. `source` and
        `row0` (rows before this batch) place a bad value in errors; `stray` counts, per column, the text values read
        as missing in columns that had such values at fit (anywhere else text in a numeric column is an error)."""
        n = batch.num_rows
        num = np.zeros((n, len(self.numeric)), np.float32)
        miss = np.zeros((n, len(self.numeric)), np.uint8)
        for j, col in enumerate(self.numeric):
            values = self._numbers(batch_column(batch, col.name), col, source, row0, stray)
            bad = ~np.isfinite(values)
            miss[:, j] = bad
            num[:, j] = np.where(bad, 0.0, self._scale(np.where(bad, col.center, values), col))
        cat = np.zeros((n, len(self.categorical)), np.int64)
        for j, col in enumerate(self.categorical):
            cat[:, j] = category_codes(batch_column(batch, col.name), col.categories)
        return num, miss, cat

    @staticmethod
    def _numbers(arr: Any, col: NumericColumn, source: str, row0: int, stray: dict[str, int] | None) -> np.ndarray:
        if not is_text(arr.type):
            return numeric_values(arr, col.name)
        quoted = shlex.quote(col.name)
        if col.source == "datetime":
            return _dates(arr, col.name, source, row0)
        values, bad = text_numbers(arr)
        if bad.any():
            if not col.text_as_missing:
                i = int(np.flatnonzero(bad)[0])
                raise UserError(f"{source}: column '{col.name}' holds {cell_repr(arr, i)} in row {row0 + i + 1:,}, which "
                                f"is not a number (the column was numeric at pretraining) — clean that value, or "
                                f"pretrain again with --categorical {quoted} to use the column as text")
            if stray is not None:
                stray[col.name] = stray.get(col.name, 0) + int(bad.sum())
        return values

    def _scale(self, x: np.ndarray, col: NumericColumn) -> np.ndarray:
        if self.scaling == "quantile":
            return quantile_normal(x, np.asarray(col.quantiles))
        return ((x - col.center) / col.scale).clip(-10, 10)


def batch_column(batch: Any, name: str) -> Any:
    idx = batch.schema.get_field_index(name)
    if idx < 0:
        raise UserError(f"column '{name}' is missing from the table — give a table with the pretraining columns")
    return batch.column(idx)


def is_text(t: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_string(t) or pa.types.is_large_string(t)


def cell_repr(arr: Any, i: int) -> str:
    """A value for a message: quoted, trimmed, at most 40 characters."""
    text = str(arr[i].as_py()).strip()
    return repr(text if len(text) <= 40 else text[:37] + "...")


def text_numbers(arr: Any) -> tuple[np.ndarray, np.ndarray]:
    """(values, stray) of a text array: float64 with NaN where missing or not a number, and True where a value is
    present but not a number (`NUMBER`). Vectorised, so that a column of numbers with a few stray words costs little."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = as_text(arr)
    try:
        return np.asarray(pc.fill_null(pc.cast(text, pa.float64()), float("nan")), dtype=np.float64), \
            np.zeros(len(text), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    ok = pc.match_substring_regex(text, NUMBER)
    stray = np.asarray(pc.fill_null(pc.invert(ok), False), dtype=bool)
    numbers = pc.cast(pc.if_else(ok, text, pa.scalar(None, pa.string())), pa.float64())
    return np.asarray(pc.fill_null(numbers, float("nan")), dtype=np.float64), stray


def _dates(arr: Any, name: str, source: str, row0: int) -> np.ndarray:
    """Days since 1970 of a text column that was dates at pretraining (ISO 8601 text, as the CSV reader parses it);
    the first value that is no such date is an error that names it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = as_text(arr)
    try:
        return numeric_values(pc.cast(text, pa.timestamp("s")), name)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    for i, value in enumerate(text.to_pylist()):
        try:
            pc.cast(pa.array([value], pa.string()), pa.timestamp("s"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise UserError(f"{source}: column '{name}' holds {cell_repr(text, i)} in row {row0 + i + 1:,}, which is not a "
                            "date like those at pretraining — write it as ISO 8601 (2020-01-31), or clean the value"
                            ) from None
    raise UserError(f"{source}: column '{name}' holds text that is not a date like those at pretraining — write its "
                    "values as ISO 8601 (2020-01-31)")


def numeric_values(arr: Any, name: str) -> np.ndarray:
    """float64 values of a numeric/boolean/temporal pyarrow array; nulls become NaN; datetimes in days."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = arr.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        seconds = pc.cast(pc.cast(arr, pa.timestamp("s")), pa.int64())
        return np.asarray(pc.fill_null(pc.cast(seconds, pa.float64()), float("nan")), dtype=np.float64) / 86400.0
    if is_text(t):
        values, bad = text_numbers(arr)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise UserError(f"column '{name}' holds {cell_repr(arr, i)} in row {i + 1:,}, which is not a number — clean "
                            "that value")
        return values
    try:
        return np.asarray(pc.fill_null(pc.cast(arr, pa.float64()), float("nan")), dtype=np.float64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise UserError(f"column '{name}' of type {t} cannot be read as numbers — pass --drop {shlex.quote(name)}") from None


def as_text(arr: Any) -> Any:
    """A pyarrow string array of the values (numbers/booleans formatted), whitespace trimmed."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = pc.cast(arr, pa.string())
    return pc.utf8_trim_whitespace(arr)


def category_codes(arr: Any, categories: list[str]) -> np.ndarray:
    """0 for missing, 1 for values not in `categories`, 2 + index otherwise."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = as_text(arr)
    idx = pc.index_in(text, value_set=pa.array(categories, pa.string()))
    codes = np.asarray(pc.fill_null(pc.add(idx, 2), UNKNOWN), dtype=np.int64).copy()
    codes[np.asarray(text.is_null(), dtype=bool)] = MISSING
    return codes


def quantile_normal(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Map x through the fitted quantiles to a standard normal (sklearn's QuantileTransformer rule)."""
    from scipy.special import ndtri

    ref = np.linspace(0.0, 1.0, len(q))
    u = 0.5 * (np.interp(x, q, ref) - np.interp(-x, -q[::-1], -ref[::-1]))
    eps = 1e-7
    return ndtri(np.clip(u, eps, 1 - eps)).astype(np.float32)
