"""Model inputs and training batches: prepared node features, full-graph batches for small
graphs, and seed-node blocks (seeds + sampled neighbours, with their mask block) for large ones. Both are one item
per step that every process receives alike, so P processes train as one (see `NodeBlocks`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import Dataset

from sslkit.core.console import warn
from sslkit.core.errors import UserError
from sslkit.domains.graph.io import Graph
from sslkit.domains.graph.method import GraphRecipe
from sslkit.domains.graph.model import sparse_csr
from sslkit.domains.graph.transforms import (adjacency, filter_hops, mask_order, mask_tensors, neighbourhood_sizes, positive_mask,
                                             positive_mask_block, propagate, row_normalise, sample_block, standardise,
                                             structural_features)


@dataclass
class Inputs:
    """Prepared features x (N, D) fed to the encoder (already smoothed for SCGC) and how they were made."""

    x: np.ndarray
    hops: int
    structural: str | None  # the graph had no features: "one-hot" or "diffusion" features stand in; None: its own
    a_row: Any  # D⁻¹(A+I), for SCGC masks
    x0: np.ndarray | None = None         # features before the filter (SCGC, full-batch linear only): x = row_scale · Â^hops x0
    a_sym: Any = None                    # Â = D^-½(A+I)D^-½
    row_scale: np.ndarray | None = None  # (N, 1) the L2 row normalisation applied after the filter

    def summary(self) -> dict[str, Any]:
        return {"in_dim": int(self.x.shape[1]), "hops": self.hops, "structural_features": self.structural or False}


def prepare_inputs(graph: Graph, recipe: GraphRecipe, quiet: bool = False) -> Inputs:
    """Features (given or structural), normalised, then Â^hops X for SCGC (GRACE's GCN propagates itself)."""
    n, data = graph.num_nodes, recipe.data
    a_sym = adjacency(graph.edge_index, graph.edge_weight, n, "sym")
    structural = None if graph.x is not None else "one-hot" if n <= data.identity_max_nodes else "diffusion"
    if structural == "one-hot":
        if not quiet:
            warn(f"the graph has no node features — using one-hot node features ({n} columns; after the filter, each "
                 f"node's diffusion profile; up to data.identity_max_nodes={data.identity_max_nodes} nodes); "
                 "pass --features if the nodes have attributes")
        x = np.eye(n, dtype=np.float32)   # dense N×N: at most 5,000² × 4 B = 100 MB by default; sparse for the filter
    elif structural == "diffusion":
        if data.structural_dim < 1:
            raise UserError("data.structural_dim=0 but the graph has no node features, so the encoder's only inputs are "
                            "the structural features — set data.structural_dim to 1 or more (default 32) or pass --features")
        if not quiet:
            warn(f"the graph has no node features — using {data.structural_dim} structural features "
                 "(log-degree + random-walk diffusions); pass --features for better results")
        degree = np.bincount(graph.edge_index[0], minlength=n)
        x = structural_features(a_sym, degree, data.structural_dim, recipe.train.seed)
    else:
        x = {"row": row_normalise, "standard": standardise, "none": lambda v: v.astype(np.float32)}[data.feature_norm](graph.x)
    hops = 0 if recipe.method == "grace" else (data.hops if data.hops is not None else filter_hops(n, graph.edge_index.shape[1]))
    x0 = x.astype(np.float32)
    x = propagate(a_sym, x0, hops)
    scale = np.ones((n, 1), np.float32)
    if recipe.method != "grace" and data.input_norm == "l2":
        scale = (1.0 / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)
        x = x * scale
    if recipe.method == "grace":
        return Inputs(x.astype(np.float32), hops, structural, None)
    a_row = adjacency(graph.edge_index, graph.edge_weight, n, "row")
    if recipe.model.hidden or not use_full_batch(recipe, n):   # only the full-batch low-pass path reads them
        x0 = a_sym = None
    return Inputs(x.astype(np.float32), hops, structural, a_row, x0, a_sym, scale)


def use_full_batch(recipe: GraphRecipe, n: int) -> bool:
    fb = recipe.data.full_batch
    return n <= recipe.data.full_batch_max_nodes if fb == "auto" else bool(fb)


class FullGraph(Dataset):
    """One item, the whole graph as one batch: trained with `fit(..., full_batch=True)`, which gives it to every
    process at every step."""

    def __init__(self, batch: dict[str, torch.Tensor]) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {**self.batch, **step_seed()}


def mask_order_for(recipe: GraphRecipe, inputs: Inputs) -> tuple[int, dict[str, Any]]:
    """(r, what to record in the manifest): the mask order SCGC trains with — `loss.r`, or for "auto" the largest
    r ≤ `loss.r_max` whose mean r-hop neighbourhood holds at most 2·N / K nodes (`transforms.mask_order`)."""
    if recipe.loss.r != "auto":
        return int(recipe.loss.r), {"mask_r": int(recipe.loss.r)}
    n = inputs.a_row.shape[0]
    sizes = neighbourhood_sizes(inputs.a_row, recipe.loss.r_max)
    r = mask_order(sizes, n, recipe.clusters or 2)
    per_cluster = n / (recipe.clusters or 2)
    return r, {"mask_r": r, "mean_neighbourhood": [round(s, 1) for s in sizes], "nodes_per_cluster": round(per_cluster, 1)}


def full_batch(inputs: Inputs, graph: Graph, recipe: GraphRecipe, r: int | None = None) -> dict[str, torch.Tensor]:
    """The whole graph as one batch: SCGC gets x and the sparse mask (order r; None: as `mask_order_for` resolves
    the recipe's); GRACE gets x and edge_index."""
    x = torch.from_numpy(inputs.x)
    if recipe.method == "grace":
        return {"x": x, "edge_index": torch.from_numpy(graph.edge_index)}
    r = r if r is not None else mask_order_for(recipe, inputs)[0]
    mask = positive_mask(inputs.a_row, r, cumulative=recipe.method == "scgc-star")
    batch = {"x": x, **mask_tensors(mask, recipe.loss.objective)}
    if inputs.x0 is not None:
        batch.update(lowpass_tensors(inputs))
    return batch


def lowpass_tensors(inputs: Inputs) -> dict[str, torch.Tensor]:
    """{"x0", "adj", "row_scale"} (+ "x0_t"): the filter's factors, for linear encoders that apply their weights
    before it. x0 becomes sparse CSR (with its transpose for the backward pass) when mostly zeros, as
    bag-of-words features are."""
    out = {"x0": torch.from_numpy(inputs.x0), "row_scale": torch.from_numpy(inputs.row_scale)}
    if np.count_nonzero(inputs.x0) < 0.2 * inputs.x0.size:
        out["x0_t"] = csr_tensor(sp.csr_matrix(inputs.x0.T))
        out["x0"] = csr_tensor(sp.csr_matrix(inputs.x0))
    out["adj"] = csr_tensor(inputs.a_sym)
    return out


def csr_tensor(m: Any) -> torch.Tensor:
    """A scipy CSR matrix as a float32 torch sparse CSR tensor."""
    m = m.tocsr()
    return sparse_csr(torch.from_numpy(m.indptr.astype(np.int64)), torch.from_numpy(m.indices.astype(np.int64)),
                      torch.from_numpy(m.data.astype(np.float32)), m.shape)


def step_seed() -> dict[str, torch.Tensor]:
    """{"seed": int64 scalar} for the step's own random draws (SCGC's view noise), from the item's random state that
    fit seeds per (train.seed, step) alike on every process — not from the per-process torch seed of `forward`, so
    P processes draw what one process draws."""
    return {"seed": torch.randint(0, 2**62, (), dtype=torch.int64)}


class NodeBlocks(Dataset):
    """Node mini-batches as one item per step, the same on every process (trained with `fit(..., full_batch=True)`,
    which hands every process the item, drawn from the random state fit seeds per (train.seed, step)): `batch_size`
    seed nodes drawn without replacement, plus `fanout` sampled neighbours of each (`sample_block`), with the sparse
    mask block among them (never an N×N matrix). {"x": (M, D), mask tensors, "seed", "shard"}: "shard" tells SCGC to
    encode only this process's slice of the M rows and gather the slices (`SCGC.forward`), so the loss of P processes
    is the loss of one process on the same block, and their gradients sum to its gradient."""

    def __init__(self, inputs: Inputs, batch_size: int, r: int, cumulative: bool, fanout: int,
                 objective: str | None = None) -> None:
        n = len(inputs.x)
        if batch_size > n:
            raise UserError(f"train.batch_size={batch_size} seed nodes per step but the graph has {n} nodes — lower "
                            f"train.batch_size (e.g. --set train.batch_size={max(1, n // 4)}) or train it in one batch "
                            "(--set data.full_batch=true)")
        self.x, self.a_row, self.r, self.cumulative, self.fanout = inputs.x, inputs.a_row, r, cumulative, fanout
        self.batch_size, self.objective = batch_size, objective

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(int(np.random.randint(0, 2**31 - 1)))  # numpy is seeded per (seed, step) by fit
        seeds = np.sort(rng.choice(len(self.x), size=self.batch_size, replace=False))
        return {**self.block(seeds, rng), **step_seed(), "shard": torch.ones((), dtype=torch.bool)}

    def block(self, seeds: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """{"x": (M, D)} + `mask_tensors` for `seeds` plus `fanout` sampled neighbours each (M nodes, sorted)."""
        nodes = sample_block(self.a_row, seeds.astype(np.int64), self.fanout, rng)
        mask = positive_mask_block(self.a_row, nodes, self.r, self.cumulative)
        return {"x": torch.from_numpy(self.x[nodes]), **mask_tensors(mask, self.objective)}
