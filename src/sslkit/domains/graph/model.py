"""Graph encoders: SCGC's MLP over low-pass-filtered features, and the GCN of the GRACE baseline."""
from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _sym_norm_propagate(x: Tensor, edge_index: Tensor, hops: int) -> Tensor:
    """Â^hops x with Â = D^-½(A+I)D^-½ as a torch sparse operator (N, D) -> (N, D)."""
    n = x.shape[0]
    loops = torch.arange(n, device=x.device)
    ei = torch.cat([edge_index, torch.stack([loops, loops])], dim=1)
    deg = torch.zeros(n, device=x.device).index_add_(0, ei[0], torch.ones(ei.shape[1], device=x.device))
    w = deg[ei[0]].rsqrt() * deg[ei[1]].rsqrt()
    a = torch.sparse_coo_tensor(ei, w, (n, n)).coalesce()
    for _ in range(hops):
        x = torch.sparse.mm(a, x)
    return x


def _mlp(in_dim: int, hidden: list[int] | tuple[int, ...], out_dim: int) -> nn.Sequential:
    dims = [in_dim, *hidden, out_dim]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def sparse_csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A torch sparse CSR tensor, without torch's "sparse CSR support is in beta" warning: CSR × dense and its
    gradient, the only operations used here, are supported."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, shape)


class SparseMatmul(torch.autograd.Function):
    """a @ dense with a constant sparse `a` whose transpose `a_t` is given: the backward is one more sparse product
    (a_t @ grad), where autograd would transpose the CSR matrix on every step."""

    @staticmethod
    def forward(ctx, a: Tensor, a_t: Tensor, dense: Tensor) -> Tensor:  # noqa: ANN001
        ctx.a_t = a_t
        return a @ dense

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, None, Tensor]:  # noqa: ANN001
        return None, None, ctx.a_t @ grad


class SCGCEncoder(nn.Module):
    """SCGC's encoder: an MLP (ReLU between layers, a single linear layer when `hidden` is empty) on
    features smoothed over `hops` hops; with `branches=2`, two unshared MLPs (two views of each node, as in
    Liu et al.'s Simple Contrastive Graph Clustering) whose L2-normalised outputs are averaged.

    forward(x (N, in_dim), edge_index (2, E) or None) -> (N, out_dim). Pass edge_index to smooth inside
    (the exported encoder is then self-contained); without it x must already be Â^hops X.
    """

    def __init__(self, in_dim: int, hidden: list[int] | tuple[int, ...] = (500, 500, 2000), out_dim: int = 10,
                 hops: int = 0, branches: int = 1) -> None:
        super().__init__()
        if branches not in (1, 2):
            raise ValueError(f"SCGCEncoder has 1 or 2 branches, not {branches}")
        self.mlp = _mlp(in_dim, hidden, out_dim)
        self.mlp2 = _mlp(in_dim, hidden, out_dim) if branches == 2 else None
        self.hops = hops

    def views(self, x: Tensor) -> list[Tensor]:
        """Raw branch outputs [(N, out_dim)] * branches, on already-smoothed x. Two single-layer branches run as
        one matmul with their weights stacked (the same values; one wide GEMM is ~15% faster on CPU)."""
        if self.mlp2 is None:
            return [self.mlp(x)]
        if len(self.mlp) == 1:
            w, b = self._stacked_linear()
            return list(F.linear(x, w, b).chunk(2, dim=1))
        return [self.mlp(x), self.mlp2(x)]

    def _stacked_linear(self) -> tuple[Tensor, Tensor]:
        """Weights (branches·out_dim, in_dim) and biases of single-layer branches, stacked for one product."""
        layers = [self.mlp[0]] if self.mlp2 is None else [self.mlp[0], self.mlp2[0]]
        return torch.cat([m.weight for m in layers]), torch.cat([m.bias for m in layers])

    @staticmethod
    def fuse(views: list[Tensor]) -> Tensor:
        """The node embedding from `views()`: the single branch as is, or the mean of the two L2-normalised ones."""
        if len(views) == 1:
            return views[0]
        return (F.normalize(views[0], dim=1) + F.normalize(views[1], dim=1)) / 2

    def lowpass_views(self, x0: Tensor, adj: Tensor, row_scale: Tensor, x0_t: Tensor | None = None) -> list[Tensor]:
        """`views()` of x = row_scale · Â^hops x0 for single-layer branches, computed as row_scale · Â^hops (x0 Wᵀ) + b:
        the weights act on the unfiltered (often sparse) features and the filter on the narrow outputs, the same
        values as `views(x)` at a fraction of the cost when x0 is sparse. x0 (N, F) dense or sparse CSR (then x0_t, its
        transpose as CSR, serves the backward pass), adj (N, N) sparse symmetric Â, row_scale (N, 1)."""
        if len(self.mlp) != 1:
            raise ValueError("lowpass_views needs single-layer branches (model.hidden: [])")
        w, b = self._stacked_linear()
        with torch.autocast(x0.device.type, enabled=False):  # sparse products are fp32-only on CPU, and cheap
            h = x0 @ w.float().T if x0_t is None else SparseMatmul.apply(x0, x0_t, w.float().T)
            for _ in range(self.hops):
                h = SparseMatmul.apply(adj, adj, h)
            h = h * row_scale + b.float()
        return list(h.chunk(1 if self.mlp2 is None else 2, dim=1))

    def forward(self, x: Tensor, edge_index: Tensor | None = None) -> Tensor:
        if edge_index is not None and self.hops:
            x = _sym_norm_propagate(x, edge_index, self.hops)
        return self.fuse(self.views(x))


class GCNEncoder(nn.Module):
    """GRACE's encoder: `layers` PyG GCNConv layers with PReLU/ReLU. forward(x (N, D), edge_index (2, E)) -> (N, out_dim)."""

    def __init__(self, in_dim: int, hidden: int = 256, out_dim: int = 128, layers: int = 2) -> None:
        super().__init__()
        from torch_geometric.nn import GCNConv

        dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
        self.convs = nn.ModuleList(GCNConv(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = nn.ReLU()

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        for conv in self.convs:
            x = self.act(conv(x, edge_index))
        return x


ENCODERS: dict[str, Callable[..., nn.Module]] = {"scgc_mlp": SCGCEncoder, "gcn": GCNEncoder}
