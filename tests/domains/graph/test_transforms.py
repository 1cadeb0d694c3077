"""Graph operators against dense reference formulas, and the SCGC loss against its definition."""
from __future__ import annotations

import math

import networkx as nx
import numpy as np
import scipy.sparse as sp
import pytest
import torch

from sslkit.domains.graph.method import neighbour_contrastive, neighbour_mse, soft_assignment
from sslkit.domains.graph.transforms import (adjacency, auto_hops, filter_hops, mask_order, mask_tensors, neighbourhood_sizes,
                                             positive_mask, positive_mask_block, propagate, sample_block)


@pytest.fixture
def karate():  # noqa: ANN201
    g = nx.karate_club_graph()
    ei = np.array(list(g.edges())).T
    ei = np.hstack([ei, ei[::-1]])
    return ei, np.ones(ei.shape[1], np.float32), g.number_of_nodes()


def _dense_row_norm(ei: np.ndarray, n: int) -> np.ndarray:
    a = np.zeros((n, n))
    a[ei[0], ei[1]] = 1
    a += np.eye(n)
    return a / a.sum(1, keepdims=True)


def test_iac_mask_is_the_cumulative_sum_of_powers(karate) -> None:  # noqa: ANN001
    ei, w, n = karate
    a = _dense_row_norm(ei, n)
    a_row = adjacency(ei, w, n, "row")
    np.testing.assert_allclose(a_row.toarray(), a, atol=1e-6)
    want = a + a @ a + a @ a @ a
    np.testing.assert_allclose(positive_mask(a_row, 3, cumulative=True).toarray(), want, atol=1e-5)
    np.testing.assert_allclose(positive_mask(a_row, 3, cumulative=False).toarray(), a @ a @ a, atol=1e-5)


def test_block_mask_equals_the_dense_sub_block(karate) -> None:  # noqa: ANN001
    ei, w, n = karate
    a_row = adjacency(ei, w, n, "row")
    nodes = np.array([0, 3, 5, 16, 33])
    full = positive_mask(a_row, 3, cumulative=True).toarray()
    block = positive_mask_block(a_row, nodes, 3, cumulative=True).toarray()
    np.testing.assert_allclose(block, full[np.ix_(nodes, nodes)], atol=1e-6)


def test_sampled_block_holds_seeds_and_only_their_neighbours(karate) -> None:  # noqa: ANN001
    ei, w, n = karate
    a_row = adjacency(ei, w, n, "row")
    seeds = np.array([0, 33])
    nodes = sample_block(a_row, seeds, 2, np.random.default_rng(0))
    assert set(seeds) <= set(nodes.tolist()) and len(nodes) <= 6
    neighbours = set(ei[1][np.isin(ei[0], seeds)].tolist()) | set(seeds.tolist())
    assert set(nodes.tolist()) <= neighbours


def test_sym_propagation_and_auto_hops(karate) -> None:  # noqa: ANN001
    ei, w, n = karate
    a = np.zeros((n, n))
    a[ei[0], ei[1]] = 1
    a += np.eye(n)
    d = 1 / np.sqrt(a.sum(1))
    a_sym = d[:, None] * a * d[None, :]
    x = np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32)
    np.testing.assert_allclose(propagate(adjacency(ei, w, n, "sym"), x, 2), a_sym @ a_sym @ x, atol=1e-5)
    assert auto_hops(2708, 10556) == 5  # Cora: log 2708 / log(1 + 3.9)
    assert auto_hops(10, 0) == 3 and auto_hops(10**6, 10**9) == 2
    # SCGC's filter depth is half the mixing distance before rounding: Cora 4.97 / 2 -> 2, a sparse
    # million-node graph (mean degree 2: log 1e6 / log 3 = 12.6) -> 6, clipped to 4; never below 1
    assert filter_hops(2708, 10556) == 2 and filter_hops(10**6, 2 * 10**6) == 4 and filter_hops(10**6, 10**9) == 1


