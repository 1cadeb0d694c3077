"""Every registered encoder and both objectives: shapes, finite gradients, the clustering head's start."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sslkit.domains.graph.method import GRACE, SCGC, GraphLoss, GraphModel, drop_edges, mask_features
from sslkit.domains.graph.model import ENCODERS

KWARGS = {"scgc_mlp": {"in_dim": 6, "hidden": [8], "out_dim": 4, "hops": 2}, "gcn": {"in_dim": 6, "hidden": 8, "out_dim": 4},
          "scgc_mlp-2": {"in_dim": 6, "hidden": [], "out_dim": 4, "hops": 2, "branches": 2}}


@pytest.mark.parametrize("kind", sorted(KWARGS))
def test_encoder_forward_backward_finite(kind: str) -> None:
    assert kind.split("-")[0] in ENCODERS
    torch.manual_seed(0)
    enc = ENCODERS[kind.split("-")[0]](**KWARGS[kind])
    x = torch.randn(10, 6, requires_grad=True)
    ei = torch.tensor([[0, 1, 2, 3, 1, 2, 3, 4], [1, 2, 3, 4, 0, 1, 2, 3]])
    z = enc(x, ei)
    assert z.shape == (10, 4)
    z.square().sum().backward()
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in enc.parameters() if p.grad is not None)


def test_scgc_encoder_smooths_inside_when_given_edges() -> None:
    enc = ENCODERS["scgc_mlp"](**KWARGS["scgc_mlp"])
    x = torch.randn(5, 6)
    ei = torch.tensor([[0, 1], [1, 0]])
    assert not torch.allclose(enc(x, ei)[:2], enc(x)[:2])  # nodes 0, 1 are mixed by the propagation
    torch.testing.assert_close(enc(x, ei)[2:], enc(x)[2:])  # isolated nodes: Â^k x = x


def test_two_branch_encoder_averages_its_normalised_unshared_views() -> None:
    torch.manual_seed(0)
    enc = ENCODERS["scgc_mlp"](**KWARGS["scgc_mlp-2"])
    x = torch.randn(7, 6)
    v1, v2 = enc.views(x)
    assert not torch.allclose(v1, v2)  # two independently initialised encoders, not one shared
    want = (torch.nn.functional.normalize(v1, dim=1) + torch.nn.functional.normalize(v2, dim=1)) / 2
    torch.testing.assert_close(enc(x), want)
    assert len(ENCODERS["scgc_mlp"](**KWARGS["scgc_mlp"]).views(x)) == 1


def test_mse_objective_pulls_neighbours_together_and_pushes_others_apart() -> None:
    """A few Adam steps on two disjoint 4-cliques: within-clique cosines rise above across-clique ones."""
    torch.manual_seed(0)
    blocks = [torch.arange(4), torch.arange(4, 8)]
    pos = torch.cat([torch.cartesian_prod(b, b) for b in blocks]).T
    batch = {"x": torch.randn(8, 6), **_mask(pos[0], pos[1], 8)}
    m = SCGC(6, 0, None, GraphModel(hidden=[], out_dim=8, branches=2), GraphLoss(objective="mse", noise=0.01))
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    first = None
    for _ in range(60):
        loss, metrics = m(batch)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first / 2 and "loss_nc" in metrics
    with torch.no_grad():
        z = torch.nn.functional.normalize(m.encoder(batch["x"]), dim=1)
    s = z @ z.T
    inside, across = s[:4, :4].mean(), s[:4, 4:].mean()
    assert inside > 0.8 and across < 0.3, (inside, across)


def test_two_linear_branches_in_one_matmul_equal_the_separate_branches() -> None:
    from sslkit.domains.graph.model import SCGCEncoder

    torch.manual_seed(0)
    enc, x = SCGCEncoder(6, [], 4, branches=2), torch.randn(10, 6)
    v1, v2 = enc.views(x)
    torch.testing.assert_close(v1, enc.mlp(x))
    torch.testing.assert_close(v2, enc.mlp2(x))
    (v1.sum() + 2 * v2.sum()).backward()
    torch.testing.assert_close(enc.mlp[0].weight.grad, x.sum(0).expand(4, 6))
    torch.testing.assert_close(enc.mlp2[0].weight.grad, 2 * x.sum(0).expand(4, 6))


def _batch(n: int = 12) -> dict[str, torch.Tensor]:
    idx = torch.arange(n)
    rows = torch.cat([idx, idx, (idx + 1) % n])
    cols = torch.cat([idx, (idx + 1) % n, idx])
    return {"x": torch.randn(n, 6), **_mask(rows, cols, n)}


def _mask(rows: torch.Tensor, cols: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    """The batch's mask tensors for 0/1 positives at (rows, cols), as the data pipeline builds them."""
    import scipy.sparse as sp

    from sslkit.domains.graph.transforms import mask_tensors

    return mask_tensors(sp.coo_matrix((np.ones(len(rows)), (rows.numpy(), cols.numpy())), shape=(n, n)))


