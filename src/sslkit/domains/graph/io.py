"""Graph readers: edge lists (CSV/TSV/whitespace), feature tables (CSV/Parquet/.npy/.npz),
label tables, PyG `Data` files and dataset folders (`edges.csv`, `features.*`, `labels.csv`).

Every reader returns plain numpy/scipy objects keyed by the user's own node ids;
`load_graph` maps them to 0..N-1 and keeps the mapping so outputs use the original ids.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sslkit.core.errors import UserError

EDGE_SUFFIXES = (".csv", ".tsv", ".txt", ".edges", ".el", ".edgelist")
FEATURE_SUFFIXES = (".csv", ".tsv", ".parquet", ".npy", ".npz")
HEADER_NAMES = {"src", "dst", "source", "target", "from", "to", "u", "v", "node1", "node2", "node_1", "node_2",
                "id1", "id2", "a", "b", "head", "tail", "weight", "w"}


@dataclass
class Graph:
    """N nodes with ids `ids` (N,), undirected edges `edge_index` (2, E) stored in both directions
    without self-loops or duplicates, `edge_weight` (E,), features `x` (N, D) dense float32 or None."""

    ids: np.ndarray
    edge_index: np.ndarray
    edge_weight: np.ndarray
    x: np.ndarray | None
    notes: list[str] = field(default_factory=list)

    @property
    def num_nodes(self) -> int:
        return len(self.ids)

    def index_of(self) -> dict[Any, int]:
        return {v: i for i, v in enumerate(self.ids.tolist())}


def _sep_of(path: Path, first_line: str) -> str:
    if path.suffix == ".tsv" or "\t" in first_line:
        return "\t"
    if path.suffix == ".csv" or "," in first_line:
        return ","
    return r"\s+"


def _is_number(s: str) -> bool:
    try:
        float(s)
    except (TypeError, ValueError):
        return False
    return True


def _first_line(path: Path) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.strip() and not line.startswith("#"):
                return line.rstrip("\n")
    return ""


def _normalise_ids(values: np.ndarray) -> np.ndarray:
    """Integer ids when every id is an integer, strings otherwise."""
    s = np.asarray(values).astype(str)
    s = np.char.strip(s)
    try:
        ints = s.astype(np.int64)
    except ValueError:
        return s.astype(object)
    return ints


def read_edges(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(src ids, dst ids, weights) from an edge list; header and a weight column are optional."""
    import pandas as pd

    if not path.is_file():
        raise UserError(f"edge list {path} does not exist — pass an edge-list file or a folder holding edges.csv")
    first = _first_line(path)
    if not first:
        raise UserError(f"edge list {path} is empty — it needs one `src,dst[,weight]` line per edge")
    sep = _sep_of(path, first)
    try:
        df = pd.read_csv(path, sep=sep, header=None, dtype=str, comment="#", skip_blank_lines=True,
                         engine="c" if sep != r"\s+" else "python")
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(f"edge list {path} could not be parsed ({str(exc).splitlines()[0]}) — "
                        "write one `src,dst[,weight]` line per edge") from None
    header = _has_header(df)
    if header:
        df = df.iloc[1:].reset_index(drop=True)
    if len(df) == 0:
        raise UserError(f"edge list {path} has a header but no edges — add `src,dst` lines")
    if df.shape[1] < 2:
        raise UserError(f"edge list {path} has {df.shape[1]} column; expected `src,dst[,weight]` "
                        "(comma, tab or space separated)")
    if not header and not all(_is_number(v) for v in df.iloc[0, 2:3]) and df.shape[1] >= 3:
        raise UserError(f"edge list {path}: third column '{df.iloc[0, 2]}' is not a numeric weight — "
                        "keep only `src,dst[,weight]` columns")
    if df.iloc[:, :2].isna().any().any():
        row = int(np.argwhere(df.iloc[:, :2].isna().to_numpy())[0, 0])
        raise UserError(f"edge list {path}: line {row + 1 + header} has a missing node id — fix or drop that line")
    src, dst = _normalise_ids(df.iloc[:, 0].to_numpy()), _normalise_ids(df.iloc[:, 1].to_numpy())
    if src.dtype != dst.dtype:
        src, dst = src.astype(str).astype(object), dst.astype(str).astype(object)
    weight = np.ones(len(df), dtype=np.float32)
    if df.shape[1] >= 3:
        w = pd.to_numeric(df.iloc[:, 2], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(w) | (w <= 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise UserError(f"edge list {path}: weight on line {i + 1 + header} is '{df.iloc[i, 2]}' — "
                            "weights must be positive numbers")
        weight = w.astype(np.float32)
    return src, dst, weight


def _has_header(df: Any) -> bool:
    """A first row of names: non-numeric where the other rows are numeric, or column names (src, dst, ...)
    that never occur as node ids further down."""
    if df.shape[1] < 2 or len(df) == 0:
        return False
    first = [str(v).strip() for v in df.iloc[0, :2]]
    if len(df) > 1 and not any(map(_is_number, first)) and all(map(_is_number, (str(v) for v in df.iloc[1, :2]))):
        return True
    named = all(t.lower() in HEADER_NAMES for t in first)
    rest = set(df.iloc[1:, 0].astype(str).str.strip()) | set(df.iloc[1:, 1].astype(str).str.strip())
    return named and not (set(first) & rest)


def _id_column(df: Any, path: Path) -> str:
    for name in ("id", "node", "node_id", "nodes", "name"):
        if name in df.columns:
            return name
    return df.columns[0]


def read_table_features(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids (N,), features (N, D)) from a CSV/TSV/Parquet table: an id column + numeric columns."""
    import pandas as pd

    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
    except pd.errors.ParserError as exc:
        raise UserError(f"feature table {path} has ragged rows ({str(exc).splitlines()[0]}) — "
                        "every row needs the id and the same number of feature columns") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"feature table {path} could not be read ({exc}) — write CSV or Parquet: id + columns") from None
    if len(df) == 0 or df.shape[1] < 2:
        raise UserError(f"feature table {path} is empty or has no feature columns — write `id,f1,f2,...`")
    idc = _id_column(df, path)
    feats = df.drop(columns=[idc])
    nonnum = [c for c in feats.columns if not pd.api.types.is_numeric_dtype(feats[c])]
    if nonnum:
        raise UserError(f"feature table {path}: column(s) {nonnum[:3]} are not numeric — drop or encode them")
    ids = _normalise_ids(df[idc].to_numpy())
    x = feats.to_numpy(dtype=np.float32)
    _check_finite(x, ids, path)
    return ids, x


def _check_finite(x: np.ndarray, ids: np.ndarray, path: Path) -> None:
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        rows = ids[bad][:5].tolist()
        raise UserError(f"feature file {path}: {int(bad.sum())} row(s) hold NaN/Inf (node ids {rows}) — "
                        "impute or drop those values")


def read_array_features(path: Path) -> np.ndarray:
    """(N, D) float32 from `.npy` (dense) or `.npz` (scipy sparse, or a single numpy array); row i = node i."""
    if path.suffix == ".npy":
        try:
            x = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise UserError(f"{path} is not a readable .npy array ({exc}) — save with numpy.save") from None
    else:
        import scipy.sparse as sp

        try:
            x = sp.load_npz(path).toarray()
        except (ValueError, OSError, KeyError):
            try:
                with np.load(path, allow_pickle=False) as z:
                    if len(z.files) != 1:
                        raise UserError(f"{path} holds arrays {z.files}; expected a scipy sparse matrix "
                                        "(scipy.sparse.save_npz) or one dense array") from None
                    x = z[z.files[0]]
            except (ValueError, OSError) as exc:
                raise UserError(f"{path} is not a readable .npz file ({exc}) — use scipy.sparse.save_npz") from None
    if x.dtype == object or x.ndim != 2:
        raise UserError(f"{path} has shape {x.shape}; features must be a 2-D array (nodes × features) with equal-length rows")
    x = x.astype(np.float32)
    _check_finite(x, np.arange(len(x)), path)
    return x


def read_labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, labels) from a two-column CSV/TSV/Parquet table (`node,label`)."""
    import pandas as pd

    if not path.is_file():
        raise UserError(f"labels file {path} does not exist — pass a `node,label` CSV")
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
    except (pd.errors.ParserError, OSError, ValueError) as exc:
        raise UserError(f"labels file {path} could not be read ({str(exc).splitlines()[0]}) — write `node,label` lines") from None
    if len(df) == 0 or df.shape[1] < 2:
        raise UserError(f"labels file {path} needs two columns `node,label` and at least one row")
    idc = _id_column(df, path)
    lab = [c for c in df.columns if c != idc][0]
    if df[lab].isna().any():
        raise UserError(f"labels file {path}: {int(df[lab].isna().sum())} row(s) have no label — drop them")
    return _normalise_ids(df[idc].to_numpy()), df[lab].astype(str).to_numpy()


def read_pyg(path: Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(edge_index (2, E), x or None, y or None) from a PyG `Data` saved with torch.save, loaded with weights_only."""
    import torch
    from torch_geometric.data import Data
    from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
    from torch_geometric.data.storage import GlobalStorage

    from sslkit.core.checkpoint import load_weights_only

    expected = "expected a PyG Data(x=..., edge_index=...) saved with torch.save, or give an edge list or folder"
    try:
        with torch.serialization.safe_globals([Data, DataEdgeAttr, DataTensorAttr, GlobalStorage]):
            obj = load_weights_only(path)
    except pickle.UnpicklingError:  # torch's own text runs to paragraphs: say it in our words
        raise UserError(f"{path} was refused by torch.load(weights_only=True): not a torch.save file, or it holds "
                        f"objects other than tensors and a PyG Data — {expected}") from None
    except Exception:  # noqa: BLE001 — truncated zips, stray bytes, empty files fail in many types; all mean the same
        raise UserError(f"{path} is not a readable torch.save file (empty, truncated or another format) — "
                        f"{expected}") from None
    if isinstance(obj, dict) and "edge_index" in obj and all(isinstance(k, str) for k in obj):
        obj = Data(**obj)
    if not isinstance(obj, Data) or obj.edge_index is None:
        what = f"a dict with keys {sorted(map(str, obj))[:5]}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise UserError(f"{path} holds {what}, not a graph with edge_index — {expected}")
    ei, x = obj.edge_index, obj.x
    ei_ok = torch.is_tensor(ei) and ei.dim() == 2 and ei.shape[0] == 2
    if not ei_ok or not (x is None or torch.is_tensor(x) and x.dim() == 2):
        shape = {k: tuple(v.shape) if torch.is_tensor(v) else type(v).__name__ for k, v in (("edge_index", ei), ("x", x))}
        raise UserError(f"{path}: Data has shapes {shape}; expected tensors edge_index (2, E) and x (N, D) — "
                        "fix the Data object")
    ei = ei.numpy().astype(np.int64)
    x = x.numpy().astype(np.float32) if x is not None else None
    y = obj.y.numpy() if getattr(obj, "y", None) is not None else None
    if x is not None:
        _check_finite(x, np.arange(len(x)), path)
    return ei, x, y


def find_in_folder(folder: Path) -> tuple[Path, Path | None, Path | None]:
    """(edges, features or None, labels or None) of a dataset folder like ../shared/data/graph/cora."""
    if not any(folder.iterdir()):
        raise UserError(f"graph folder {folder} is empty — it needs edges.csv (and optionally features.*, labels.csv)")
    edges = next((folder / f"edges{s}" for s in EDGE_SUFFIXES if (folder / f"edges{s}").is_file()), None)
    if edges is None:
        raise UserError(f"graph folder {folder} has no edges.csv/edges.tsv/edges.txt — add the edge list")
    feats = next((folder / f"features{s}" for s in FEATURE_SUFFIXES if (folder / f"features{s}").is_file()), None)
    labels = next((folder / f"labels{s}" for s in (".csv", ".tsv", ".parquet") if (folder / f"labels{s}").is_file()), None)
    return edges, feats, labels


def _few(values: np.ndarray, n: int = 5) -> str:
    return ", ".join(map(str, values[:n].tolist())) + (" …" if len(values) > n else "")


def _map_ids(ids: np.ndarray, index: dict[Any, int], what: str, path: Path) -> np.ndarray:
    out = np.fromiter((index.get(v, -1) for v in ids.tolist()), dtype=np.int64, count=len(ids))
    if (out < 0).any():
        missing = np.unique(ids[out < 0])
        raise UserError(f"{path}: {len(missing)} {what} id(s) are not in the feature table ({_few(missing)}) — "
                        "add feature rows for them or remove those edges")
    return out


def _clean_edges(src: np.ndarray, dst: np.ndarray, w: np.ndarray, n: int, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Symmetrise, drop self-loops, merge duplicates (largest weight) -> (edge_index (2, E), weight (E,))."""
    import scipy.sparse as sp

    loops = src == dst
    if loops.any():
        notes.append(f"dropped {int(loops.sum())} self-loop(s)")
    src, dst, w = src[~loops], dst[~loops], w[~loops]
    directed = np.unique(src * n + dst)
    dup = len(src) - len(directed)
    if dup:
        notes.append(f"merged {dup} duplicate edge listing(s) (kept the largest weight)")
    reverse = np.isin(directed % n * n + directed // n, directed)
    if (~reverse).any():
        notes.append(f"treated the graph as undirected: mirrored {int((~reverse).sum())} edge(s) listed in one direction")
    lo, hi = np.minimum(src, dst), np.maximum(src, dst)
    key = lo * n + hi
    order = np.lexsort((-w, key))
    key, w = key[order], w[order]
    first = np.r_[True, key[1:] != key[:-1]] if len(key) else np.zeros(0, bool)
    key, w = key[first], w[first]
    m = sp.coo_matrix((w, (key // n, key % n)), shape=(n, n)).tocsr()
    coo = (m + m.T).tocoo()
    return np.vstack([coo.row, coo.col]).astype(np.int64), coo.data.astype(np.float32)


def load_graph(path: Path, features: Path | None = None) -> tuple[Graph, Path | None]:
    """Read GRAPH (folder, edge list or PyG .pt) and optional features -> (Graph, labels path found in the folder)."""
    if not path.exists():
        raise UserError(f"graph path {path} does not exist — pass an edge list, a PyG .pt file or a dataset folder")
    notes: list[str] = []
    labels_path = None
    if path.is_dir():
        path, found_feats, labels_path = find_in_folder(path)
        features = features or found_feats
    if features is not None and not features.exists():
        raise UserError(f"feature file {features} does not exist — check --features")
    if path.suffix in (".pt", ".pth"):
        ei, x, _ = read_pyg(path)
        n = int(max(ei.max(initial=-1) + 1, len(x) if x is not None else 0))
        if x is not None and ei.size and ei.max() >= len(x):
            raise UserError(f"{path}: edge_index refers to node {int(ei.max())} but x has {len(x)} rows — fix the Data object")
        if features is not None:
            x = _features_by_position(features, n, path)
        ids = np.arange(n)
        edge_index, weight = _clean_edges(ei[0], ei[1], np.ones(ei.shape[1], np.float32), n, notes)
        return Graph(ids, edge_index, weight, x, notes), labels_path
    src, dst, w = read_edges(path)
    x = None
    if features is None:
        ids = _union_ids(src, dst)
    elif features.suffix in (".npy", ".npz"):
        x = read_array_features(features)
        if src.dtype == object:
            raise UserError(f"{features} is a plain array (row i = node i) but {path} uses string node ids — "
                            "give features as CSV/Parquet with an id column")
        ids = np.arange(len(x))
    else:
        ids, x = read_table_features(features)
        if len(np.unique(ids.astype(str))) != len(ids):
            raise UserError(f"feature table {features} repeats node ids — keep one row per node")
    index = {v: i for i, v in enumerate(ids.tolist())}
    if features is not None and src.dtype != ids.dtype:
        src, dst = src.astype(str).astype(object), dst.astype(str).astype(object)
        ids_s = ids.astype(str).astype(object)
        index = {v: i for i, v in enumerate(ids_s.tolist())}
    both = _map_ids(np.concatenate([src, dst]), index, "edge", path)
    s, d = both[: len(src)], both[len(src):]
    edge_index, weight = _clean_edges(s, d, w, len(ids), notes)
    isolated = len(ids) - len(np.unique(edge_index[0]))
    if isolated:
        notes.append(f"kept {isolated} isolated node(s)")
    return Graph(ids, edge_index, weight, x, notes), labels_path


def _union_ids(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    both = np.concatenate([src, dst])
    if both.dtype != object:
        return np.unique(both)
    import pandas as pd

    return pd.unique(both).astype(object)


def _features_by_position(features: Path, n: int, graph: Path) -> np.ndarray:
    if features.suffix not in (".npy", ".npz"):
        raise UserError(f"{graph} is a PyG file with integer nodes; give --features as .npy/.npz (row i = node i)")
    x = read_array_features(features)
    if len(x) < n:
        raise UserError(f"{features} has {len(x)} rows but {graph} has {n} nodes — one feature row per node")
    return x


def align_labels(graph: Graph, path: Path, min_per_class: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(node indices (M,), integer labels (M,)) for the labelled nodes; unknown ids are an error, and so is a class
    with fewer than `min_per_class` nodes, named by the file's own label (the codes mean nothing to the user)."""
    ids, labels = read_labels(path)
    keys = graph.ids
    if ids.dtype != keys.dtype:
        ids, keys = ids.astype(str).astype(object), keys.astype(str).astype(object)
    index = {v: i for i, v in enumerate(keys.tolist())}
    idx = np.fromiter((index.get(v, -1) for v in ids.tolist()), dtype=np.int64, count=len(ids))
    if (idx < 0).any():
        missing = ids[idx < 0]
        raise UserError(f"labels file {path}: {len(missing)} node id(s) are not in the graph ({_few(missing)}) — "
                        "remove them or pass the matching graph")
    names, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if (counts < min_per_class).any():
        i = int(np.argmin(counts))
        raise UserError(f"labels file {path}: class '{names[i]}' has only {counts[i]} labelled node(s); evaluation "
                        f"needs at least {min_per_class} per class (stratified probe split) — drop or merge rare classes")
    return idx, codes.astype(np.int64)
