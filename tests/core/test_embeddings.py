from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sslkit.core import embeddings
from sslkit.core.embeddings import read_embeddings, write_embeddings
from sslkit.core.errors import UserError


def _vectors(n: int = 6, d: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def test_round_trip_string_ids_exact(tmp_path):
    ids = [f"slide_{i:03d}" for i in range(6)]
    vec = _vectors()
    path = write_embeddings(tmp_path / "emb.parquet", ids, vec)
    got_ids, got = read_embeddings(path)
    assert got_ids == ids
    assert got.dtype == np.float32 and got.shape == (6, 4)
    assert np.array_equal(got, vec)


def test_round_trip_int_ids_stay_ints(tmp_path):
    ids = np.arange(10, 16)
    vec = _vectors()
    path = write_embeddings(tmp_path / "emb.parquet", ids, vec, id_name="node")
    got_ids, got = read_embeddings(path)
    assert got_ids == [10, 11, 12, 13, 14, 15]
    assert all(type(i) is int for i in got_ids)
    assert np.array_equal(got, vec)
    assert pq.read_schema(path).field("node").type == pa.int64()


def test_float64_input_is_stored_as_float32(tmp_path):
    vec = np.random.default_rng(1).normal(size=(3, 5))  # float64
    path = write_embeddings(tmp_path / "e.parquet", ["a", "b", "c"], vec)
    _, got = read_embeddings(path)
    assert np.array_equal(got, vec.astype(np.float32))


def test_schema_metadata_and_extra_columns(tmp_path):
    vec = _vectors(n=3, d=7)
    path = write_embeddings(tmp_path / "e.parquet", [1, 2, 3], vec, extra={"label": ["x", "y", "x"]},
                            metadata={"run": "runs/tab-1", "step": 100})
    schema = pq.read_schema(path)
    assert schema.field("embedding").type == pa.list_(pa.float32(), 7)
    meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    assert meta["sslkit.dim"] == "7"
    assert json.loads(meta["sslkit.metadata"]) == {"run": "runs/tab-1", "step": 100}
    assert pq.read_table(path).column("label").to_pylist() == ["x", "y", "x"]


def test_custom_id_column_is_found_without_naming_it(tmp_path):
    path = write_embeddings(tmp_path / "e.parquet", ["p", "q"], _vectors(n=2), id_name="patient")
    assert read_embeddings(path)[0] == ["p", "q"]
    assert read_embeddings(path, id_name="patient")[0] == ["p", "q"]
    with pytest.raises(UserError, match="no id column 'id'"):
        read_embeddings(path, id_name="id")


def test_creates_parent_folders(tmp_path):
    path = write_embeddings(tmp_path / "a" / "b" / "e.parquet", [0], _vectors(n=1))
    assert path.is_file()


def test_refuses_to_overwrite_and_keeps_old_file(tmp_path):
    path = tmp_path / "e.parquet"
    old = _vectors(seed=0)
    write_embeddings(path, list(range(6)), old)
    with pytest.raises(UserError, match="--overwrite"):
        write_embeddings(path, list(range(6)), _vectors(seed=1))
    assert np.array_equal(read_embeddings(path)[1], old)

    new = _vectors(seed=1)
    write_embeddings(path, list(range(6)), new, overwrite=True)
    assert np.array_equal(read_embeddings(path)[1], new)


def test_atomic_write_leaves_no_temp_files(tmp_path):
    write_embeddings(tmp_path / "e.parquet", list(range(6)), _vectors())
    write_embeddings(tmp_path / "e.parquet", list(range(6)), _vectors(seed=2), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.parquet"]


def test_failed_write_keeps_old_file_and_cleans_temp(tmp_path, monkeypatch):
    path = tmp_path / "e.parquet"
    old = _vectors()
    write_embeddings(path, list(range(6)), old)

    def boom(table, where, **kwargs):  # noqa: ANN001, ANN003
        where.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        write_embeddings(path, list(range(6)), _vectors(seed=3), overwrite=True)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.parquet"]
    assert np.array_equal(read_embeddings(path)[1], old)


@pytest.mark.parametrize("ids, vec, match", [
    (["a", "b"], np.zeros(2, dtype=np.float32), "2-D"),
    (["a", "b", "c"], np.zeros((2, 3), dtype=np.float32), "3 values but there are 2"),
    (["a", "b"], np.array([[0.0, 1.0], [np.nan, 2.0]]), "first at row 1"),
    (["a", "b"], np.array([[0.0, 1e39], [1.0, 2.0]]), "NaN or inf"),  # overflows float32
    (["a", 1], np.zeros((2, 3), dtype=np.float32), "one type"),
])
def test_invalid_inputs_raise_and_write_nothing(tmp_path, ids, vec, match):
    path = tmp_path / "e.parquet"
    with pytest.raises(UserError, match=match):
        write_embeddings(path, ids, vec)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_extra_column_validation(tmp_path):
    with pytest.raises(UserError, match="'label' has 1 values"):
        write_embeddings(tmp_path / "e.parquet", ["a", "b"], _vectors(n=2), extra={"label": [1]})
    with pytest.raises(UserError, match="clash"):
        write_embeddings(tmp_path / "e.parquet", ["a", "b"], _vectors(n=2), extra={"embedding": [1, 2]})
    with pytest.raises(UserError, match="JSON"):
        write_embeddings(tmp_path / "e.parquet", ["a", "b"], _vectors(n=2), metadata={"x": object()})
    assert list(tmp_path.iterdir()) == []


def test_read_missing_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_embeddings(tmp_path / "nope.parquet")


def test_read_non_parquet_file(tmp_path):
    path = tmp_path / "e.parquet"
    path.write_text("id,embedding\n1,2\n")
    with pytest.raises(UserError, match="not a readable Parquet"):
        read_embeddings(path)


def test_read_foreign_parquet_is_refused(tmp_path):
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"id": [1, 2], "embedding": [0.1, 0.2]}), path)
    with pytest.raises(UserError, match="not an sslkit embeddings file"):
        read_embeddings(path)


