"""Tabular encoders: the T-JEPA feature-token transformer, its predictor, and SCARF's MLP.

Every encoder takes the preprocessed row as three tensors (see `preprocess.py`):
    num (B, Dn) float, miss (B, Dn) {0,1}, cat (B, Dc) int64 codes
and returns (B, out_dim). `ENCODERS` maps the exported kind to its builder.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal(n: int, dim: int) -> Tensor:
    """(n, dim) fixed sine/cosine position table (Vaswani et al.)."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(n, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table


def normal_edges(num_bins: int, bound: float = 5.2) -> Tensor:
    """(num_bins + 1,) bin edges at the standard normal's quantiles i/num_bins, ends clipped to ±bound.

    After quantile-normal scaling (the default) these are equal-frequency bins of every
    continuous feature, fitted on the pretraining table through its saved quantiles.
    """
    u = torch.linspace(0.0, 1.0, num_bins + 1, dtype=torch.float64)
    return (math.sqrt(2.0) * torch.erfinv(2 * u - 1)).clamp(-bound, bound).float()


def data_edges(values: np.ndarray, num_bins: int) -> np.ndarray:
    """(num_bins + 1,) increasing bin edges of one numeric feature, fitted on its (scaled, non-missing) values.

    Half the edges are quantiles of the rows (equal-frequency bins), half are quantiles of the
    feature's *distinct* values. The second half matters for columns such as Adult's capital_gain:
    92% zeros and ~120 distinct non-zero amounts, several of which decide the label almost alone.
    Row quantiles collapse onto the zero and leave the amounts in one or two bins; quantiles of the
    distinct values give every amount (or every few) its own bin, so the piecewise-linear code is
    a thermometer code of the amount — which a linear map can turn into any step function of it.
    Duplicates are removed; unused edges are placed below the minimum (bins that are always full).
    """
    v = np.sort(values[np.isfinite(values)].astype(np.float64))
    if v.size == 0:
        return normal_edges(num_bins).numpy()
    half = num_bins // 2
    edges = np.unique(np.concatenate([np.quantile(v, np.linspace(0.0, 1.0, half + 1)),
                                      np.quantile(np.unique(v), np.linspace(0.0, 1.0, num_bins - half + 1))]))
    if len(edges) > num_bins + 1:
        edges = edges[np.round(np.linspace(0, len(edges) - 1, num_bins + 1)).astype(int)]
    elif len(edges) < num_bins + 1:
        pad = num_bins + 1 - len(edges)
        edges = np.concatenate([edges[0] - 1e-3 * np.arange(pad, 0, -1), edges])
    return edges.astype(np.float32)


def piecewise_linear(x: Tensor, edges: Tensor) -> Tensor:
    """Piecewise-linear encoding (Gorishniy et al. 2022, "On Embeddings for Numerical Features").

    x (B, n), edges (num_bins + 1,) shared or (n, num_bins + 1) per feature -> (B, n, num_bins): bin t holds
    0 below it, 1 above it and the position inside it; the first bin extends linearly below, the last above.
    """
    lo, width = edges[..., :-1], (edges[..., 1:] - edges[..., :-1]).clamp_min(1e-6)
    v = (x.unsqueeze(-1) - lo) / width
    first, mid, last = v[..., :1].clamp(max=1.0), v[..., 1:-1].clamp(0.0, 1.0), v[..., -1:].clamp(min=0.0)
    return torch.cat([first, mid, last], dim=-1) if v.shape[-1] > 1 else v


