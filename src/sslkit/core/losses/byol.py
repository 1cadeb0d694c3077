"""BYOL's regression loss: negative cosine similarity to a stop-gradient target.

Paper: Grill et al., "Bootstrap Your Own Latent: A New Approach to
Self-Supervised Learning", arXiv:2006.07733.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """mean_i (2 − 2·cos(p_i, z_i)) for online predictions p and targets z (N, D).

    Equals the squared distance of the L2-normalised vectors. z is detached:
    the target branch gets no gradient (it is updated by EMA instead).
    """
    return (2.0 - 2.0 * F.cosine_similarity(p, z.detach(), dim=-1)).mean()


class NegativeCosineLoss(nn.Module):
    """BYOL loss (arXiv:2006.07733): 2 − 2·cos(p, sg(z)), averaged over the batch.

    Symmetrise in the method: loss(p0, z1) + loss(p1, z0).
    """

    def forward(self, p: Tensor, z: Tensor) -> Tensor:
        """p: (N, D) online predictions; z: (N, D) target projections -> scalar loss."""
        if p.dim() != 2 or p.shape != z.shape:
            raise ValueError(
                f"BYOL loss expects predictions and targets of the same shape (N, D); "
                f"got {tuple(p.shape)} and {tuple(z.shape)}"
            )
        return byol_loss(p, z)
