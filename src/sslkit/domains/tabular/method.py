"""T-JEPA (augmentation-free JEPA on feature subsets) and SCARF (corruption + NT-Xent), with the recipe schema.

Both methods take a batch {"num": (B, Dn) float, "miss": (B, Dn) uint8, "cat": (B, Dc) int64}
and return (loss, metrics). `encoder` is what gets exported: the EMA target encoder for
T-JEPA (its pooled output is the representation), the MLP for SCARF.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from sslkit.core.ema import ema_update, make_target, momentum_schedule
from sslkit.core.export import encoder_spec
from sslkit.core.losses.nt_xent import NTXentLoss
from sslkit.core.recipes import Recipe, Section
from sslkit.domains.tabular.model import ScarfEncoder, TJepaEncoder, TJepaPredictor
from sslkit.domains.tabular.transforms import jepa_masks, scarf_corrupt


class TabularData(Section):
    """How columns are typed and scaled (fitted on the pretraining table, saved in the run)."""

    scaling: Literal["quantile", "standard", "robust"] = "quantile"
    max_categories: int = Field(100, ge=2)       # more distinct text values: excluded as free text (or top-K with --categorical)
    sample_rows: int = Field(100_000, ge=100)    # numeric values sampled (uniformly) to fit the scaling
    n_quantiles: int = Field(1000, ge=10)
    batch_rows: int = Field(65_536, ge=1024)     # rows per streamed record batch


class TJepaModel(Section):
    """T-JEPA encoder and predictor (card: tuned Jannis config)."""

    dim: int = 64
    depth: int = 16
    heads: int = 2
    ffn: int = 64
    n_reg: int = 1                     # regularisation ([CLS]-like) tokens
    dropout: float = 0.0
    pool: Literal["mean", "mean_reg", "flatten"] = "mean_reg"   # exported representation (NF in the card)
    num_bins: int = Field(0, ge=0)     # 0: value × vector (card); k ≥ 2: piecewise-linear encoding over k bins
    bin_edges: Literal["normal", "data"] = "normal"   # shared normal-quantile bins, or per feature from the table
    pred_dim: int = 16
    pred_depth: int = 16
    pred_heads: int = 4


class TJepaMasks(Section):
    context: tuple[float, float] = (0.136, 0.368)   # fraction of features in the context subset
    target: tuple[float, float] = (0.156, 0.622)    # fraction of features per target subset
    n_targets: int = Field(4, ge=1)


class TJepaLoss(Section):
    """What the predictor regresses. `target_norm: batch` standardises every target token element across the
    rows of the batch (data2vec's target normalisation, applied over rows): the per-feature constant that a
    collapsing encoder drifts to is removed, so only what tells rows apart is left to predict (NF in the card)."""

    target_norm: Literal["none", "batch"] = "none"


class TJepaEMA(Section):
    start: float = Field(0.996, ge=0, le=1)         # momentum, linear to `end` over train.steps
    end: float = Field(1.0, ge=0, le=1)


class ScarfConfig(Section):
    """SCARF (Bahri et al. 2022): paper defaults."""

    corruption: float = Field(0.6, gt=0, lt=1)
    hidden: int = 256
    depth: int = 4
    head_depth: int = 2
    cat_dim: int = 8
    temperature: float = Field(1.0, gt=0)


class TabularRecipe(Recipe):
    """`model`, `masks` and `ema` configure t-jepa; `scarf` configures scarf."""

    method: Literal["t-jepa", "scarf"] = "t-jepa"
    data: TabularData = Field(default_factory=TabularData)
    model: TJepaModel = Field(default_factory=TJepaModel)
    masks: TJepaMasks = Field(default_factory=TJepaMasks)
    ema: TJepaEMA = Field(default_factory=TJepaEMA)
    loss: TJepaLoss = Field(default_factory=TJepaLoss)
    scarf: ScarfConfig = Field(default_factory=ScarfConfig)


RECIPE_SCHEMA = TabularRecipe


class TJepa(nn.Module):
    """Context encoder sees a feature subset; the predictor guesses the EMA target encoder's
    tokens of T other subsets from it; loss = MSE in latent space. No augmentation."""

    def __init__(self, n_num: int, cardinalities: list[int], model: TJepaModel, masks: TJepaMasks, ema: TJepaEMA,
                 loss: TJepaLoss | None = None) -> None:
        super().__init__()
        self.kwargs = dict(n_num=n_num, cardinalities=list(cardinalities), dim=model.dim, depth=model.depth,
                           heads=model.heads, ffn=model.ffn, n_reg=model.n_reg, dropout=model.dropout, pool=model.pool,
                           num_bins=model.num_bins)
        if model.bin_edges != "normal":   # only when set, so encoders exported before the option load unchanged
            self.kwargs["bin_edges"] = model.bin_edges
        self.masks, self.ema, self.target_norm = masks, ema, (loss or TJepaLoss()).target_norm
        self.context_encoder = TJepaEncoder(**self.kwargs)
        self.encoder = make_target(self.context_encoder)          # EMA target: no gradient, exported
        self.predictor = TJepaPredictor(self.context_encoder.n_features, model.dim, model.pred_dim, model.pred_depth,
                                        model.pred_heads, n_reg=model.n_reg, dropout=model.dropout)
        self.momentum = ema.start

    def fit_bin_edges(self, num: np.ndarray, miss: np.ndarray) -> None:
        """Per-feature numeric bins from the pretraining rows (model.bin_edges=data), in both encoders."""
        for enc in (self.context_encoder, self.encoder):
            enc.tokenizer.fit_edges(num, miss)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor | float]]:
        num, miss, cat = batch["num"], batch["miss"], batch["cat"]
        ctx_idx, tgt_idx = jepa_masks(self.context_encoder.n_features, self.masks.context, self.masks.target,
                                      self.masks.n_targets)
        ctx_idx, tgt_idx = ctx_idx.to(num.device), tgt_idx.to(num.device)
        r = self.context_encoder.n_reg
        with torch.no_grad():
            full = self.encoder.tokens(num, miss, cat)                  # (B, R + D, dim)
            target = full[:, r + tgt_idx].transpose(0, 1).float()      # (T, B, k_t, dim)
            spread = target.std(dim=1).mean()     # the targets' spread across rows, before any normalisation: the collapse check
            if self.target_norm == "batch":
                target = (target - target.mean(1, keepdim=True)) * torch.rsqrt(target.var(1, keepdim=True, unbiased=False) + 1e-6)
        ctx = self.context_encoder.tokens(num, miss, cat, keep=ctx_idx)
        pred = self.predictor(ctx, ctx_idx, tgt_idx)                    # (T, B, k_t, dim)
        loss = F.mse_loss(pred.float(), target)
        return loss, {"target_std": spread, "ema": self.momentum}

    @torch.no_grad()
    def after_step(self, step: int, total: int) -> None:
        """EMA update of the target encoder; momentum rises linearly (I-JEPA/T-JEPA)."""
        self.momentum = momentum_schedule(step, total, self.ema.start, self.ema.end, kind="linear")
        ema_update(self.encoder, self.context_encoder, self.momentum)

    def encoder_spec(self) -> dict:
        return encoder_spec("tabular", "t-jepa", **self.kwargs)


class Scarf(nn.Module):
    """Anchor = the row, positive = the row with a `corruption` fraction of features resampled from
    their marginals; NT-Xent on a projection head (negatives gathered across ranks)."""

    def __init__(self, n_num: int, cardinalities: list[int], cfg: ScarfConfig) -> None:
        super().__init__()
        self.kwargs = dict(n_num=n_num, cardinalities=list(cardinalities), hidden=cfg.hidden, depth=cfg.depth,
                           cat_dim=cfg.cat_dim)
        self.corruption = cfg.corruption
        self.encoder = ScarfEncoder(**self.kwargs)
        head: list[nn.Module] = []
        for i in range(cfg.head_depth):
            head += [nn.Linear(cfg.hidden, cfg.hidden)] + ([nn.ReLU()] if i < cfg.head_depth - 1 else [])
        self.head = nn.Sequential(*head)
        self.loss = NTXentLoss(temperature=cfg.temperature, gather_distributed=True)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor | float]]:
        num, miss, cat = batch["num"], batch["miss"], batch["cat"]
        z0 = self.head(self.encoder(num, miss, cat))
        z1 = self.head(self.encoder(*scarf_corrupt(num, miss, cat, self.corruption)))
        loss = self.loss(z0.float(), z1.float())
        return loss, {"pos_cos": F.cosine_similarity(z0.float(), z1.float()).mean().detach()}

    def encoder_spec(self) -> dict:
        return encoder_spec("tabular", "scarf", **self.kwargs)


def build_method(recipe: TabularRecipe, n_num: int, cardinalities: list[int]) -> nn.Module:
    if recipe.method == "t-jepa":
        return TJepa(n_num, cardinalities, recipe.model, recipe.masks, recipe.ema, recipe.loss)
    return Scarf(n_num, cardinalities, recipe.scarf)
