"""Deep Embedded Clustering: Student-t soft assignments sharpened into a self-training target.

Paper: Xie, Girshick, Farhadi, "Unsupervised Deep Embedding for Clustering
Analysis", arXiv:1511.06335.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def student_t_assignment(z: Tensor, centroids: Tensor, alpha: float = 1.0) -> Tensor:
    """Soft assignment q (N, K) of embeddings z (N, D) to centroids (K, D); rows sum to 1.

    q_ij ∝ (1 + ‖z_i − μ_j‖² / α)^(−(α+1)/2), a Student-t kernel with α degrees of freedom.
    """
    if z.dim() != 2 or centroids.dim() != 2 or z.shape[1] != centroids.shape[1]:
        raise ValueError(
            f"student_t_assignment expects z (N, D) and centroids (K, D) with the same D; "
            f"got {tuple(z.shape)} and {tuple(centroids.shape)}"
        )
    # ‖z‖² − 2 z·μ + ‖μ‖² as one matmul: far faster than cdist on CPU; clamp guards rounding below 0
    sq_dist = (z.pow(2).sum(1, keepdim=True) - 2 * z @ centroids.T + centroids.pow(2).sum(1)).clamp_min(0)
    kernel = (1.0 + sq_dist / alpha).pow(-(alpha + 1.0) / 2.0)
    return kernel / kernel.sum(dim=1, keepdim=True)


def target_distribution(q: Tensor) -> Tensor:
    """Sharpened target p (N, K): p_ij ∝ q_ij² / f_j with cluster frequency f_j = Σ_i q_ij.

    Squaring favours confident assignments; dividing by f_j keeps large clusters
    from absorbing everything.
    """
    weight = q.pow(2) / q.sum(dim=0, keepdim=True)
    return weight / weight.sum(dim=1, keepdim=True)


def kl_divergence(p: Tensor, q: Tensor, eps: float = 1e-12) -> Tensor:
    """KL(P‖Q) summed over clusters and averaged over the N rows ("batchmean")."""
    return (p * (torch.log(p.clamp_min(eps)) - torch.log(q.clamp_min(eps)))).sum() / q.shape[0]


class DECLoss(nn.Module):
    """DEC clustering loss KL(P‖Q) (arXiv:1511.06335).

    forward(q) builds the target P from q itself (detached), as methods that
    refresh the target every step do; pass p to use a target held fixed for
    several steps (DEC's original schedule).
    """

    def forward(self, q: Tensor, p: Tensor | None = None) -> Tensor:
        """q: (N, K) soft assignments (rows sum to 1); p: optional (N, K) target -> scalar."""
        if q.dim() != 2:
            raise ValueError(f"DECLoss expects soft assignments q of shape (N, K); got {tuple(q.shape)}")
        if p is None:
            p = target_distribution(q.detach())
        elif p.shape != q.shape:
            raise ValueError(f"DECLoss expects target p of the same shape as q {tuple(q.shape)}; got {tuple(p.shape)}")
        return kl_divergence(p.detach(), q)
