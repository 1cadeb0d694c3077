"""What a trained graph run gives back: node embeddings, soft cluster assignments, and the
evaluation table (k-means on embeddings and on two training-free baselines, the learned
soft assignment, and a logistic-regression node-classification probe)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslkit.core.errors import UserError
from sslkit.domains.graph.batches import Inputs, prepare_inputs
from sslkit.domains.graph.io import Graph
from sslkit.domains.graph.method import GraphRecipe, soft_assignment


def check_clusters(k: int | None, n: int) -> None:
    if k is not None and not 2 <= k <= n:
        raise UserError(f"--clusters {k} is not possible for a graph of {n} nodes — choose 2 <= K <= {n}")


def run_inputs(run_dir: Path, graph: Graph, recipe: GraphRecipe) -> Inputs:
    """The encoder's inputs for `graph`, prepared as in the run (with the filter depth the run used, as its
    encoder config records it); a feature-width mismatch is an error."""
    from sslkit.core.export import read_config

    kwargs = read_config(run_dir)["kwargs"]
    if recipe.method != "grace" and recipe.data.hops is None and "hops" in kwargs:
        recipe = recipe.model_copy(deep=True)
        recipe.data.hops = int(kwargs["hops"])
    inputs = prepare_inputs(graph, recipe, quiet=True)
    want = kwargs["in_dim"]
    if inputs.x.shape[1] != want:
        raise UserError(f"the graph's features have {inputs.x.shape[1]} columns but the run was trained on {want} — "
                        "pass the same --features as for pretrain")
    return inputs


@torch.no_grad()
def encode(run_dir: Path, graph: Graph, recipe: GraphRecipe, inputs: Inputs, chunk: int = 65536) -> np.ndarray:
    """Encoder outputs z (N, D) for every node (SCGC: MLP(s) on the prepared features, in chunks; GRACE: GCN)."""
    from sslkit.core.export import load_encoder

    encoder = load_encoder(run_dir)
    x = torch.from_numpy(inputs.x)
    if recipe.method == "grace":
        return encoder(x, torch.from_numpy(graph.edge_index)).numpy()
    return torch.cat([encoder(x[i:i + chunk]) for i in range(0, len(x), chunk)]).numpy()


def unit_rows(z: np.ndarray) -> np.ndarray:
    """L2-normalised rows: both methods train cosine similarities, so this is the embedding geometry."""
    return (z / np.linalg.norm(z, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)


def read_outputs(z: np.ndarray, pca_variance: float | None, clusters: int | None = None) -> tuple[np.ndarray, str]:
    """(node embeddings (N, d), how z was read) from encoder outputs z (N, D).

    With `pca_variance`: centred, projected onto the fewest principal directions (at least two) holding that fraction of
    the variance (from the D×D covariance), then L2-normalised — unless `clusters` K is given and fewer than K−1
    directions hold it: then only L2-normalised, as with None. K cluster centres span K−1 directions, so a projection
    onto fewer must drop part of what separates them; the plain unit rows keep every direction, as the cosine loss
    trained them about the origin (measured over the graph suite: docs/graph.md, third pass).
    Transductive: the centre and directions come from the N rows given."""
    if pca_variance is None:
        return unit_rows(z), "unit length"
    z = np.asarray(z, dtype=np.float32)
    zc = z - z.mean(0, dtype=np.float64).astype(np.float32)
    var, dirs = np.linalg.eigh((zc.T @ zc).astype(np.float64))
    var, dirs = var[::-1].clip(0), dirs[:, ::-1]
    if var.sum() <= 0:  # all rows equal: nothing to project
        return unit_rows(zc), "unit length (all rows equal)"
    keep = int(np.searchsorted(np.cumsum(var) / var.sum(), pca_variance - 1e-9)) + 1
    if clusters is not None and keep < clusters - 1:
        return unit_rows(z), (f"unit length ({keep} principal directions hold {pca_variance:g} of the variance, "
                              f"fewer than K−1 = {clusters - 1})")
    keep = min(max(keep, 2), len(var))  # one direction would leave only the sign after normalising
    return unit_rows(zc @ dirs[:, :keep].astype(np.float32)), (f"centred, {keep} principal directions "
                                                               f"({pca_variance:g} of the variance), unit length")


def node_embedding(z: np.ndarray, pca_variance: float | None, clusters: int | None = None) -> np.ndarray:
    """Encoder outputs z (N, D) read as node embeddings (N, d): see `read_outputs`."""
    return read_outputs(z, pca_variance, clusters)[0]


def recipe_embedding(z: np.ndarray, recipe: GraphRecipe) -> tuple[np.ndarray, str]:
    """z read as the recipe says (embedding.pca_variance; with embedding.too_few_directions "plain" and a K in
    `clusters`, the unit rows when the PCA reading would keep fewer than K−1 directions)."""
    k = recipe.clusters if recipe.embedding.too_few_directions == "plain" else None
    return read_outputs(z, recipe.embedding.pca_variance, k)


def soft_assign(run_dir: Path, z: np.ndarray, missing_ok: bool = False) -> np.ndarray | None:
    """q (N, K) from the run's learned centroids. A GRACE run or a head that never started is an error, or None with
    `missing_ok` (evaluate and the cluster map still have the embeddings to show)."""
    from sslkit.core.checkpoint import load_checkpoint
    from sslkit.core.runs import Run

    run = Run.load(run_dir, "graph")
    state = load_checkpoint(run.checkpoint_path)["model"]
    if "centroids" not in state or not bool(state.get("ready", torch.tensor(False))):
        if missing_ok:
            return None
        if run.recipe_dict.get("method") == "grace":
            raise UserError(f"{run_dir} is a GRACE run, which has no clustering head — use `evaluate` (k-means) "
                            "or pretrain with --recipe scgc-star")
        raise UserError(f"{run_dir}: the clustering head never started (loss.cluster_warmup >= train.steps) — "
                        "pretrain longer or lower loss.cluster_warmup")
    scale = float(run.recipe_dict.get("loss", {}).get("kernel_scale", 1.0))
    return soft_assignment(torch.from_numpy(z).float(), state["centroids"].float(), scale).numpy()


def evaluate_all(graph: Graph, recipe: GraphRecipe, z: np.ndarray, q: np.ndarray | None, idx: np.ndarray,
                 y: np.ndarray, seeds: tuple[int, ...], run_hops: int | None = None) -> dict[str, dict[str, Any]]:
    """{row name: {metric: (mean, std)}} over the labelled nodes idx with labels y. `run_hops`: the filter depth the
    SCGC encoder was trained on; where it differs from the baseline's, the features at that depth are a row too.

    On a few thousand nodes with wide features (Citeseer: 3,327 × 3,703) the k-means and probe runs take minutes, so
    they are counted on stderr as training steps are (core.progress): one part per row and seed for each, plus the
    two feature baselines. Each seed runs alone and the (mean, std) is taken over the seeds as the grouped calls
    take it: the same numbers."""
    from sslkit.core.evaluation import cluster_metrics, kmeans_eval, linear_probe, mean_std
    from sslkit.core.progress import Progress
    from sslkit.domains.graph.transforms import auto_hops

    k = int(y.max()) + 1
    baseline = recipe.model_copy(deep=True)
    baseline.method = "scgc-star"
    baseline.data.hops = 0
    has_features = graph.x is not None      # without, the "raw" inputs are one-hot rows: nothing to cluster
    t = auto_hops(graph.num_nodes, graph.edge_index.shape[1])
    own = run_hops if recipe.method != "grace" and run_hops is not None and run_hops != t else None
    rows_n = (3 if has_features else 2) + (own is not None)
    with Progress(total=2 + rows_n * 2 * len(seeds), label="evaluate") as progress:
        progress.advance(0, "raw and propagated features")
        raw = prepare_inputs(graph, baseline, quiet=True).x if has_features else None
        progress.advance(1, "raw features ready")
        # the training-free baseline at the graph's full mixing distance (Cora: 5, its strongest depth) and, where
        # it differs, at the encoder's own depth (sbm-feat, lfr-feat: t = 2 beats their mixing distance): the
        # embeddings face the stronger of the two, so a weak depth cannot flatter them
        baseline.data.hops = t
        smooth = prepare_inputs(graph, baseline, quiet=True).x
        feats = {"raw features": raw, f"propagated Â^{t}X (no training)": smooth}
        if own is not None:
            baseline.data.hops = own
            feats[f"propagated Â^{own}X, the encoder's depth (no training)"] = prepare_inputs(graph, baseline, quiet=True).x
        feats[f"{recipe.method} embeddings"] = recipe_embedding(z, recipe)[0]
        done = 2
        progress.advance(done, "propagated features ready")
        rows: dict[str, dict[str, Any]] = {}
        if raw is None:
            del feats["raw features"]
        for name, x in feats.items():
            clustered, probed = [], []
            for seed in seeds:
                clustered.append({m: v for m, (v, _) in kmeans_eval(x[idx], y, k, seeds=(seed,)).items()})
                done += 1
                progress.advance(done, f"k-means on {name}, seed {seed}")
                probed.append(linear_probe(x[idx], y, seeds=(seed,))["accuracy"][0])
                done += 1
                progress.advance(done, f"probe on {name}, seed {seed}")
            rows[name] = {**{m: mean_std(r[m] for r in clustered) for m in clustered[0]}, "probe_acc": mean_std(probed)}
    if q is not None:
        one = cluster_metrics(y, q[idx].argmax(1))
        rows[f"{recipe.method} soft assignment"] = {m: (v, 0.0) for m, v in one.items()}
    return rows
