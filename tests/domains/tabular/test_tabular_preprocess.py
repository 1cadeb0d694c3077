"""Reading tables, column typing, missing values, scaling, unseen categories."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sslkit.core.errors import UserError
from sslkit.domains.tabular.io import iter_batches, table_columns
from sslkit.domains.tabular.preprocess import MISSING, UNKNOWN, Preprocessor, quantile_normal
from sslkit.domains.tabular.preprocess_fit import fit_preprocessor
from sslkit.domains.tabular.samples import read_adult


def _fit(table: pa.Table, **kw):
    opts = dict(skip={}, categorical=[], numeric=[], max_categories=10)
    opts.update(kw)
    return fit_preprocessor(table.to_batches(max_chunksize=7), **opts)


def _mixed() -> pa.Table:
    n = 40
    rng = np.random.default_rng(0)
    return pa.table({
        "x": pa.array([None if i % 5 == 0 else float(v) for i, v in enumerate(rng.normal(size=n))]),
        "k": pa.array([int(v) for v in rng.integers(0, 100, n)]),
        "color": pa.array([None if i % 7 == 0 else ["red", "blue", "green"][i % 3] for i in range(n)]),
        "flag": pa.array([bool(i % 2) for i in range(n)]),
        "const": pa.array([3.0] * n),
        "text": pa.array([f"note {i}" for i in range(n)]),
        "when": pa.array(np.datetime64("2020-01-01") + np.arange(n).astype("timedelta64[D]")),
    })


def test_column_kinds_missing_and_notes():
    pre = _fit(_mixed())
    assert [c.name for c in pre.numeric] == ["x", "k", "when"]
    assert [c.name for c in pre.categorical] == ["color", "flag"]
    assert pre.ignored == {"const": "constant", "text": pre.ignored["text"]}
    assert "high-cardinality" in pre.ignored["text"]
    assert pre.numeric[0].has_missing and not pre.numeric[1].has_missing
    assert any("dates" in n for n in pre.notes)
    num, miss, cat = pre.encode(_mixed())
    assert miss[:, 0].tolist() == [i % 5 == 0 for i in range(40)]
    assert (num[miss[:, 0] == 1, 0] == 0).all() and np.isfinite(num).all()
    # the date column is days since 1970, scaled monotonically
    assert (np.diff(num[:, 2]) >= 0).all() and num[-1, 2] > num[0, 2]
    assert (cat[[0, 7, 14], 0] == MISSING).all() and (cat[cat[:, 0] != MISSING, 0] >= 2).all()


def test_overrides_force_kinds():
    pre = _fit(_mixed(), categorical=["k", "text"], numeric=["flag"], max_categories=10)
    assert "k" in [c.name for c in pre.categorical] and "flag" in [c.name for c in pre.numeric]
    text = next(c for c in pre.categorical if c.name == "text")
    assert len(text.categories) == 10 and text.dropped_rare == 30   # forced: top 10 kept, rest -> unknown


def test_unseen_category_maps_to_unknown_not_a_crash():
    pre = _fit(_mixed())
    new = _mixed().set_column(2, "color", pa.array(["purple"] * 40))
    _, _, cat = pre.encode(new)
    assert (cat[:, 0] == UNKNOWN).all()


def test_quantile_scaling_is_monotone_and_roughly_normal():
    rng = np.random.default_rng(1)
    x = rng.exponential(size=5000)
    pre = _fit(pa.table({"x": x, "y": rng.normal(size=5000)}))
    z = pre.encode(pa.table({"x": x, "y": rng.normal(size=5000)}))[0][:, 0]
    order = np.argsort(x)
    assert (np.diff(z[order]) >= -1e-6).all()
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05     # an exponential becomes ~N(0, 1)
    assert quantile_normal(np.array([-1e9, 1e9]), np.linspace(0, 1, 11)).tolist() == pytest.approx([-5.199, 5.199], abs=1e-3)


def test_round_trip_json():
    pre = _fit(_mixed())
    again = Preprocessor.from_dict(__import__("json").loads(pre.to_json()))
    for a, b in zip(pre.encode(_mixed()), again.encode(_mixed())):
        np.testing.assert_array_equal(a, b)


def test_all_nan_column_and_zero_columns_are_errors():
    with pytest.raises(UserError, match="'empty' is empty.*--drop empty"):
        _fit(pa.table({"a": [1.0, 2.0, 3.0], "empty": pa.array([None, None, None], pa.float64())}))
    with pytest.raises(UserError, match="no usable feature columns"):
        _fit(pa.table({"c": [1, 1, 1], "t": ["a", "b", "a"]}), skip={"t": "target"})


def test_columns_differ_lists_missing_and_extra():
    pre = _fit(_mixed())
    with pytest.raises(UserError, match=r"missing x.*extra zzz"):
        pre.check_columns(["k", "color", "flag", "when", "zzz"], "t.csv")
    pre.check_columns(["x", "k", "color", "flag", "when", "const", "text"], "t.csv")  # ignored columns are fine


def test_saved_index_and_row_id_columns_are_pointed_out():
    """pandas' `to_csv` without index=False leaves "Unnamed: 0"; a rising integer id leaks row order into the features."""
    n = 300
    rng = np.random.default_rng(0)
    table = pa.table({"Unnamed: 0": pa.array(np.arange(n)), "customer_id": pa.array(np.arange(1000, 1000 + 3 * n, 3)),
                      "age": pa.array(rng.integers(18, 90, n)), "x": pa.array(rng.normal(size=n))})

    def fit(skip: dict) -> list[str]:      # first batch of 128 rows: enough to call a column rising
        return fit_preprocessor(table.to_batches(max_chunksize=128), skip=skip, categorical=[], numeric=[]).notes

    notes = " | ".join(fit({}))
    assert "'Unnamed: 0' looks like a row index (pandas names a saved index" in notes and "--id 'Unnamed: 0'" in notes
    assert "'customer_id' looks like a row index (its integers rise on every row)" in notes
    assert "'age'" not in notes and "'x'" not in notes
    assert not any("row index" in note for note in fit({"customer_id": "id", "Unnamed: 0": "dropped"}))


