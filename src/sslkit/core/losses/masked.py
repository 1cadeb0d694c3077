"""Masked-reconstruction loss: error on the masked patches only (MAE-style).

Paper: He et al., "Masked Autoencoders Are Scalable Vision Learners",
arXiv:2111.06377.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn


def normalize_patches(target: Tensor, eps: float = 1e-6) -> Tensor:
    """Standardise each patch (…, P) by its own mean and unbiased variance, as MAE's norm_pix_loss."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / torch.sqrt(var + eps)


def masked_mean(per_patch: Tensor, mask: Tensor) -> Tensor:
    """Mean of per_patch (B, N) over the positions where mask (B, N) is 1/True."""
    weights = mask.to(per_patch.dtype)
    return (per_patch * weights).sum() / weights.sum()


class MaskedReconstructionLoss(nn.Module):
    """Reconstruction error averaged over masked positions only (MAE, arXiv:2111.06377).

    kind: "mse" (MAE's choice) or "l1"; each patch's error is the mean over its P values.
    norm_pix: compare against per-patch-normalised targets (MAE's better-performing variant).
    """

    def __init__(self, kind: Literal["mse", "l1"] = "mse", norm_pix: bool = False, eps: float = 1e-6) -> None:
        super().__init__()
        if kind not in ("mse", "l1"):
            raise ValueError(f"MaskedReconstructionLoss kind must be 'mse' or 'l1', got {kind!r}")
        self.kind = kind
        self.norm_pix = norm_pix
        self.eps = eps

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """pred, target: (B, N, P) patches; mask: (B, N), 1/True where a patch was hidden -> scalar."""
        if pred.dim() != 3 or pred.shape != target.shape:
            raise ValueError(
                f"MaskedReconstructionLoss expects pred and target of the same shape (B, N, P); "
                f"got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        if mask.shape != pred.shape[:2]:
            raise ValueError(
                f"MaskedReconstructionLoss expects mask of shape (B, N) = {tuple(pred.shape[:2])}; "
                f"got {tuple(mask.shape)}"
            )
        if not bool(mask.any()):
            raise ValueError("MaskedReconstructionLoss got a mask with no masked position; nothing to reconstruct")
        if self.norm_pix:
            target = normalize_patches(target, self.eps)
        diff = pred - target
        per_patch = (diff.pow(2) if self.kind == "mse" else diff.abs()).mean(dim=-1)
        return masked_mean(per_patch, mask)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, norm_pix={self.norm_pix}"
