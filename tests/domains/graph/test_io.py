"""Readers: every input format a user has, id mapping, cleaning, and the bad-input cases of the issue."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sslkit.core.errors import UserError
from sslkit.domains.graph.io import align_labels, load_graph


def _pairs(g) -> set[tuple]:  # noqa: ANN001
    ids = g.ids.tolist()
    return {(ids[a], ids[b]) for a, b in g.edge_index.T.tolist()}


@pytest.mark.parametrize("text,name", [
    ("src,dst\n10,20\n20,30\n", "e.csv"),
    ("10\t20\n20\t30\n", "e.tsv"),
    ("10 20\n20  30\n", "e.txt"),
    ("# comment\n10 20 1.0\n20 30 2.5\n", "e.edges"),
])
def test_edge_list_formats_give_the_same_undirected_graph(tmp_path: Path, text: str, name: str) -> None:
    p = tmp_path / name
    p.write_text(text)
    g, _ = load_graph(p)
    assert g.ids.tolist() == [10, 20, 30]  # non-contiguous integer ids kept, in numeric order
    assert _pairs(g) == {(10, 20), (20, 10), (20, 30), (30, 20)}
    assert any("undirected" in n for n in g.notes)


def test_weights_self_loops_duplicates_and_string_ids(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_text("source,target,weight\na,b,1\nb,a,3\na,a,5\nb,c,2\nb,c,2\n")
    g, _ = load_graph(p)
    assert g.ids.tolist() == ["a", "b", "c"]
    w = {(g.ids[i], g.ids[j]): v for (i, j), v in zip(g.edge_index.T.tolist(), g.edge_weight.tolist())}
    assert w == {("a", "b"): 3.0, ("b", "a"): 3.0, ("b", "c"): 2.0, ("c", "b"): 2.0}  # largest weight kept
    assert any("self-loop" in n for n in g.notes) and any("duplicate" in n for n in g.notes)


def test_feature_table_keeps_isolated_nodes_and_maps_ids(tmp_path: Path) -> None:
    (tmp_path / "edges.csv").write_text("src,dst\nx,y\n")
    (tmp_path / "features.csv").write_text("id,f1,f2\ny,1,2\nx,3,4\nlonely,5,6\n")
    g, labels = load_graph(tmp_path)
    assert g.ids.tolist() == ["y", "x", "lonely"]
    np.testing.assert_array_equal(g.x, [[1, 2], [3, 4], [5, 6]])
    assert _pairs(g) == {("x", "y"), ("y", "x")}
    assert labels is None and any("isolated" in n for n in g.notes)


def test_npy_npz_and_parquet_features(tmp_path: Path) -> None:
    import pandas as pd
    import scipy.sparse as sp

    (tmp_path / "e.csv").write_text("0,1\n1,2\n")
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.save(tmp_path / "f.npy", x)
    sp.save_npz(tmp_path / "f.npz", sp.csr_matrix(x))
    pd.DataFrame({"id": [3, 2, 1, 0], "a": x[::-1, 0], "b": x[::-1, 1]}).to_parquet(tmp_path / "f.parquet")
    for f in ("f.npy", "f.npz"):
        g, _ = load_graph(tmp_path / "e.csv", tmp_path / f)
        assert g.num_nodes == 4  # node 3 has no edges but a feature row: kept
        np.testing.assert_array_equal(g.x, x)
    g, _ = load_graph(tmp_path / "e.csv", tmp_path / "f.parquet")
    np.testing.assert_array_equal(g.x[g.ids.tolist().index(2)], x[2, :2])


def test_pyg_data_file_loads_safely(tmp_path: Path) -> None:
    import torch
    from torch_geometric.data import Data

    data = Data(x=torch.ones(3, 2), edge_index=torch.tensor([[0, 1], [1, 2]]))
    torch.save(data, tmp_path / "g.pt")
    g, _ = load_graph(tmp_path / "g.pt")
    assert g.num_nodes == 3 and g.x.shape == (3, 2) and g.edge_index.shape[1] == 4


@pytest.mark.parametrize("files,pattern", [
    ({"e.csv": ""}, "is empty"),
    ({"e.csv": "src,dst\n"}, "no edges"),
    ({"e.csv": "src,dst\n1,2\n7,9\n", "f.csv": "id,a\n1,0.5\n2,0.1\n"}, r"not in the feature table \(7, 9\)"),
    ({"e.csv": "1,2\n", "f.csv": "id,a,b\n1,0.5,nan\n2,0.1,0.2\n"}, r"NaN/Inf \(node ids \[1\]\)"),
    ({"e.csv": "1,2\n", "f.csv": "id,a,b\n1,0.5,1\n2,0.1,0.2,7\n"}, "ragged"),
    ({"e.csv": "1,2,heavy\n"}, "weight"),
])
def test_bad_inputs_are_user_errors(tmp_path: Path, files: dict, pattern: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    feats = tmp_path / "f.csv" if "f.csv" in files else None
    with pytest.raises(UserError, match=pattern):
        load_graph(tmp_path / "e.csv", feats)


def test_missing_paths_and_unsafe_pt(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_graph(tmp_path / "nope.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty"):
        load_graph(tmp_path / "empty")
    import pickle

    import warnings

    (tmp_path / "evil.pt").write_bytes(pickle.dumps(print))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UserError, match="was refused"):
            load_graph(tmp_path / "evil.pt")
    assert not caught, [str(w.message) for w in caught]   # the refusal is the only message: no torch warning


def test_labels_align_and_reject_unknown_nodes(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text("a,b\nb,c\n")
    g, _ = load_graph(tmp_path / "e.csv")
    (tmp_path / "l.csv").write_text("node,label\nc,red\na,blue\n")
    idx, y = align_labels(g, tmp_path / "l.csv")
    assert idx.tolist() == [2, 0] and y.tolist() == [1, 0]
    (tmp_path / "bad.csv").write_text("node,label\na,x\nzz,y\n")
    with pytest.raises(UserError, match=r"not in the graph \(zz\)"):
        align_labels(g, tmp_path / "bad.csv")


def _junk_pt(path: Path, kind: str) -> None:
    import pickle

    import torch

    if kind == "plain pickle":  # torch's refusal text runs to paragraphs; it used to be cut at 120 characters
        path.write_bytes(pickle.dumps({"a": 1}))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("junk\n")
    elif kind == "truncated zip":
        path.write_bytes(b"PK\x03\x04garbage")
    elif kind == "dict":
        torch.save({"x": torch.ones(2, 2)}, path)
    else:
        torch.save({"edge_index": torch.tensor([0, 1, 2])}, path)


@pytest.mark.parametrize("kind,pattern", [
    ("plain pickle", "was refused by torch.load"), ("empty", "not a readable torch.save file"),
    ("text", "not a readable torch.save file"), ("truncated zip", "not a readable torch.save file"),
    ("dict", r"holds a dict with keys \['x'\]"), ("flat edge_index", r"'edge_index': \(3,\)"),
])
def test_junk_pt_is_one_clean_line_naming_the_file_and_what_was_expected(tmp_path: Path, kind: str, pattern: str) -> None:
    path = tmp_path / "g.pt"
    _junk_pt(path, kind)
    with pytest.raises(UserError, match=pattern) as err:
        load_graph(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(path)) and "torch.load` fr" not in msg
    assert msg.endswith("edge list or folder") or "fix the Data object" in msg


def test_labels_with_a_single_node_class_name_that_class(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text("a,b\nb,c\nc,d\n")
    g, _ = load_graph(tmp_path / "e.csv")
    (tmp_path / "l.csv").write_text("node,label\na,red\nb,red\nc,blue\nd,blue\n")
    assert align_labels(g, tmp_path / "l.csv", min_per_class=2)[1].tolist() == [1, 1, 0, 0]
    (tmp_path / "l.csv").write_text("node,label\na,red\nb,red\nc,rare\nd,red\n")
    assert len(align_labels(g, tmp_path / "l.csv")[0]) == 4  # only evaluate asks for two per class
    with pytest.raises(UserError, match="class 'rare' has only 1 labelled node"):
        align_labels(g, tmp_path / "l.csv", min_per_class=2)


def test_generated_sbm_lists_each_undirected_edge_once(samples: Path) -> None:
    from sslkit.domains.graph.samples import sbm

    edges, _, _ = sbm(2000, 4, 10.0, seed=1)
    assert (edges[:, 0] < edges[:, 1]).all() and len(np.unique(edges, axis=0)) == len(edges)
    g, _ = load_graph(samples / "sbm")  # the sample-data graph reads back without merging anything
    assert not any("duplicate" in n for n in g.notes), g.notes
    assert g.edge_index.shape[1] == 2 * (len((samples / "sbm" / "edges.csv").read_text().splitlines()) - 1)