@pytest.mark.parametrize("cumulative", [True, False])
def test_scgc_head_starts_after_warmup_and_adds_kl(cumulative: bool) -> None:
    torch.manual_seed(0)
    m = SCGC(6, 2, 3, GraphModel(hidden=[8], out_dim=4), GraphLoss(cluster_warmup=2), cumulative=cumulative)
    b = _batch()
    loss, metrics = m(b)
    assert "loss_kl" not in metrics and not bool(m.ready)
    assert ("loss_rec" in metrics) == (not cumulative)  # SCGC keeps a decoder, SCGC* does not
    m.after_step(2, 10)
    loss, metrics = m(b)
    assert bool(m.ready) and "loss_kl" in metrics and m.centroids.abs().sum() > 0
    loss.backward()
    assert m.centroids.grad is not None and torch.isfinite(m.centroids.grad).all()


def test_grace_views_differ_and_loss_is_finite() -> None:
    torch.manual_seed(0)
    ei = torch.randint(0, 12, (2, 200))
    assert drop_edges(ei, 0.5).shape[1] < 200
    x = torch.ones(12, 50)
    masked = mask_features(x, 0.5)
    assert (masked.sum(0) == 0).any() and (masked == masked[0]).all()  # whole columns, same for every node
    m = GRACE(6, GraphModel(hidden=[8], out_dim=4, proj_dim=8), GraphLoss())
    loss, _ = m({"x": torch.randn(12, 6), "edge_index": ei})
    loss.backward()
    assert torch.isfinite(loss)


