"""Projection, predictor and DINO heads: small MLPs that sit on top of an encoder.

Heads are trained with the SSL objective and discarded afterwards; the encoder's
pre-projection features are usually the better general representation
(see METHODS.md, "Projection head").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm


class ProjectionHead(nn.Module):
    """MLP (B, in_dim) -> (B, out_dim): num_layers Linear layers, BN + ReLU between them.

    SimCLR/VICReg/Barlow-style projector. Linear layers followed by BatchNorm
    carry no bias (BN's shift replaces it). last_bn adds a BatchNorm without
    affine parameters after the last layer (SimCLR v2, MoCo v3).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int = 3,
        batch_norm: bool = True,
        last_bn: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"ProjectionHead needs num_layers >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(width, hidden_dim, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            width = hidden_dim
        layers.append(nn.Linear(width, out_dim, bias=not last_bn))
        if last_bn:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, in_dim) -> (B, out_dim)."""
        return self.layers(x)


class PredictorHead(nn.Module):
    """BYOL predictor (B, in_dim) -> (B, out_dim): Linear-BN-ReLU-Linear, online branch only."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, in_dim) -> (B, out_dim)."""
        return self.layers(x)


class DINOHead(nn.Module):
    """DINO head (B, in_dim) -> (B, out_dim) logits (Caron et al., arXiv:2104.14294).

    MLP with GELU to a bottleneck, L2 normalisation, then a weight-normalised
    Linear without bias. norm_last_layer fixes the weight-norm magnitude g to 1,
    so the last layer only chooses directions (DINO's default, more stable).
    use_bn: DINO's use_bn_in_head, a BatchNorm after each hidden Linear — when a fresh encoder maps every input to
    nearly one vector (logits differing by less than the teacher temperature), batch statistics take the common
    part out so the teacher's targets are not uniform (pathology's dino-tiny: docs/pathology.md).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        norm_last_layer: bool = True,
        use_bn: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"DINOHead needs num_layers >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(width, hidden_dim), *([nn.BatchNorm1d(hidden_dim)] if use_bn else []), nn.GELU()]
            width = hidden_dim
        layers.append(nn.Linear(width, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        self.apply(self._init_linear)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(not norm_last_layer)

    @staticmethod
    def _init_linear(module: nn.Module) -> None:
        """Truncated-normal weights (std 0.02) and zero bias, as in DINO."""
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, in_dim) -> (B, out_dim)."""
        x = F.normalize(self.mlp(x), dim=-1)
        return self.last_layer(x)
