"""Fitting the preprocessing in one streaming pass over a table: each column's kind (numeric, categorical, date, or
left out as an id, free text or constant), its categories and a sample of its values for the quantile scaling;
the result is the `Preprocessor` of `preprocess.py`."""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from sslkit.core.errors import UserError
from sslkit.domains.tabular.preprocess import (NUMBER, CategoricalColumn, NumericColumn, Preprocessor, as_text,
                                              batch_column, cell_repr, is_text, numeric_values, text_numbers)

NUMERIC_SHARE = 0.95   # a text column whose values are at least this share numbers is numeric, the rest missing
DATE = re.compile(r"^\d{1,4}[/.-]\d{1,2}[/.-]\d{1,4}([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?$")
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


@dataclass
class _Stats:
    kind: str                                  # numeric | text
    source: str
    rows: int = 0
    nulls: int = 0
    sample: list[np.ndarray] = field(default_factory=list)
    sampled: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    overflow: bool = False
    words: int = 0                             # text values that are not numbers (text read columns)
    example: tuple[str, int] | None = None     # the first of them, and its row


def _kind_of(t: Any) -> tuple[str, str] | None:
    import pyarrow as pa

    if pa.types.is_null(t):          # a CSV column with no value at all: reported as all-missing below
        return "numeric", "float"
    if pa.types.is_boolean(t):
        return "text", "bool"
    if pa.types.is_integer(t):
        return "numeric", "int"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "numeric", "float"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "numeric", "datetime"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        return "text", "text"
    return None


def fit_preprocessor(batches: Iterable[Any], *, skip: dict[str, str], categorical: list[str], numeric: list[str],
                     scaling: str = "quantile", max_categories: int = 100, sample_rows: int = 100_000,
                     n_quantiles: int = 1000, seed: int = 0, source: str = "table") -> Preprocessor:
    """One streaming pass over `batches`: infer column kinds, count categories, sample numeric values."""
    rng = np.random.default_rng(seed)
    stats: dict[str, _Stats] = {}
    ignored = dict(skip)
    notes: list[str] = []
    n_rows, first = 0, True
    for batch in batches:
        if first:
            first = False
            for name, typ in zip(batch.schema.names, batch.schema.types):
                if name in ignored:
                    continue
                kind = ("text", "forced") if name in categorical else ("numeric", "forced") if name in numeric else _kind_of(typ)
                if kind is None:
                    ignored[name] = f"unsupported type {typ}"
                    notes.append(f"column '{name}' has type {typ} and is not used")
                    continue
                stats[name] = _Stats(kind=kind[0], source=kind[1])
                if kind[1] == "datetime":
                    notes.append(f"column '{name}' holds dates: used as a number (days since 1970)")
        for name, st in stats.items():
            arr = batch_column(batch, name)
            st.rows += len(arr)
            st.nulls += arr.null_count
            if is_text(arr.type) and name not in categorical and _no_numbers(arr):   # plain text: no number in it
                if present := len(arr) - arr.null_count:
                    st.words += present
                    if st.example is None:
                        i = int(np.flatnonzero(np.asarray(arr.is_valid()))[0])
                        st.example = (cell_repr(arr, i), n_rows + i + 1)
                if st.kind == "text":
                    _count_text(st, arr, max_categories)
            elif is_text(arr.type) and name not in categorical:   # numbers written as text, or with stray words
                values, bad = text_numbers(arr)
                if bad.any():
                    st.words += int(bad.sum())
                    if st.example is None:
                        i = int(np.flatnonzero(bad)[0])
                        st.example = (cell_repr(arr, i), n_rows + i + 1)
                if bad.sum() < len(arr) - arr.null_count:
                    _sample_numeric(st, values, sample_rows, rng)
                if st.kind == "text":
                    _count_text(st, arr, max_categories)
            elif st.kind == "numeric":
                values = numeric_values(arr, name)
                if n_rows == 0 and (why := _row_index(name, values, st.source)):
                    notes.append(f"column '{name}' looks like a row index ({why}) and is used as a feature — pass "
                                 f"--id {shlex.quote(name)} to keep it as the row id, or --drop {shlex.quote(name)}")
                _sample_numeric(st, values, sample_rows, rng)
            else:
                _count_text(st, arr, max_categories)
        n_rows += batch.num_rows
    if n_rows == 0:
        raise UserError(f"{source} has a header but no rows — give a table with data")
    num_cols, cat_cols = [], []
    for name, st in stats.items():
        if st.nulls == st.rows:
            raise UserError(f"{source}: column '{name}' is empty (all values missing) — pass --drop {shlex.quote(name)}")
        numbers = st.rows - st.nulls - st.words
        if st.words and (st.kind == "numeric" or (name not in categorical and numbers >= NUMERIC_SHARE * (st.rows - st.nulls))):
            value, row = st.example
            if numbers < NUMERIC_SHARE * (st.rows - st.nulls):   # --numeric on a column of mostly text
                raise UserError(f"{source}: column '{name}' (--numeric) holds text in {st.words:,} of "
                                f"{st.rows - st.nulls:,} values (e.g. {value} in row {row:,}) — clean those values, "
                                f"or drop --numeric {shlex.quote(name)}")
            st.kind, st.source = "numeric", "text"
            notes.append(f"column '{name}' is numbers but for {st.words:,} text value(s) (e.g. {value} in row {row:,}): "
                         f"used as numeric with those values missing — clean them, or pass --categorical "
                         f"{shlex.quote(name)} to use the column as text")
        if st.kind == "numeric":
            col = _numeric_column(name, st, scaling, n_quantiles)
            if col is None:
                ignored[name] = "constant"
                notes.append(f"column '{name}' is constant and was dropped")
            else:
                num_cols.append(col)
        else:
            col, why = _categorical_column(name, st, max_categories, forced=name in categorical)
            if col is None:
                ignored[name] = why
                notes.append(f"column '{name}' {why} and was dropped")
            else:
                if col.dropped_rare:
                    notes.append(f"column '{name}': {col.dropped_rare} rare values share the 'unknown' token")
                if (dates := _date_like(name, st)) and name not in categorical:
                    notes.append(f"column '{name}' {dates} and is used as categories")
                cat_cols.append(col)
    if not num_cols and not cat_cols:
        raise UserError(f"{source}: no usable feature columns (ignored: "
                        f"{', '.join(f'{k} ({v})' for k, v in ignored.items()) or 'none'}) — "
                        "check --target/--id/--drop and the column types")
    return Preprocessor(numeric=num_cols, categorical=cat_cols, scaling=scaling, ignored=ignored, n_rows=n_rows,
                        notes=notes)