def _grace_reference(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """GRACE's objective (Zhu et al. 2020, eq. 1-2) by loops in float64: for anchor u_i, the positive v_i against
    every v_k (k != i, other view) and u_k (k != i, same view); averaged over both views as anchors."""
    u, v = [torch.nn.functional.normalize(z.double(), dim=1) for z in (z1, z2)]
    n, total = len(u), 0.0
    for a, b in ((u, v), (v, u)):
        for i in range(n):
            pos = math.exp(float(a[i] @ b[i]) / tau)
            inter = sum(math.exp(float(a[i] @ b[k]) / tau) for k in range(n) if k != i)
            intra = sum(math.exp(float(a[i] @ a[k]) / tau) for k in range(n) if k != i)
            total += -math.log(pos / (pos + inter + intra))
    return total / (2 * n)


def test_grace_loss_matches_the_paper_on_two_different_views() -> None:
    torch.manual_seed(0)
    ei = torch.randint(0, 12, (2, 400))
    x = torch.randn(12, 40)
    m = GRACE(40, GraphModel(hidden=[8], out_dim=4, proj_dim=8), GraphLoss(temperature=0.3, drop_edge=(0.2, 0.6),
                                                                            drop_feature=(0.3, 0.5)))
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    encode = m.encoder.forward
    m.encoder.forward = lambda xx, ee: (seen.append((xx, ee)), encode(xx, ee))[1]  # type: ignore[method-assign]
    loss, _ = m({"x": x, "edge_index": ei})
    (x1, e1), (x2, e2) = seen
    # two views, each corrupted at its own rates: whole feature columns zeroed, edges dropped
    kept_cols = [int((xv != 0).any(0).sum()) for xv in (x1, x2)]
    assert not torch.equal(x1, x2) and kept_cols[0] > kept_cols[1] and all(0 < k < 40 for k in kept_cols)
    assert all(torch.equal(xv[:, (xv != 0).any(0)], x[:, (xv != 0).any(0)]) for xv in (x1, x2))
    assert e1.shape[1] == pytest.approx(0.8 * 400, abs=40) and e2.shape[1] == pytest.approx(0.4 * 400, abs=40)
    with torch.no_grad():
        want = _grace_reference(m.proj(encode(x1, e1)), m.proj(encode(x2, e2)), 0.3)
    assert float(loss.detach()) == pytest.approx(want, rel=1e-5)


def test_centroids_train_at_their_own_lr_multiple_through_the_recipe_optimizer() -> None:
    """loss.centroid_lr_mult scales only the centroids' step: with Adam, a small β alone would not slow them."""
    from sslkit.core.optim import build_optimizer
    from sslkit.core.recipes import TrainConfig

    moves = {}
    for mult in (1.0, 0.01):
        torch.manual_seed(0)
        m = SCGC(6, 2, 3, GraphModel(hidden=[8], out_dim=4), GraphLoss(cluster_warmup=0, centroid_lr_mult=mult))
        groups = m.param_groups()
        assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))
        opt = build_optimizer(m, TrainConfig(optimizer="adam"), lr=0.01)
        for g in opt.param_groups:  # what fit() does at every step
            g["lr"] = 0.01 * g.get("lr_mult", 1.0)
        b = _batch()
        m(b)  # k-means sets the centroids
        start = m.centroids.detach().clone()
        enc_start = m.encoder.views(b["x"])[0].detach().clone()
        for _ in range(5):
            loss, _ = m(b)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            moves[mult] = (float((m.centroids - start).abs().max()), float((m.encoder.views(b["x"])[0] - enc_start).abs().max()))
    assert moves[0.01][0] < moves[1.0][0] / 20  # centroids: ~100× smaller Adam steps
    assert moves[0.01][1] > 0 and moves[1.0][0] > 0.02  # both still train


@pytest.mark.parametrize("density", [0.05, 1.0])
def test_full_batch_applies_linear_weights_before_the_filter_with_the_same_values_and_gradients(density: float) -> None:
    """Sparse (bag-of-words) and dense features: row_scale · Â^t (x0 Wᵀ) + b equals W·(prepared x) + b."""
    import networkx as nx
    import numpy as np

    from sslkit.domains.graph.batches import full_batch, prepare_inputs
    from sslkit.domains.graph.io import Graph
    from sslkit.domains.graph.method import GraphRecipe, build_method

    g = nx.karate_club_graph()
    ei = np.array(list(g.edges())).T
    rng = np.random.default_rng(0)
    x = (rng.random((34, 40)) < density).astype(np.float32) * rng.random((34, 40)).astype(np.float32)
    graph = Graph(np.arange(34).astype(str), np.hstack([ei, ei[::-1]]), np.ones(2 * ei.shape[1], np.float32), x)
    recipe = GraphRecipe.model_validate({"clusters": 2, "data": {"hops": 2, "feature_norm": "none"},
                                         "model": {"hidden": [], "out_dim": 8, "branches": 2},
                                         "loss": {"objective": "mse"}})
    inputs = prepare_inputs(graph, recipe, quiet=True)
    batch = full_batch(inputs, graph, recipe)
    assert ("x0_t" in batch) == (density < 0.2) and batch["x0"].is_sparse_csr == (density < 0.2)
    torch.manual_seed(0)
    enc = build_method(recipe, inputs.x.shape[1], inputs.hops).encoder
    fast = enc.lowpass_views(batch["x0"], batch["adj"], batch["row_scale"], batch.get("x0_t"))
    slow = enc.views(batch["x"])
    for f, s in zip(fast, slow):
        torch.testing.assert_close(f, s, atol=1e-5, rtol=1e-4)
    grads = [torch.autograd.grad(sum((v * torch.arange(8.0)).sum() ** 2 for v in views), enc.mlp2[0].weight)[0]
             for views in (fast, slow)]
    torch.testing.assert_close(grads[0], grads[1], atol=1e-4, rtol=1e-4)
    deep = recipe.model_copy(deep=True)
    deep.model.hidden = [16]
    assert "x0" not in full_batch(prepare_inputs(graph, deep, quiet=True), graph, deep)  # MLPs filter first
    mini = recipe.model_copy(deep=True)
    mini.data.full_batch = False
    kept = prepare_inputs(graph, mini, quiet=True)   # mini-batches never read the filter's factors: not kept
    assert kept.x0 is None and kept.a_sym is None and kept.row_scale is not None


