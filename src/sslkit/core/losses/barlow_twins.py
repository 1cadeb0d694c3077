"""Barlow Twins: drive the cross-correlation of two views towards the identity.

Paper: Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction", arXiv:2103.03230.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from sslkit.core.distributed import gather_with_grad


def cross_correlation(z0: Tensor, z1: Tensor, eps: float = 1e-5) -> Tensor:
    """(D, D) cross-correlation of z0, z1 (N, D), each standardised over the batch.

    Standardisation uses the biased std (as BatchNorm without affine does), so
    c_ii = 1 exactly when z0 == z1.
    """
    n = z0.shape[0]
    a = (z0 - z0.mean(dim=0)) / torch.sqrt(z0.var(dim=0, unbiased=False) + eps)
    b = (z1 - z1.mean(dim=0)) / torch.sqrt(z1.var(dim=0, unbiased=False) + eps)
    return a.T @ b / n


def barlow_twins(c: Tensor, lambda_offdiag: float = 5e-3) -> Tensor:
    """Σ_i (1 − c_ii)² + λ Σ_{i≠j} c_ij² for a (D, D) cross-correlation c."""
    diagonal = torch.diagonal(c)
    on = (1.0 - diagonal).pow(2).sum()
    off = c.pow(2).sum() - diagonal.pow(2).sum()
    return on + lambda_offdiag * off


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins loss (arXiv:2103.03230); λ = 5e-3 as in the paper.

    gather_distributed: standardise and correlate over the batch gathered from
    all ranks (opt-in; a no-op unless torch.distributed is initialised).
    """

    def __init__(self, lambda_offdiag: float = 5e-3, eps: float = 1e-5, gather_distributed: bool = False) -> None:
        super().__init__()
        self.lambda_offdiag = lambda_offdiag
        self.eps = eps
        self.gather_distributed = gather_distributed

    def forward(self, z0: Tensor, z1: Tensor) -> Tensor:
        """z0, z1: (N, D) projector outputs of two views, N >= 2 -> scalar loss."""
        if z0.dim() != 2 or z0.shape != z1.shape:
            raise ValueError(
                f"Barlow Twins expects two embeddings of the same shape (N, D); "
                f"got {tuple(z0.shape)} and {tuple(z1.shape)}"
            )
        if self.gather_distributed and dist.is_initialized():
            z0, z1 = gather_with_grad(z0), gather_with_grad(z1)
        if z0.shape[0] < 2:
            raise ValueError(f"Barlow Twins standardises over the batch and needs N >= 2; got N={z0.shape[0]}")
        # batch statistics and the D x D correlation in float32: bf16 would blur c_ii near 1
        dtype = torch.promote_types(z0.dtype, torch.float32)
        with torch.autocast(z0.device.type, enabled=False):
            return barlow_twins(cross_correlation(z0.to(dtype), z1.to(dtype), self.eps), self.lambda_offdiag)

    def extra_repr(self) -> str:
        return f"lambda_offdiag={self.lambda_offdiag}"
