"""Sample graphs: Zachary's karate club (shipped with networkx) and a generated stochastic block model
(fast numpy sampler, also used by the 200k-node benchmark and the tests)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sslkit.core.errors import UserError
from sslkit.core.files import staged_dir


def sbm(n: int, blocks: int, mean_degree: float, p_in: float = 0.8, feat_dim: int = 16, noise: float = 1.0,
        seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(edges (E, 2) int64, features (N, feat_dim) float32, labels (N,)) of a planted-partition graph.

    Each node draws ~mean_degree/2 edge ends; a fraction p_in land in its own block. Features are
    block means plus Gaussian noise of scale `noise`, so features alone cluster only partly. Each undirected
    edge is listed once (src < dst, sorted), no self-loops: repeated draws would read back as duplicate
    listings, which load_graph merges and reports.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, blocks, size=n)
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], np.arange(blocks + 1))
    m = int(round(n * mean_degree / 2))
    src = rng.integers(0, n, size=m)
    same = rng.random(m) < p_in
    dst = rng.integers(0, n, size=m)
    b = labels[src[same]]
    lo, hi = starts[b], starts[b + 1]
    dst[same] = order[lo + (rng.random(same.sum()) * (hi - lo)).astype(np.int64)]
    u, v = np.minimum(src, dst), np.maximum(src, dst)
    key = np.unique((u * n + v)[u != v])
    edges = np.stack([key // n, key % n], axis=1).astype(np.int64)
    means = rng.normal(0.0, 1.0, size=(blocks, feat_dim))
    x = (means[labels] + noise * rng.normal(size=(n, feat_dim))).astype(np.float32)
    return edges, x, labels


def write_samples(out: Path, overwrite: bool = False) -> list[Path]:
    """out/karate/{edges.csv,labels.csv} and out/sbm/{edges.csv,features.csv,labels.csv}; complete or not at all."""
    import networkx as nx
    import pandas as pd

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file — give a folder to write the sample graphs into (created if missing)")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} already exists and is not empty — pass --overwrite or choose another folder")
    with staged_dir(out) as tmp:      # a folder it cannot create is one line from the CLI (permissions, full disk)
        karate = nx.karate_club_graph()
        (tmp / "karate").mkdir()
        pd.DataFrame(list(karate.edges()), columns=["src", "dst"]).to_csv(tmp / "karate" / "edges.csv", index=False)
        pd.DataFrame({"node": list(karate.nodes()), "label": [karate.nodes[v]["club"] for v in karate.nodes()]}).to_csv(
            tmp / "karate" / "labels.csv", index=False)
        edges, x, y = sbm(300, 3, 8.0, p_in=0.85, feat_dim=8, noise=1.5, seed=0)
        ids = np.array([f"n{i:03d}" for i in range(len(y))])  # string ids, as users often have
        (tmp / "sbm").mkdir()
        pd.DataFrame({"src": ids[edges[:, 0]], "dst": ids[edges[:, 1]]}).to_csv(tmp / "sbm" / "edges.csv", index=False)
        feats = pd.DataFrame(x, columns=[f"f{j}" for j in range(x.shape[1])])
        feats.insert(0, "id", ids)
        feats.to_csv(tmp / "sbm" / "features.csv", index=False)
        pd.DataFrame({"node": ids, "label": y}).to_csv(tmp / "sbm" / "labels.csv", index=False)
    return [out / "karate", out / "sbm"]
