"""Graph operators, all sparse (never a dense N×N matrix beyond a mini-batch block):
normalised adjacency, low-pass feature propagation Â^t X, structural features, the
SCGC positive masks (A^r and the influence-augmented Σ_{k≤r} A^k), node mini-batches.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def adjacency(edge_index: np.ndarray, edge_weight: np.ndarray, n: int, norm: str = "row", self_loops: bool = True) -> Any:
    """Sparse CSR (N, N): `row` = D⁻¹(A+I) (SCGC), `sym` = D^-½(A+I)D^-½ (GCN), `none` = A+I."""
    import scipy.sparse as sp

    a = sp.csr_matrix((edge_weight.astype(np.float32), (edge_index[0], edge_index[1])), shape=(n, n))
    if self_loops:
        a = a + sp.identity(n, dtype=np.float32, format="csr")
    deg = np.asarray(a.sum(axis=1)).ravel().astype(np.float32)
    deg[deg == 0] = 1.0
    if norm == "row":
        a = sp.diags(1.0 / deg) @ a
    elif norm == "sym":
        d = sp.diags(1.0 / np.sqrt(deg))
        a = d @ a @ d
    return a.astype(np.float32).tocsr()


def auto_hops(n: int, num_edges: int, lo: int = 1, hi: int = 8) -> int:
    """Propagation depth from structure alone: ≈ hops for a random walk to reach N nodes."""
    return int(min(hi, max(lo, round(mixing_distance(n, num_edges)))))


def mixing_distance(n: int, num_edges: int) -> float:
    """log N / log(1 + mean degree): roughly how many hops a random walk needs to reach every node."""
    mean_deg = max(num_edges / max(n, 1), 1.0)
    return math.log(max(n, 2)) / math.log1p(mean_deg)


def filter_hops(n: int, num_edges: int, lo: int = 1, hi: int = 4) -> int:
    """SCGC's default low-pass depth t: half the random-walk mixing distance log N / log(1 + mean degree)
    (`mixing_distance`, which `auto_hops` rounds), so that two nodes whose t-hop neighbourhoods meet get similar filtered
    features while deeper filtering does not yet blur neighbouring communities together (over-smoothing).
    Cora: 7.90 / (2 · 1.59) = 2.5 -> 2."""
    return int(min(hi, max(lo, round(mixing_distance(n, num_edges) / 2))))


def propagate(a_sym: Any, x: np.ndarray, hops: int) -> np.ndarray:
    """Â^hops X (N, D) by repeated sparse products (a low-pass filter of the features)."""
    out = x.astype(np.float32)
    for _ in range(hops):
        out = np.asarray(a_sym @ out, dtype=np.float32)
    return out


def row_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to sum 1 (bag-of-words style features); all-zero rows stay zero."""
    s = np.abs(x).sum(axis=1, keepdims=True)
    s[s == 0] = 1.0
    return (x / s).astype(np.float32)


def standardise(x: np.ndarray) -> np.ndarray:
    mu, sd = x.mean(0, keepdims=True), x.std(0, keepdims=True)
    sd[sd == 0] = 1.0
    return ((x - mu) / sd).astype(np.float32)