def test_node_embedding_centres_and_keeps_the_main_directions() -> None:
    import numpy as np

    from sslkit.domains.graph.clustering import node_embedding, unit_rows

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 40)
    signal = np.zeros((120, 16), np.float32)
    signal[np.arange(120), 1 + labels] = 1.0                      # three clusters along directions 1..3
    z = (signal + 0.01 * rng.standard_normal((120, 16))).astype(np.float32)
    z[:, 0] += 10.0                                               # one shared direction dominates every row
    assert (unit_rows(z) @ unit_rows(z).T).min() > 0.98           # plain unit rows: every pair looks alike
    e = node_embedding(z, 0.9)
    assert e.shape == (120, 2)                                    # the 3 centred cluster directions span 2 dimensions
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    cos = e @ e.T
    same = labels[:, None] == labels[None, :]
    assert cos[same].min() > 0.99 and cos[~same].max() < -0.4    # the clusters separate once centred
    full = node_embedding(z, 1.0)                                 # all directions: the geometry of the centred rows
    np.testing.assert_allclose(full @ full.T, unit_rows(z - z.mean(0)) @ unit_rows(z - z.mean(0)).T, atol=1e-4)
    np.testing.assert_allclose(node_embedding(z, None), unit_rows(z))


def test_reading_keeps_the_unit_rows_when_fewer_than_k_minus_1_directions_hold_the_variance() -> None:
    """K cluster centres span K−1 directions; a PCA reading that keeps fewer must drop some of their separation."""
    import numpy as np

    from sslkit.core.evaluation import kmeans_eval
    from sslkit.domains.graph.clustering import read_outputs, recipe_embedding, unit_rows
    from sslkit.domains.graph.method import GraphRecipe

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 30)
    centres = np.zeros((6, 16), np.float32)
    centres[[0, 1, 2, 3], [1, 1, 2, 2]] = [3, -3, 3, -3]        # four clusters far apart in two directions
    centres[[4, 5], [3, 3]] = [1, -1]                          # two more apart only in a third, weak direction
    z = (centres[labels] + 0.1 * rng.standard_normal((180, 16))).astype(np.float32)
    z[:, 0] += 10.0                                            # the shared direction of SCGC*'s outputs
    pca, how_pca = read_outputs(z, 0.9)                        # no K: centred, the 2 directions holding 90%
    assert pca.shape == (180, 2) and how_pca.startswith("centred, 2 principal directions")
    plain, how = read_outputs(z, 0.9, clusters=6)              # 2 < K−1 = 5: the unit rows, all 16 directions
    np.testing.assert_allclose(plain, unit_rows(z))
    assert "fewer than K−1 = 5" in how
    nmi = {name: kmeans_eval(e, labels, 6, seeds=(0,))["nmi"][0] for name, e in (("pca", pca), ("plain", plain))}
    assert nmi["plain"] > 0.95 and nmi["pca"] < 0.9, nmi        # projecting away the third direction merges 4 and 5
    three = read_outputs(z, 0.9, clusters=3)[0]                # 2 >= K−1: the PCA reading as before
    np.testing.assert_allclose(three, pca)
    recipe = GraphRecipe.model_validate({"method": "scgc-star", "clusters": 6})
    np.testing.assert_allclose(recipe_embedding(z, recipe)[0], pca)   # the schema's default: project anyway
    recipe.embedding.too_few_directions = "plain"
    np.testing.assert_allclose(recipe_embedding(z, recipe)[0], plain)
    recipe.clusters = None                                     # no K (GRACE, or no --clusters): nothing to compare
    np.testing.assert_allclose(recipe_embedding(z, recipe)[0], pca)