def test_read_many_row_groups_concatenates(tmp_path):
    # A file written in several row groups comes back as several chunks; rows must stay in order.
    vec = _vectors(n=7, d=3)
    src = write_embeddings(tmp_path / "one.parquet", list(range(7)), vec)
    multi = tmp_path / "multi.parquet"
    pq.write_table(pq.read_table(src), multi, row_group_size=2)
    assert pq.read_table(multi).column("embedding").num_chunks == 4
    ids, got = read_embeddings(multi)
    assert ids == list(range(7))
    assert np.array_equal(got, vec)


def test_single_row_group_read_is_zero_copy(tmp_path):
    path = write_embeddings(tmp_path / "e.parquet", list(range(6)), _vectors())
    _, got = read_embeddings(path)
    assert not got.flags.owndata and not got.flags.writeable  # a view of Arrow memory


def test_module_does_not_import_pyarrow_at_top():
    assert "pyarrow" not in vars(embeddings)


@pytest.mark.parametrize("dim", [1, 2, 8])
def test_embedding_map_draws_any_width(tmp_path, dim):
    from PIL import Image

    from sslkit.core.plots import embedding_map

    vecs = np.random.default_rng(0).standard_normal((50, dim)).astype(np.float32)
    path = embedding_map(vecs, np.arange(50) % 3, tmp_path / "map.png")
    with Image.open(path) as im:
        assert im.size[0] > 100 and im.size[1] > 100


def test_embed_out_must_be_a_parquet_name_a_file_and_new(tmp_path):
    from sslkit.core.embeddings import check_embeddings_out

    with pytest.raises(UserError, match=r"written as Parquet — give a name ending in \.parquet \(e\.g\. .*e\.parquet\)"):
        check_embeddings_out(tmp_path / "e.csv", overwrite=False)
    with pytest.raises(UserError, match="is a folder"):
        check_embeddings_out(tmp_path, overwrite=True)
    write_embeddings(tmp_path / "e.pq", ["a"], np.ones((1, 2)))
    with pytest.raises(UserError, match="--overwrite"):
        check_embeddings_out(tmp_path / "e.pq", overwrite=False)
    assert check_embeddings_out(tmp_path / "e.pq", overwrite=True) == tmp_path / "e.pq"