def test_neighbour_contrastive_matches_its_definition() -> None:
    torch.manual_seed(0)
    z = torch.randn(6, 4)
    m = torch.rand(6, 6) * (torch.rand(6, 6) > 0.5)
    m[2] = 0  # a row without positives is skipped
    import scipy.sparse as sp

    t = mask_tensors(sp.csr_matrix(m.numpy()))
    tau = 1.7
    zn = torch.nn.functional.normalize(z, dim=1)
    s = zn @ zn.T
    s.fill_diagonal_(0)
    e = torch.exp(tau * s)
    per_row = -torch.log((m * e).sum(1) / e.sum(1))
    want = per_row[[0, 1, 3, 4, 5]].mean()
    got = neighbour_contrastive(z, t["pos_index"], t["pos_weight"], tau)
    assert math.isclose(float(got), float(want), rel_tol=1e-5)


def test_soft_assignment_matches_core_student_t_and_target_is_sharper() -> None:
    from sslkit.core.losses.dec import student_t_assignment, target_distribution

    torch.manual_seed(0)
    z, c = torch.randn(50, 8), torch.randn(4, 8)
    q = soft_assignment(z, c)
    torch.testing.assert_close(q, student_t_assignment(z, c), atol=1e-5, rtol=1e-4)
    p = target_distribution(q)
    assert float(p.max(1).values.mean()) > float(q.max(1).values.mean())  # P is sharper than Q
    # on unit-length embeddings q is nearly uniform at scale 1; kernel_scale sharpens it, same nearest centroid
    cn = torch.nn.functional.normalize(c, dim=1)
    zn = torch.nn.functional.normalize(cn[torch.arange(50) % 4] + 0.2 * torch.randn(50, 8), dim=1)  # 4 tight groups
    flat, sharp = soft_assignment(zn, cn), soft_assignment(zn, cn, scale=30.0)
    assert float(flat.max(1).values.mean()) < 0.45 and float(sharp.max(1).values.mean()) > 0.6
    assert torch.equal(flat.argmax(1), sharp.argmax(1))
    torch.testing.assert_close(soft_assignment(zn, cn, 4.0), student_t_assignment(2 * zn, 2 * cn), atol=1e-5, rtol=1e-4)


def test_neighbour_mse_matches_its_definition() -> None:
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 3), torch.randn(5, 3)
    import scipy.sparse as sp

    m = np.zeros((5, 5), np.float32)
    m[0, 1] = m[1, 0] = 0.3
    m[2, 2] = 2.0  # weights are binarised: any reach within r hops is a positive
    t = mask_tensors(sp.csr_matrix(m))
    want = 0.0
    for i in range(5):
        for j in range(5):
            cos = float(torch.nn.functional.cosine_similarity(z1[i], z2[j], dim=0))
            want += (cos - float(m[i, j] > 0)) ** 2
    got = neighbour_mse(z1, z2, t["support_crow"], t["support_col"])
    assert math.isclose(float(got), want / 25, rel_tol=1e-5)
    rows, cols = np.nonzero(m)
    listed_twice = sp.coo_matrix((np.tile(m[rows, cols], 2), (np.tile(rows, 2), np.tile(cols, 2))), shape=(5, 5))
    t2 = mask_tensors(listed_twice)
    twice = neighbour_mse(z1, z2, t2["support_crow"], t2["support_col"])  # a pair listed twice counts once
    assert math.isclose(float(twice), want / 25, rel_tol=1e-5)
    # the pipeline builds only what the recipe's objective reads
    only = mask_tensors(listed_twice, "mse")
    assert set(only) == {"support_crow", "support_col"} and torch.equal(only["support_col"], t2["support_col"])
    assert set(mask_tensors(listed_twice, "infonce")) == {"pos_index", "pos_weight"}