class FeatureTokenizer(nn.Module):
    """FT-Transformer tokens: numeric value × w_j + b_j (+ m_j if missing); category embedding + b_j.

    With `num_bins` ≥ 2 a numeric value is first expanded by its piecewise-linear encoding over
    `num_bins` normal-quantile bins and mapped by a per-feature (num_bins, dim) matrix (one einsum
    for all features): the token can then bend with the value, which plain value × w_j cannot.
    `bin_edges` "normal" shares those bins across features; "data" gives every feature its own
    edges (`data_edges`), set by `fit_edges` on the pretraining rows and saved with the weights.
    (num, miss, cat) -> (B, Dn + Dc, dim), with a sinusoidal position per feature added.
    """

    def __init__(self, n_num: int, cardinalities: list[int], dim: int, num_bins: int = 0,
                 bin_edges: str = "normal") -> None:
        super().__init__()
        if num_bins == 1 or num_bins < 0:
            raise ValueError(f"num_bins must be 0 (linear numeric tokens) or at least 2, got {num_bins}")
        if bin_edges not in ("normal", "data"):
            raise ValueError(f"bin_edges must be normal or data, got {bin_edges!r}")
        self.n_num, self.n_cat, self.num_bins, self.bin_edges = n_num, len(cardinalities), num_bins, bin_edges
        init = 1 / math.sqrt(dim)
        if num_bins:
            self.num_weight = nn.Parameter(torch.empty(n_num, num_bins, dim).uniform_(-init, init))
            if bin_edges == "data":   # per feature, fitted by fit_edges; persistent: it travels with the weights
                self.register_buffer("edges", normal_edges(num_bins).repeat(n_num, 1))
            else:
                self.register_buffer("edges", normal_edges(num_bins), persistent=False)
        else:
            self.num_weight = nn.Parameter(torch.empty(n_num, dim).uniform_(-init, init))
        self.num_missing = nn.Parameter(torch.empty(n_num, dim).uniform_(-init, init))
        self.bias = nn.Parameter(torch.empty(n_num + self.n_cat, dim).uniform_(-init, init))
        self.cat_embed = nn.Embedding(max(1, sum(cardinalities)), dim)
        nn.init.uniform_(self.cat_embed.weight, -init, init)
        offsets = torch.tensor([0, *cardinalities[:-1]], dtype=torch.long).cumsum(0) if cardinalities else torch.zeros(0, dtype=torch.long)
        self.register_buffer("cat_offsets", offsets, persistent=False)
        self.register_buffer("pos", sinusoidal(n_num + self.n_cat, dim), persistent=False)

    @torch.no_grad()
    def fit_edges(self, num: np.ndarray, miss: np.ndarray) -> None:
        """Per-feature bin edges from preprocessed rows (missing values left out); only with bin_edges="data"."""
        if not self.num_bins or self.bin_edges != "data":
            return
        if len(num) > 200_000:   # an evenly spaced subset is plenty for quantiles (and keeps memmaps cheap)
            take = np.linspace(0, len(num) - 1, 200_000).astype(np.int64)
            num, miss = num[take], miss[take]
        for j in range(self.n_num):
            col = np.where(np.asarray(miss[:, j]).astype(bool), np.nan, np.asarray(num[:, j], dtype=np.float64))
            self.edges[j] = torch.from_numpy(data_edges(col, self.num_bins)).to(self.edges)

    def forward(self, num: Tensor, miss: Tensor, cat: Tensor) -> Tensor:
        parts = []
        if self.n_num:
            if self.num_bins:
                values = torch.einsum("bnk,nkd->bnd", piecewise_linear(num, self.edges).to(self.num_weight.dtype),
                                      self.num_weight)
            else:
                values = num.unsqueeze(-1) * self.num_weight
            parts.append(values + miss.unsqueeze(-1).to(values.dtype) * self.num_missing)
        if self.n_cat:
            parts.append(self.cat_embed(cat + self.cat_offsets))
        return torch.cat(parts, dim=1) + self.bias + self.pos


def attention(q: Tensor, k: Tensor, v: Tensor, dropout: float = 0.0) -> Tensor:
    """Softmax attention as two batched matmuls. (B, H, T, e) -> (B, H, T, e).

    Tables give short sequences (T = features + registers, ~15 on Adult), where the CPU flash
    kernel of `F.scaled_dot_product_attention` is tiled for long sequences; plain bmm + softmax
    gives the same values and made a forward+backward of the card config ~16% faster on 2 cores.
    The scores are built transposed, (keys, queries), so the softmax runs over the second-to-last
    dimension: PyTorch's CPU softmax over a short last dimension (13-15 here) is 3-4× slower than
    over an inner one, where it vectorises across the queries (a whole T-JEPA step: 0.90 -> 0.63 s).
    """
    scores_t = torch.matmul(k, q.transpose(-2, -1)) * (q.shape[-1] ** -0.5)  # (B, H, keys, queries)
    weights_t = scores_t.softmax(dim=-2)
    if dropout:
        weights_t = F.dropout(weights_t, dropout)
    return torch.matmul(weights_t.transpose(-2, -1), v)


class Block(nn.Module):
    """Pre-LN transformer block (fused QKV, bmm attention, ReLU FFN). (B, T, dim) -> (B, T, dim)."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, ffn), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, last: int = 0) -> Tensor:
        """`last` > 0: only the last `last` positions attend (to all) and come out: (B, last, dim)."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if last:
            q, x = q[:, :, -last:], x[:, -last:]
        o = attention(q, k, v, self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(o.transpose(1, 2).reshape(b, x.shape[1], d)))
        return x + self.drop(self.ff(self.norm2(x)))


def _layers(dim: int, depth: int, heads: int, ffn: int, dropout: float) -> nn.ModuleList:
    return nn.ModuleList(Block(dim, heads, ffn, dropout) for _ in range(depth))