def structural_features(a_sym: Any, degree: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """(N, dim) features from structure only: log-degree plus random-walk diffusions Â^k R of a fixed random
    projection R (cheap positional features that scale to millions of edges)."""
    rng = np.random.default_rng(seed)
    n = a_sym.shape[0]
    width = max(1, (dim - 1) // 4)
    r = rng.standard_normal((n, width)).astype(np.float32) / math.sqrt(width)
    parts, cur = [np.log1p(degree.astype(np.float32))[:, None]], r
    for _ in range(4):
        cur = np.asarray(a_sym @ cur, dtype=np.float32)
        parts.append(cur * math.sqrt(n))
    return standardise(np.concatenate(parts, axis=1)[:, :dim])


def positive_mask(a_row: Any, r: int, cumulative: bool) -> Any:
    """Sparse CSR (N, N) mask: Σ_{k=1..r} A^k (SCGC*'s IAC mask) or A^r (SCGC), A = D⁻¹(A+I)."""
    power, total = a_row, a_row.copy()
    for _ in range(r - 1):
        power = (power @ a_row).tocsr()
        total = total + power
    return (total if cumulative else power).astype(np.float32).tocsr()


def positive_mask_block(a_row: Any, nodes: np.ndarray, r: int, cumulative: bool) -> Any:
    """Rows/columns `nodes` (B,) of the mask as a sparse (B, B) block, never forming A^k:
    (A^k)[B, B] = (A[B, :] A^{a-1}) (A^{b-1} A[:, B]) with a = ⌈k/2⌉, b = ⌊k/2⌋, so only
    ⌈r/2⌉-hop rows and ⌊r/2⌋-hop columns of the B nodes are ever propagated."""
    rows = [a_row[nodes]]                       # rows[j] = (A^{j+1})[B, :]
    cols = [a_row[:, nodes].tocsc()]            # cols[j] = (A^{j+1})[:, B]
    for _ in range((r + 1) // 2 - 1):
        rows.append((rows[-1] @ a_row).tocsr())
    for _ in range(r // 2 - 1):
        cols.append((a_row @ cols[-1]).tocsc())
    total = None
    for k in range(1, r + 1):
        if not cumulative and k != r:
            continue
        ka, kb = (k + 1) // 2, k // 2
        block = rows[ka - 1][:, nodes] if kb == 0 else rows[ka - 1] @ cols[kb - 1]
        total = block if total is None else total + block
    return total.astype(np.float32).tocsr()


def mask_tensors(mask: Any, objective: str | None = None) -> dict[str, Any]:
    """A scipy sparse mask as the tensors the loss `objective` reads, built once per batch rather than in the
    training step: "infonce" gets {"pos_index": LongTensor (2, P), "pos_weight": FloatTensor (P,)} (the weighted
    mask); "mse" gets {"support_crow", "support_col"}, the CSR rows/columns of its support with each pair once
    (the 0/1 target); None gets both."""
    import torch

    out: dict[str, Any] = {}
    if objective in (None, "infonce"):
        coo = mask.tocoo()
        out["pos_index"] = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
        out["pos_weight"] = torch.from_numpy(coo.data.astype(np.float32))
    if objective in (None, "mse"):
        support = (mask.tocsr() > 0).tocsr()  # duplicates summed, then binarised
        support.sort_indices()
        out["support_crow"] = torch.from_numpy(support.indptr.astype(np.int64))
        out["support_col"] = torch.from_numpy(support.indices.astype(np.int64))
    return out


def sample_block(a_row: Any, seeds: np.ndarray, fanout: int, rng: np.random.Generator) -> np.ndarray:
    """Seed nodes plus `fanout` random draws (with replacement) from each seed's neighbours, deduplicated,
    so every seed has positives in its block. Vectorised: no Python loop over seeds."""
    indptr, indices = a_row.indptr, a_row.indices
    start, deg = indptr[seeds], indptr[seeds + 1] - indptr[seeds]
    pos = start[:, None] + (rng.random((len(seeds), fanout)) * deg[:, None]).astype(np.int64)
    picked = indices[pos[deg > 0]].ravel()
    return np.unique(np.concatenate([seeds, picked]))


def neighbourhood_sizes(a_row: Any, r_max: int, sample: int = 2000, seed: int = 0) -> list[float]:
    """Mean number of nodes within k hops, self included (the support of the IAC mask Σ_{j≤k} A^j), for k = 1..r_max,
    from all rows or, above `sample` nodes, from `sample` rows drawn with a fixed seed (the same r for every run)."""
    import scipy.sparse as sp

    n = a_row.shape[0]
    rows = np.arange(n) if n <= sample else np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
    a = sp.csr_matrix(a_row, dtype=np.float32, copy=True)
    a.data[:] = 1.0
    reach = a[rows]
    sizes = [float(reach.getnnz(axis=1).mean())]
    for _ in range(r_max - 1):
        reach = (reach @ a).tocsr()
        reach.data[:] = 1.0
        sizes.append(float(reach.getnnz(axis=1).mean()))
    return sizes


def mask_order(sizes: list[float], n: int, clusters: int) -> int:
    """SCGC*'s mask order r from the graph: the largest r ≤ len(sizes) whose mean r-hop neighbourhood (`sizes[r-1]`)
    holds at most twice the nodes of a cluster on average (2·N / K), and at least 1. The MSE target asks every r-hop
    pair to be alike (cosine 1); a neighbourhood more than twice a cluster's size has most of its nodes in other
    clusters whatever the graph, so its target is mostly wrong."""
    return max(1, sum(s <= 2 * n / clusters for s in sizes))