def test_gram_product_equals_the_squared_cosine_sum_and_its_gradients_check() -> None:
    from sslkit.domains.graph.method import GramProduct

    torch.manual_seed(0)
    a, b = (torch.randn(9, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert math.isclose(float(GramProduct.apply(a, b).detach()), float(((a @ b.T) ** 2).sum().detach()), rel_tol=1e-12)
    assert torch.autograd.gradcheck(GramProduct.apply, (a, b))


def test_neighbour_mse_runs_in_fp32_under_bf16_autocast() -> None:
    """pretrain autocasts to bf16 on CPU by default; the loss must neither fail nor lose its precision there."""
    torch.manual_seed(0)
    z1, z2 = torch.randn(64, 16), torch.randn(64, 16)
    pairs = np.random.default_rng(0).integers(0, 64, (2, 300))
    t = mask_tensors(sp.coo_matrix((np.ones(300), (pairs[0], pairs[1])), shape=(64, 64)))
    mask = {"support_crow": t["support_crow"], "support_col": t["support_col"]}
    want = neighbour_mse(z1, z2, **mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = neighbour_mse(z1, z2, **mask)
    assert got.dtype == torch.float32 and math.isclose(float(got), float(want), rel_tol=1e-6)


def test_neighbour_mse_is_zero_only_when_cosines_equal_the_mask() -> None:
    eye = torch.eye(4)
    def support(rows: list[int], cols: list[int]) -> dict:
        t = mask_tensors(sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(4, 4)))
        return {"support_crow": t["support_crow"], "support_col": t["support_col"]}

    self_loops = support([0, 1, 2, 3], [0, 1, 2, 3])
    assert float(neighbour_mse(eye, 3 * eye, **self_loops)) == 0.0  # orthogonal nodes, only self-positives
    pairs = support([0, 1, 0, 1], [0, 1, 1, 0])
    # 0 ~ 1 are neighbours but orthogonal (2 errors); 2 and 3 lack self-positives yet have cosine 1 (2 more)
    assert math.isclose(float(neighbour_mse(eye, eye, **pairs)), 4 / 16)
    with pytest.raises(ValueError, match="two"):
        neighbour_mse(eye, eye[:3], **self_loops)


def test_neighbourhood_sizes_count_the_iac_support_and_the_order_fits_a_cluster(karate) -> None:  # noqa: ANN001
    """Mean |{j within k hops of i}| (self included) = mean support of Σ_{j≤k} A^j; r = largest k with size ≤ 2·N / K."""
    ei, w, n = karate
    a_row = adjacency(ei, w, n, "row")
    sizes = neighbourhood_sizes(a_row, 3)
    for k, size in enumerate(sizes, start=1):
        assert size == pytest.approx((positive_mask(a_row, k, cumulative=True).toarray() > 0).sum(1).mean())
    assert sizes[0] == pytest.approx(1 + 2 * 78 / 34)           # self + mean degree
    # a sample of rows (fixed seed) estimates the same means
    assert neighbourhood_sizes(a_row, 2, sample=20)[1] == pytest.approx(sizes[1], rel=0.3)
    assert neighbourhood_sizes(a_row, 2, sample=20) == neighbourhood_sizes(a_row, 2, sample=20)
    # karate: 5.6 nodes within 1 hop, 21.2 within 2, 29.2 within 3; 2 clusters of 17 (2·17 = 34) -> r = 3 of 3,
    # r = 2 of 2; 3 clusters (2·11.3 = 22.7) -> 2; 4 clusters (17) -> 1
    assert [round(s, 1) for s in sizes] == [5.6, 21.2, 29.2]
    assert mask_order(sizes, n, 2) == 3 and mask_order(sizes[:2], n, 2) == 2
    assert mask_order(sizes, n, 3) == 2 and mask_order(sizes, n, 4) == 1
    assert mask_order(sizes, n, 34) == 1                          # never below 1, even when one hop is too wide
