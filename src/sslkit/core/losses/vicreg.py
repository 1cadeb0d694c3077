"""VICReg: variance-invariance-covariance regularisation.

Paper: Bardes, Ponce, LeCun, "VICReg: Variance-Invariance-Covariance
Regularization for Self-Supervised Learning", arXiv:2105.04906.

L = λ·MSE(z, z′) + μ·[v(z) + v(z′)]/2 + ν·[c(z) + c(z′)], with
v(z) = mean_j ReLU(1 − √(Var z_j + ε)) and c(z) = Σ_{i≠j} Cov(z)_ij² / d.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from sslkit.core.distributed import gather_with_grad


def invariance(z0: Tensor, z1: Tensor) -> Tensor:
    """Mean squared error between the two views (N, D): pulls positives together."""
    return F.mse_loss(z0, z1)


def variance(z: Tensor, eps: float = 1e-4) -> Tensor:
    """mean_j ReLU(1 − √(Var z_j + eps)) for z (N, D): keeps every dimension's std near 1.

    Var is the unbiased batch variance, so N must be at least 2.
    """
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(1.0 - std).mean()


def covariance(z: Tensor) -> Tensor:
    """Σ_{i≠j} Cov(z)_ij² / D for z (N, D): decorrelates the dimensions."""
    n, d = z.shape
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / (n - 1)
    off_diagonal = cov - torch.diag(torch.diagonal(cov))
    return off_diagonal.pow(2).sum() / d


class VICRegLoss(nn.Module):
    """VICReg loss (arXiv:2105.04906) with the paper's weights λ=μ=25, ν=1.

    gather_distributed: compute all three terms over the batch gathered from
    all ranks (opt-in; a no-op unless torch.distributed is initialised), so the
    variance and covariance statistics match a single-process run.
    """

    def __init__(
        self,
        sim_weight: float = 25.0,
        var_weight: float = 25.0,
        cov_weight: float = 1.0,
        eps: float = 1e-4,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.sim_weight = sim_weight
        self.var_weight = var_weight
        self.cov_weight = cov_weight
        self.eps = eps
        self.gather_distributed = gather_distributed

    def components(self, z0: Tensor, z1: Tensor) -> dict[str, Tensor]:
        """The unweighted terms {"invariance", "variance", "covariance"} for z0, z1 (N, D).

        "variance" is [v(z0) + v(z1)]/2 and "covariance" is c(z0) + c(z1), as in the paper.
        """
        if z0.dim() != 2 or z0.shape != z1.shape:
            raise ValueError(
                f"VICReg expects two embeddings of the same shape (N, D); got {tuple(z0.shape)} and {tuple(z1.shape)}"
            )
        if self.gather_distributed and dist.is_initialized():
            z0, z1 = gather_with_grad(z0), gather_with_grad(z1)
        if z0.shape[0] < 2:
            raise ValueError(f"VICReg needs a batch of at least 2 samples for its variance term; got N={z0.shape[0]}")
        # variances and the D x D covariance in float32: bf16 is too coarse for batch statistics
        dtype = torch.promote_types(z0.dtype, torch.float32)
        with torch.autocast(z0.device.type, enabled=False):
            z0, z1 = z0.to(dtype), z1.to(dtype)
            return {
                "invariance": invariance(z0, z1),
                "variance": 0.5 * (variance(z0, self.eps) + variance(z1, self.eps)),
                "covariance": covariance(z0) + covariance(z1),
            }

    def weighted(self, terms: dict[str, Tensor]) -> Tensor:
        """The loss from `components`' terms: λ·invariance + μ·variance + ν·covariance (for callers that log the terms)."""
        return (
            self.sim_weight * terms["invariance"]
            + self.var_weight * terms["variance"]
            + self.cov_weight * terms["covariance"]
        )

    def forward(self, z0: Tensor, z1: Tensor) -> Tensor:
        """z0, z1: (N, D) projector outputs of two views -> scalar loss."""
        return self.weighted(self.components(z0, z1))

    def extra_repr(self) -> str:
        return (
            f"sim_weight={self.sim_weight}, var_weight={self.var_weight}, "
            f"cov_weight={self.cov_weight}, eps={self.eps}"
        )