def test_repeated_column_names_are_one_clear_error(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("a,b,a,y\n1,2,3,x\n4,5,6,y\n")
    for read in (lambda: list(iter_batches(path)), lambda: table_columns(path)):
        with pytest.raises(UserError, match=r"repeats column names \('a' at positions 1, 3\)"):
            read()


def test_ragged_csv_reports_the_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("a,b,c\n1,2,3\n4,5,6\n7,8\n")
    with pytest.raises(UserError, match="line 4: expected 3 fields, found 2"):
        list(iter_batches(path))


def _city_rows() -> list[tuple[str, str, str, str]]:
    rng = np.random.default_rng(0)
    cities = ["Köln", "München", "Berlin, Mitte", "Saint-Étienne", "Zürich (€)"]   # a delimiter inside one value
    return [(str(int(a)), cities[c], f"{v:.2f}", "yes" if c % 2 else "no")
            for a, c, v in zip(rng.integers(18, 90, 60), rng.integers(0, 5, 60), rng.normal(1000, 300, 60))]


DIALECTS = {   # name: (suffix, delimiter, encoding, decimal comma)
    "semicolon": (".csv", ";", "utf-8", False), "pipe": (".csv", "|", "utf-8", False),
    "tab-in-csv": (".csv", "\t", "utf-8", False), "tsv": (".tsv", "\t", "utf-8", False),
    "windows-1252": (".csv", ",", "cp1252", False), "utf-8-bom": (".csv", ",", "utf-8-sig", False),
    "excel-de": (".csv", ";", "cp1252", True),
}


@pytest.mark.parametrize("name", list(DIALECTS))
def test_csv_dialects_read_like_plain_csv(tmp_path, name):
    """Semicolon/pipe/tab separators, Windows-1252 text, a UTF-8 BOM and decimal commas give the same table."""
    import csv

    header, rows = ("age", "city", "income", "y"), _city_rows()
    with open(tmp_path / "plain.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    suffix, delimiter, encoding, comma = DIALECTS[name]
    with open(tmp_path / f"t{suffix}", "w", newline="", encoding=encoding) as f:
        csv.writer(f, delimiter=delimiter).writerows(
            [header, *[(a, c, v.replace(".", ",") if comma else v, y) for a, c, v, y in rows]])
    plain = pa.Table.from_batches(list(iter_batches(tmp_path / "plain.csv")))
    got = pa.Table.from_batches(list(iter_batches(tmp_path / f"t{suffix}")))
    assert got.schema == plain.schema and got.equals(plain)
    assert "Zürich (€)" in got.column("city").to_pylist() and got.column("income").type == pa.float64()


def test_ragged_semicolon_csv_reports_the_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("a;b;c\n" + "1;2;3\n" * 10 + "4;5\n" + "6;7;8\n" * 5)
    with pytest.raises(UserError, match="line 12: expected 3 fields, found 2"):
        list(iter_batches(path))


def test_non_utf8_text_past_the_first_block_is_one_clear_error(tmp_path, monkeypatch):
    from sslkit.domains.tabular import csv_reader

    monkeypatch.setattr(csv_reader, "BLOCK_BYTES", 1 << 12)
    monkeypatch.setattr(csv_reader, "SNIFF_BYTES", 1 << 12)
    path = tmp_path / "late.csv"
    path.write_bytes(b"a,city\n" + b"0.5,Berlin\n" * 1000 + "0.7,K\xf6ln\n".encode("latin-1"))
    with pytest.raises(UserError, match="late.csv: text further down is not UTF-8.*save the file as UTF-8"):
        list(iter_batches(path))


@pytest.mark.parametrize("codec", ["gzip", "bz2"])
def test_compressed_csv_reads_like_plain_and_truncation_is_one_error(tmp_path, monkeypatch, codec):
    import bz2
    import gzip

    from sslkit.domains.tabular import csv_reader
    from sslkit.domains.tabular.samples import write_csv_atomic

    table = read_adult(limit=400)
    write_csv_atomic(table, tmp_path / "a.csv")
    raw = (tmp_path / "a.csv").read_bytes()
    packed = tmp_path / ("a.csv.gz" if codec == "gzip" else "a.csv.bz2")
    packed.write_bytes(gzip.compress(raw) if codec == "gzip" else bz2.compress(raw))
    plain = pa.Table.from_batches(list(iter_batches(tmp_path / "a.csv")))
    assert pa.Table.from_batches(list(iter_batches(packed))).equals(plain)
    monkeypatch.setattr(csv_reader, "SNIFF_BYTES", 1 << 12)                  # the cut lies past the sniffed start
    cut = tmp_path / f"cut{packed.suffix}"
    cut.write_bytes(packed.read_bytes()[: len(packed.read_bytes()) // 2])
    with pytest.raises(UserError, match=f"cut{packed.suffix}"):
        list(iter_batches(cut))
    with pytest.raises(UserError, match=r"unsupported table type '\.gz'"):
        (tmp_path / "a.parquet.gz").write_bytes(b"x")
        list(iter_batches(tmp_path / "a.parquet.gz"))


def test_feather_and_arrow_stream_read_like_parquet(tmp_path):
    import pyarrow.feather as feather

    table = read_adult(limit=1000)
    pq.write_table(table, tmp_path / "a.parquet")
    feather.write_feather(table, tmp_path / "a.feather", chunksize=300)
    with pa.OSFile(str(tmp_path / "a.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=300)
    ref = pa.Table.from_batches(list(iter_batches(tmp_path / "a.parquet")))
    for name in ("a.feather", "a.arrow"):
        batches = list(iter_batches(tmp_path / name, batch_rows=256))
        assert max(b.num_rows for b in batches) <= 256
        assert pa.Table.from_batches(batches).equals(ref) and table_columns(tmp_path / name) == ref.column_names
    (tmp_path / "bad.feather").write_bytes(b"ARROW1 but nothing after")
    with pytest.raises(UserError, match="bad.feather is not a readable Feather/Arrow file"):
        list(iter_batches(tmp_path / "bad.feather"))


def test_json_lines_read_like_parquet_and_bad_json_is_one_error(tmp_path, monkeypatch):
    import gzip
    import json

    from sslkit.domains.tabular import io

    table = read_adult(limit=1000)
    lines = "".join(json.dumps(row) + "\n" for row in table.to_pylist())
    (tmp_path / "a.jsonl").write_text(lines)
    (tmp_path / "a.ndjson.gz").write_bytes(gzip.compress(lines.encode()))
    for name in ("a.jsonl", "a.ndjson.gz"):
        batches = list(iter_batches(tmp_path / name, batch_rows=256))
        assert max(b.num_rows for b in batches) <= 256
        assert pa.Table.from_batches(batches).equals(table) and table_columns(tmp_path / name) == table.column_names
    cases = {"array.json": (json.dumps(table.to_pylist()[:3]), "is one JSON array, not JSON lines"),
             "mixed.jsonl": ('{"a": 1, "b": "x"}\n{"a": "one", "b": "y"}\n', "field 'a' changes type part-way"),
             "broken.jsonl": ('{"a": 1}\n{"a": \n', "is not a readable JSON lines table")}
    for name, (text, needle) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(UserError, match=needle):
            list(iter_batches(tmp_path / name))
    monkeypatch.setattr(io, "BLOCK_BYTES", 1 << 12)                  # types and fields come from the first block
    late = "".join(json.dumps({"a": i}) + "\n" for i in range(2000))
    (tmp_path / "late_float.jsonl").write_text(late + '{"a": 1.5}\n')
    (tmp_path / "late_field.jsonl").write_text(late + '{"a": 1, "b": 2}\n')
    with pytest.raises(UserError, match="late_float.jsonl: a field changes type part-way"):
        list(iter_batches(tmp_path / "late_float.jsonl"))
    with pytest.raises(UserError, match="late_field.jsonl: a field appears after the first"):
        list(iter_batches(tmp_path / "late_field.jsonl"))


def _xlsx(path, header, rows, extra_sheet=False):
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "data"
    sheet.append(header)
    for row in rows:
        sheet.append(row)
    if extra_sheet:
        book.create_sheet("notes").append(["written by hand"])
    book.save(path)
    return path


def test_excel_first_sheet_reads_like_csv_and_bad_workbooks_are_one_error(tmp_path, capsys):
    table = read_adult(limit=300)
    rows = [list(r.values()) for r in table.to_pylist()]
    path = _xlsx(tmp_path / "adult.xlsx", table.column_names, rows + [[None] * len(rows[0])], extra_sheet=True)
    batches = list(iter_batches(path, batch_rows=128))
    assert [b.num_rows for b in batches] == [128, 128, 44]                 # the empty last row is skipped
    assert pa.Table.from_batches(batches).equals(table) and table_columns(path) == table.column_names
    assert "reading sheet 'data' of adult.xlsx; its other sheets (notes) are not read" in " ".join(
        capsys.readouterr().err.split())
    mixed = _xlsx(tmp_path / "mixed.xlsx", ["dose", "site", "count", "ratio"],
                  [[1.5, "a", "12", " 0.5"], ["NA", "b", "7", "2"], [2, "c", None, "?"], ["high", None, "3", "1e-3"]])
    (got,) = iter_batches(mixed)
    assert got.column("dose").to_pylist() == ["1.5", None, "2", "high"]   # numbers and text: text; "NA": missing
    assert got.column("site").to_pylist() == ["a", "b", "c", None]
    assert got.column("count").to_pylist() == [12, 7, None, 3]            # numbers stored as text: numbers
    assert got.column("ratio").to_pylist() == [0.5, 2.0, None, 0.001]
    (tmp_path / "broken.xlsx").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp_path / "old.xls").write_bytes(b"\xd0\xcf\x11\xe0")
    gap = _xlsx(tmp_path / "gap.xlsx", ["a", None, "c"], [[1, 2, 3]])
    titled = _xlsx(tmp_path / "titled.xlsx", ["Sales report 2026"], [[None], ["region", "units"], ["north", 3]])
    for bad, needle in [(tmp_path / "broken.xlsx", "broken.xlsx is not a readable Excel file"),
                        (tmp_path / "old.xls", "old-style Excel file: save it as .xlsx"),
                        (gap, "the header has an empty cell in column 2"),
                        (titled, "row 3 has values right of the header's 1 column")]:
        with pytest.raises(UserError, match=needle):
            list(iter_batches(bad))


def test_csv_and_parquet_read_alike(tmp_path):
    table = read_adult(limit=300)
    pq.write_table(table, tmp_path / "a.parquet")
    from sslkit.domains.tabular.samples import write_csv_atomic

    write_csv_atomic(table, tmp_path / "a.csv")
    fits = []
    for name in ("a.csv", "a.parquet"):
        assert table_columns(tmp_path / name)[:3] == ["id", "age", "workclass"]
        pre = fit_preprocessor(iter_batches(tmp_path / name), skip={"id": "id", "income": "target"}, categorical=[],
                               numeric=[])
        fits.append(pre.encode(pa.Table.from_batches(list(iter_batches(tmp_path / name)))))
    for a, b in zip(*fits):
        np.testing.assert_allclose(a, b)
    assert fits[0][2].shape[1] == 8   # Adult's 8 categorical columns


def test_tsv_is_read_with_tabs(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("a\tb\n1\tx\n2\ty\n")
    assert table_columns(path) == ["a", "b"]


def test_numbers_with_a_stray_word_stay_numeric_with_the_word_missing(tmp_path):
    """299 numbers and one 'abc' (or one at row 29,990 of 30,000 of a CSV) are a numeric column with a gap, not free
    text; a column that is mostly text stays text, and --numeric on it is refused."""
    rng = np.random.default_rng(0)
    values = [f"{v:.3f}" for v in rng.normal(size=300)]
    values[150] = "abc"
    pre = _fit(pa.table({"x": values, "y": rng.normal(size=300)}))
    (x, _), note = pre.numeric, " | ".join(pre.notes)
    assert x.name == "x" and x.text_as_missing == 1 and x.has_missing and "x" not in pre.ignored
    assert "column 'x' is numbers but for 1 text value(s) (e.g. 'abc' in row 151)" in note and "--categorical x" in note
    num, miss, _ = pre.encode(pa.table({"x": values, "y": rng.normal(size=300)}))
    assert np.flatnonzero(miss[:, 0]).tolist() == [150] and np.isfinite(num).all()

    late = tmp_path / "late.csv"
    rows = [f"{v:.3f},{w:.3f}" for v, w in rng.normal(size=(30000, 2))]
    rows[29989] = "abc," + rows[29989].split(",")[1]
    late.write_text("a,b\n" + "\n".join(rows) + "\n")
    pre = fit_preprocessor(iter_batches(late, batch_rows=4096), skip={}, categorical=[], numeric=[])
    assert [c.name for c in pre.numeric] == ["a", "b"] and pre.numeric[0].text_as_missing == 1
    assert any("'abc' in row 29,990" in n for n in pre.notes)

    words = [f"w{i}" if i % 10 else str(i) for i in range(300)]               # 10% numbers: text
    assert "high-cardinality" in _fit(pa.table({"t": words, "y": rng.normal(size=300)})).ignored["t"]
    with pytest.raises(UserError, match=r"'t' \(--numeric\) holds text in 270 of 300 values \(e.g. 'w1' in row 2\)"):
        _fit(pa.table({"t": words, "y": rng.normal(size=300)}), numeric=["t"])


def test_dates_in_an_unrecognised_format_are_named_as_such():
    n = 400
    days = np.datetime64("2020-01-01") + np.arange(n).astype("timedelta64[D]")
    dmy = [f"{str(d)[8:10]}/{str(d)[5:7]}/{str(d)[:4]}" for d in days]
    iso = [str(d) for d in days]
    iso[7] = "unknown"
    pre = _fit(pa.table({"dmy": dmy, "iso": iso, "y": np.arange(n) % 7}), max_categories=100)
    assert "looks like dates in an unrecognised format (e.g. '01/01/2020'" in pre.ignored["dmy"]
    assert "ISO 8601" in pre.ignored["dmy"] and "--drop dmy" in pre.ignored["dmy"]
    assert "holds dates and text that is not a date (e.g. 'unknown'" in pre.ignored["iso"]
    assert not any("high-cardinality" in why for why in pre.ignored.values())


def test_encoding_names_text_in_a_clean_numeric_or_date_column():
    """At embed time the run's rules apply unchanged: text in a column that was all numbers (or dates) is an error
    that names the value, its row and a fix that works for embed."""
    rng = np.random.default_rng(0)
    when = np.datetime64("2020-01-01") + np.arange(40).astype("timedelta64[D]")
    pre = _fit(pa.table({"x": rng.normal(size=40), "when": when}))
    xs = [str(v) for v in rng.normal(size=20)]
    xs[4] = "abc"
    new = pa.table({"x": xs, "when": [str(d) for d in when[:20]]})
    with pytest.raises(UserError, match=r"^t.csv: column 'x' holds 'abc' in row 105, which is not a number .* "
                                        r"--categorical x") as err:
        pre.encode(new, source="t.csv", row0=100)
    assert "--numeric" not in str(err.value)
    dates = [str(d) for d in when[:20]]
    dates[2] = "31/01/2020"
    with pytest.raises(UserError, match=r"column 'when' holds '31/01/2020' in row 3, which is not a date .*ISO 8601"):
        pre.encode(pa.table({"x": rng.normal(size=20), "when": dates}))
    np.testing.assert_allclose(pre.encode(pa.table({"x": rng.normal(size=20), "when": [str(d) for d in when[:20]]}))[0][:, 1],
                               pre.encode(pa.table({"x": rng.normal(size=20), "when": when[:20]}))[0][:, 1])


def test_a_stray_word_past_the_first_csv_block_is_named(tmp_path, monkeypatch):
    from sslkit.domains.tabular import csv_reader

    monkeypatch.setattr(csv_reader, "BLOCK_BYTES", 1 << 12)
    path = tmp_path / "late.csv"
    path.write_text("a,b\n" + "1,2\n" * 3000 + "abc,3\n")
    with pytest.raises(UserError, match=r"late.csv: column 'a' is int64 in the first .* MiB but further down holds "
                                        r"'abc' .* --categorical a"):
        list(iter_batches(path))
