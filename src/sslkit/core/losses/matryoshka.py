"""Matryoshka wrapper: apply a loss to nested prefixes of the embedding.

Paper: Kusupati et al., "Matryoshka Representation Learning", arXiv:2205.13147.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn


class MatryoshkaLoss(nn.Module):
    """L = Σ_m c_m · base_loss(z[:, :m], z′[:, :m], ...) over nested dimensions m (MRL, arXiv:2205.13147).

    Every positional tensor argument is cut to its first m features (last axis);
    keyword arguments pass through unchanged. The paper uses c_m = 1 (the default).
    A prefix of the trained embedding is then usable on its own.
    """

    def __init__(
        self,
        base_loss: nn.Module | Callable[..., Tensor],
        dims: Sequence[int],
        weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        dims = [int(d) for d in dims]
        if not dims or any(d <= 0 for d in dims) or len(set(dims)) != len(dims):
            raise ValueError(f"MatryoshkaLoss dims must be distinct positive sizes, e.g. [8, 16, 32]; got {dims}")
        weights = [1.0] * len(dims) if weights is None else [float(w) for w in weights]
        if len(weights) != len(dims):
            raise ValueError(f"MatryoshkaLoss got {len(weights)} weights for {len(dims)} dims; give one weight per dim")
        self.base_loss = base_loss
        self.dims = dims
        self.weights = weights

    def forward(self, *tensors: Tensor, **kwargs: Any) -> Tensor:
        """tensors: embeddings (..., D) with D >= max(dims) -> weighted sum of prefix losses."""
        if not tensors:
            raise ValueError("MatryoshkaLoss needs at least one embedding tensor")
        for i, t in enumerate(tensors):
            if t.shape[-1] < max(self.dims):
                raise ValueError(
                    f"MatryoshkaLoss dim {max(self.dims)} exceeds the embedding size D={t.shape[-1]} "
                    f"of argument {i} (shape {tuple(t.shape)}); use dims <= D"
                )
        total = torch.zeros((), device=tensors[0].device)
        for m, c in zip(self.dims, self.weights):
            total = total + c * self.base_loss(*(t[..., :m] for t in tensors), **kwargs)
        return total

    def extra_repr(self) -> str:
        return f"dims={self.dims}, weights={self.weights}"