class TJepaEncoder(nn.Module):
    """Feature tokens + register tokens -> transformer -> LayerNorm–Linear–LayerNorm (T-JEPA card).

    `tokens(num, miss, cat, keep)` returns (B, R + k, dim) for the kept feature indices `keep`
    (all features when None); `forward` pools the full sequence to (B, out_dim):
    "mean" = mean of feature tokens (dim), "mean_reg" = that plus the register tokens
    (dim·(1+R)), "flatten" = all feature tokens ((Dn+Dc)·dim, the reference's downstream input).
    """

    def __init__(self, n_num: int, cardinalities: list[int], dim: int = 64, depth: int = 16, heads: int = 2,
                 ffn: int = 64, n_reg: int = 1, dropout: float = 0.0, pool: str = "mean_reg", num_bins: int = 0,
                 bin_edges: str = "normal") -> None:
        super().__init__()
        if pool not in ("mean", "mean_reg", "flatten"):
            raise ValueError(f"pool must be mean, mean_reg or flatten, got {pool!r}")
        self.n_features, self.dim, self.n_reg, self.pool = n_num + len(cardinalities), dim, n_reg, pool
        self.tokenizer = FeatureTokenizer(n_num, cardinalities, dim, num_bins, bin_edges)
        self.reg = nn.Parameter(torch.randn(n_reg, dim) * 0.02)
        self.blocks = _layers(dim, depth, heads, ffn, dropout)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.LayerNorm(dim))

    @property
    def out_dim(self) -> int:
        return {"mean": self.dim, "mean_reg": self.dim * (1 + self.n_reg), "flatten": self.dim * self.n_features}[self.pool]

    def tokens(self, num: Tensor, miss: Tensor, cat: Tensor, keep: Tensor | None = None) -> Tensor:
        x = self.tokenizer(num, miss, cat)
        if keep is not None:
            x = x[:, keep]
        x = torch.cat([self.reg.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def forward(self, num: Tensor, miss: Tensor, cat: Tensor) -> Tensor:
        t = self.tokens(num, miss, cat)
        feats = t[:, self.n_reg:]
        if self.pool == "flatten":
            return feats.flatten(1)
        pooled = feats.mean(1)
        return pooled if self.pool == "mean" else torch.cat([pooled, t[:, : self.n_reg].flatten(1)], dim=1)


class TJepaPredictor(nn.Module):
    """I-JEPA-style predictor: context tokens + mask tokens at the target positions -> target tokens.

    ctx (B, R + k_c, dim), ctx_idx (k_c,), tgt_idx (T, k_t) -> (T, B, k_t, dim); the T target
    sets run as one batch of T·B sequences.
    """

    def __init__(self, n_features: int, enc_dim: int, dim: int = 16, depth: int = 16, heads: int = 4,
                 ffn: int | None = None, n_reg: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_reg = n_reg
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.register_buffer("pos", sinusoidal(n_features, dim), persistent=False)
        self.blocks = _layers(dim, depth, heads, ffn or 4 * dim, dropout)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, enc_dim)

    def forward(self, ctx: Tensor, ctx_idx: Tensor, tgt_idx: Tensor) -> Tensor:
        b, (t, k_t) = ctx.shape[0], tgt_idx.shape
        x = self.embed(ctx)
        pos = torch.cat([torch.zeros(self.n_reg, x.shape[-1], device=x.device, dtype=self.pos.dtype), self.pos[ctx_idx]])
        x = (x + pos).repeat(t, 1, 1)                                           # (T·B, R+k_c, dim)
        masks = (self.mask_token + self.pos[tgt_idx]).to(x.dtype)               # (T, k_t, dim)
        masks = masks.unsqueeze(1).expand(t, b, k_t, -1).reshape(t * b, k_t, -1)
        x = torch.cat([x, masks], dim=1)
        for block in self.blocks[:-1]:
            x = block(x)
        x = self.blocks[-1](x, last=k_t)       # only the mask tokens' outputs are read: the last block skips the rest
        return self.out(self.norm(x)).reshape(t, b, k_t, -1)


class ScarfEncoder(nn.Module):
    """SCARF's MLP encoder over [scaled numerics, missing flags, category embeddings] -> (B, hidden)."""

    def __init__(self, n_num: int, cardinalities: list[int], hidden: int = 256, depth: int = 4, cat_dim: int = 8) -> None:
        super().__init__()
        self.embeds = nn.ModuleList(nn.Embedding(c, min(cat_dim, c)) for c in cardinalities)
        in_dim = 2 * n_num + sum(min(cat_dim, c) for c in cardinalities)
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(in_dim if i == 0 else hidden, hidden), nn.ReLU()]
        self.net = nn.Sequential(*layers)
        self.out_dim = hidden

    def forward(self, num: Tensor, miss: Tensor, cat: Tensor) -> Tensor:
        parts = [num, miss.to(num.dtype)] + [e(cat[:, j]) for j, e in enumerate(self.embeds)]
        return self.net(torch.cat(parts, dim=1))


def tjepa_encoder(**kwargs: Any) -> TJepaEncoder:
    """`ENCODERS["t-jepa"]`: a TJepaEncoder from an export's (or a checkpoint's) kwargs. Encoders written before the
    export took the recipe key's name carry `model.num_bins` as `n_bins`: read as `num_bins`."""
    if "n_bins" in kwargs:
        kwargs = {**{k: v for k, v in kwargs.items() if k != "n_bins"}, "num_bins": kwargs["n_bins"]}
    return TJepaEncoder(**kwargs)


ENCODERS: dict[str, Callable[..., nn.Module]] = {"t-jepa": tjepa_encoder, "scarf": ScarfEncoder}
