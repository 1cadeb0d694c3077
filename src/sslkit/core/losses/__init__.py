"""Self-supervised losses, one module each; every loss is an nn.Module with the paper's defaults.

`LOSSES` maps a recipe's loss name to its class (a plain dict, no registration magic).
"""
from __future__ import annotations

from torch import nn

from sslkit.core.losses.barlow_twins import BarlowTwinsLoss, barlow_twins, cross_correlation
from sslkit.core.losses.byol import NegativeCosineLoss, byol_loss
from sslkit.core.losses.dec import DECLoss, kl_divergence, student_t_assignment, target_distribution
from sslkit.core.losses.dino import DINOLoss, dino_cross_entropy, sinkhorn_knopp
from sslkit.core.losses.ibot import IBOTPatchLoss
from sslkit.core.losses.koleo import KoLeoLoss, koleo
from sslkit.core.losses.masked import MaskedReconstructionLoss, masked_mean, normalize_patches
from sslkit.core.losses.matryoshka import MatryoshkaLoss
from sslkit.core.losses.nt_xent import NTXentLoss, nt_xent
from sslkit.core.losses.vicreg import VICRegLoss, covariance, invariance, variance

LOSSES: dict[str, type[nn.Module]] = {
    "nt_xent": NTXentLoss,
    "vicreg": VICRegLoss,
    "barlow_twins": BarlowTwinsLoss,
    "byol": NegativeCosineLoss,
    "dino": DINOLoss,
    "ibot": IBOTPatchLoss,
    "koleo": KoLeoLoss,
    "masked_reconstruction": MaskedReconstructionLoss,
    "dec": DECLoss,
    "matryoshka": MatryoshkaLoss,
}

__all__ = [
    "LOSSES",
    "BarlowTwinsLoss",
    "DECLoss",
    "DINOLoss",
    "IBOTPatchLoss",
    "KoLeoLoss",
    "MaskedReconstructionLoss",
    "MatryoshkaLoss",
    "NTXentLoss",
    "NegativeCosineLoss",
    "VICRegLoss",
    "barlow_twins",
    "byol_loss",
    "covariance",
    "cross_correlation",
    "dino_cross_entropy",
    "invariance",
    "kl_divergence",
    "koleo",
    "masked_mean",
    "normalize_patches",
    "nt_xent",
    "sinkhorn_knopp",
    "student_t_assignment",
    "target_distribution",
    "variance",
]
