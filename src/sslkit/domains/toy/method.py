"""VICReg on two augmented views of synthetic vectors — the loop's test method."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from sslkit.core.export import encoder_spec
from sslkit.core.losses.vicreg import VICRegLoss
from sslkit.core.recipes import Recipe, Section
from sslkit.domains.toy.model import MLPEncoder


class ToyData(Section):
    n: int = 2048
    dim: int = 32
    classes: int = 8
    seed: int = 0
    noise: float = 0.3
    drop: float = 0.2


class ToyModel(Section):
    hidden_dim: int = 128
    out_dim: int = 32
    proj_dim: int = 128


class ToyLoss(Section):
    sim_weight: float = 25.0
    var_weight: float = 25.0
    cov_weight: float = 1.0


class ToyRecipe(Recipe):
    method: Literal["vicreg"] = "vicreg"
    data: ToyData = Field(default_factory=ToyData)
    model: ToyModel = Field(default_factory=ToyModel)
    loss: ToyLoss = Field(default_factory=ToyLoss)


RECIPE_SCHEMA = ToyRecipe


class ToyVICReg(nn.Module):
    """forward((view0, view1)) -> (loss, metrics); the loss gathers across ranks."""

    def __init__(self, in_dim: int, model: ToyModel, loss: ToyLoss) -> None:
        super().__init__()
        self.in_dim, self.cfg = in_dim, model
        self.encoder = MLPEncoder(in_dim, model.hidden_dim, model.out_dim)
        self.projector = nn.Sequential(nn.Linear(model.out_dim, model.proj_dim), nn.GELU(),
                                       nn.Linear(model.proj_dim, model.proj_dim))
        self.loss = VICRegLoss(sim_weight=loss.sim_weight, var_weight=loss.var_weight, cov_weight=loss.cov_weight,
                               gather_distributed=True)

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z0 = self.projector(self.encoder(batch[0])).float()
        z1 = self.projector(self.encoder(batch[1])).float()
        loss = self.loss(z0, z1)
        return loss, {"std": z0.std(0).mean().detach()}

    def encoder_spec(self) -> dict:
        return encoder_spec("toy", "mlp", in_dim=self.in_dim, hidden_dim=self.cfg.hidden_dim, out_dim=self.cfg.out_dim)
