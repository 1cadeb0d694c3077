"""KoLeo: a differential-entropy regulariser that spreads a batch of features over the unit sphere.

Paper: Sablayrolles et al., "Spreading vectors for similarity search", arXiv:1806.03198 (Kozachenko-Leonenko
estimator); used on the student's CLS tokens by DINOv2 (Oquab et al. 2023, arXiv:2304.07193) with weight 0.1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.no_grad()
def nearest_neighbours(x: Tensor) -> Tensor:
    """(B, D) unit vectors -> (B,) index of each row's nearest other row (largest inner product, itself excluded)."""
    sim = x @ x.T
    sim.fill_diagonal_(-float("inf"))
    return sim.argmax(dim=1)


def koleo(x: Tensor, eps: float = 1e-8) -> Tensor:
    """−mean_i log(‖x̂_i − x̂_nn(i)‖ + eps) for (B, D) features, x̂ = x / ‖x‖ (the batch's own nearest neighbours).

    eps is also added to the difference (as torch's PairwiseDistance does), so identical rows give a finite
    gradient. Minimising it pushes each feature away from its nearest neighbour.
    """
    x = F.normalize(x.float(), dim=-1)
    nn_idx = nearest_neighbours(x)
    dist = torch.linalg.vector_norm(x - x[nn_idx] + eps, dim=-1)
    return -torch.log(dist + eps).mean()


class KoLeoLoss(nn.Module):
    """KoLeo regulariser on one batch of features (B, D), B >= 2, per process (DINOv2 does not gather it)."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[0] < 2:
            raise ValueError(f"KoLeo expects features (B, D) with B >= 2, got shape {tuple(x.shape)}")
        return koleo(x, self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