INDEX_NAMES = ("", "index", "Unnamed: 0", "__index_level_0__")   # what pandas writes for a saved DataFrame index


def _row_index(name: str, values: np.ndarray, source: str) -> str:
    """Why a numeric column looks like a saved row index or row id ("" when it does not): the name pandas gives an
    index, or integers that rise by at least one on every row of the first batch (100 rows or more)."""
    if name in INDEX_NAMES:
        return f"pandas names a saved index '{name}'"
    if source == "int" and values.size >= 100 and np.all(np.isfinite(values)) and np.all(np.diff(values) >= 1):
        return "its integers rise on every row"
    return ""


def _sample_numeric(st: _Stats, values: np.ndarray, sample_rows: int, rng: np.random.Generator) -> None:
    """Keep a uniform sample of at most `sample_rows` finite values (reservoir by random keys)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return
    st.sample.append(values)
    st.sampled += values.size
    if st.sampled > 2 * sample_rows:
        pooled = np.concatenate(st.sample)
        st.sample = [rng.choice(pooled, sample_rows, replace=False)]
        st.sampled = sample_rows


def _no_numbers(arr: Any) -> bool:
    """True when no value of a text array reads as a number; checked on its distinct values, so that the usual text
    column (a few categories) costs one value count, not a pattern match per row."""
    import pyarrow.compute as pc

    distinct = pc.unique(as_text(arr).drop_null())
    return not len(distinct) or not pc.any(pc.match_substring_regex(distinct, NUMBER)).as_py()


def _count_text(st: _Stats, arr: Any, max_categories: int) -> None:
    import pyarrow.compute as pc

    counts = pc.value_counts(as_text(arr).drop_null())
    for value, count in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()):
        st.counts[value] = st.counts.get(value, 0) + count
    if len(st.counts) > 50 * max_categories:  # bound memory on id-like text: keep the most frequent
        top = sorted(st.counts.items(), key=lambda kv: -kv[1])[: 10 * max_categories]
        st.counts, st.overflow = dict(top), True


def _numeric_column(name: str, st: _Stats, scaling: str, n_quantiles: int) -> NumericColumn | None:
    sample = np.concatenate(st.sample) if st.sample else np.zeros(0)
    has_missing = st.nulls > 0 or sample.size < st.rows - st.nulls
    lo, hi = float(sample.min()), float(sample.max())
    if lo == hi and not has_missing:
        return None
    median = float(np.median(sample))
    if scaling == "standard":
        scale = float(sample.std()) or 1.0
        center = float(sample.mean())
    else:
        q25, q75 = np.percentile(sample, [25, 75])
        scale = float(q75 - q25) or float(sample.std()) or 1.0
        center = median
    quantiles = np.quantile(sample, np.linspace(0, 1, min(n_quantiles, sample.size))).tolist() if scaling == "quantile" else []
    return NumericColumn(name=name, source=st.source, center=center if scaling != "quantile" else median,
                         scale=scale, quantiles=quantiles, has_missing=bool(has_missing), text_as_missing=st.words)


def _categorical_column(name: str, st: _Stats, max_categories: int, forced: bool) -> tuple[CategoricalColumn | None, str]:
    ranked = sorted(st.counts.items(), key=lambda kv: (-kv[1], kv[0]))
    if len(ranked) <= 1 and st.nulls == 0:
        return None, "is constant"
    if (len(ranked) > max_categories or st.overflow) and not forced:
        if dates := _date_like(name, st):
            return None, dates
        return None, (f"is high-cardinality text ({len(ranked)}{'+' if st.overflow else ''} distinct values; "
                      f"pass --categorical {shlex.quote(name)} to keep its {max_categories} most frequent)")
    kept = [v for v, _ in ranked[:max_categories]]
    return CategoricalColumn(name=name, categories=kept, has_missing=st.nulls > 0,
                             dropped_rare=max(0, len(ranked) - len(kept))), ""


def _date_like(name: str, st: _Stats) -> str:
    """Why a text column looks like dates the reader did not parse ("" when it does not): at least 95% of its counted
    values look like dates (31/01/2020, 01.31.2020, 2020/1/31, with or without a time)."""
    total = sum(st.counts.values())
    dates = {v: c for v, c in st.counts.items() if DATE.match(v)}
    if not total or sum(dates.values()) < NUMERIC_SHARE * total:
        return ""
    drop = f"--drop {shlex.quote(name)}"
    other = next((v for v in st.counts if v not in dates), None)
    if all(ISO_DATE.match(v) for v in dates) and other is not None:   # ISO dates are parsed unless text is among them
        return f"holds dates and text that is not a date (e.g. {other!r}; clean those values, or pass {drop})"
    return (f"looks like dates in an unrecognised format (e.g. {next(iter(dates))!r}; write them as ISO 8601, "
            f"2020-01-31, to use them as dates, or pass {drop})")
