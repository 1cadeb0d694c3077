"""NT-Xent (normalised temperature-scaled cross-entropy), the SimCLR / InfoNCE loss.

Paper: Chen et al., "A Simple Framework for Contrastive Learning of Visual
Representations" (SimCLR), arXiv:2002.05709.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from sslkit.core.distributed import gather_with_grad


def _check_pair(z0: Tensor, z1: Tensor) -> None:
    if z0.dim() != 2 or z0.shape != z1.shape:
        raise ValueError(
            f"NT-Xent expects two embeddings of the same shape (N, D); got {tuple(z0.shape)} and {tuple(z1.shape)}"
        )


def _nt_xent_rows(z0: Tensor, z1: Tensor, k0: Tensor, k1: Tensor, offset: int, temperature: float) -> Tensor:
    """Mean NT-Xent of the 2n query rows (z0, z1) against the 2m keys (k0, k1).

    All inputs are L2-normalised. The queries are rows `offset .. offset+n` of
    k0 and k1 (the local part of a gathered batch; offset 0 and k = z without
    gathering). Each query's positive is its other view; its own key is removed
    from the softmax, so the denominator holds 2m - 1 terms.
    """
    n, m = z0.shape[0], k0.shape[0]
    queries = torch.cat([z0, z1])
    keys = torch.cat([k0, k1])
    logits = queries @ keys.T / temperature  # (2n, 2m)
    local = torch.arange(n, device=z0.device) + offset
    own = torch.cat([local, local + m])
    positive = torch.cat([local + m, local])
    rows = torch.arange(2 * n, device=z0.device)
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[rows, own] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    return F.cross_entropy(logits, positive)


def nt_xent(z0: Tensor, z1: Tensor, temperature: float = 0.5) -> Tensor:
    """NT-Xent of two views z0, z1 (N, D): row i of z0 and row i of z1 are positives.

    Cosine similarities over all 2N embeddings; every other embedding in the
    batch is a negative. Identical embeddings give log(2N - 1).
    """
    _check_pair(z0, z1)
    z0, z1 = F.normalize(z0, dim=1), F.normalize(z1, dim=1)
    return _nt_xent_rows(z0, z1, z0, z1, 0, temperature)


class NTXentLoss(nn.Module):
    """NT-Xent / InfoNCE over 2N views (SimCLR, arXiv:2002.05709).

    temperature: 0.5 as in MONAI's contrastive loss; SimCLR baselines use 0.1.
    gather_distributed: take negatives from all ranks (opt-in; a no-op unless
    torch.distributed is initialised). Each rank scores its own rows against
    the global batch; gradients flow back to the rank that owns each embedding.
    """

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = False) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"NT-Xent temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, z0: Tensor, z1: Tensor) -> Tensor:
        """z0, z1: (N, D) embeddings of two views of the same N samples -> scalar loss."""
        _check_pair(z0, z1)
        z0, z1 = F.normalize(z0, dim=1), F.normalize(z1, dim=1)
        if self.gather_distributed and dist.is_initialized() and dist.get_world_size() > 1:
            k0, k1 = gather_with_grad(z0), gather_with_grad(z1)
            offset = dist.get_rank() * z0.shape[0]  # equal per-rank batch sizes, as DDP sharding gives
            return _nt_xent_rows(z0, z1, k0, k1, offset, self.temperature)
        return _nt_xent_rows(z0, z1, z0, z1, 0, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}"
