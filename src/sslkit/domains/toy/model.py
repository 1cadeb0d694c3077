"""A small MLP encoder (registered for `load_encoder`)."""
from __future__ import annotations

from typing import Callable

from torch import nn


class MLPEncoder(nn.Module):
    """(B, in_dim) -> (B, out_dim)."""

    def __init__(self, in_dim: int, hidden_dim: int = 128, out_dim: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, out_dim))

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.net(x)


ENCODERS: dict[str, Callable[..., nn.Module]] = {"mlp": MLPEncoder}
