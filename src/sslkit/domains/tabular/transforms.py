"""Feature subsets for T-JEPA and feature corruption for SCARF.

Both draw from torch's global generator, which `fit()` seeds per micro-step from
(seed, step, rank): masks are reproducible and `--resume` continues exactly.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _size(n: int, lo: float, hi: float, floor: int, ceil: int) -> int:
    """A size drawn uniformly from [round(n·lo), round(n·hi)], clipped to [floor, ceil]."""
    a = min(max(round(n * lo), floor), ceil)
    b = min(max(round(n * hi), a), ceil)
    return int(torch.randint(a, b + 1, ()).item())


def jepa_masks(n_features: int, context: tuple[float, float] = (0.136, 0.368),
               target: tuple[float, float] = (0.156, 0.622), n_targets: int = 4) -> tuple[Tensor, Tensor]:
    """Context and target feature subsets, fixed for the whole batch (T-JEPA card).

    Returns ctx (k_c,) sorted feature indices and tgt (n_targets, k_t) feature indices drawn
    from the features outside the context; target sets may overlap each other, never the
    context. One target size per batch (as I-JEPA's collator), so the predictor runs the
    n_targets sets as one batch. Indices are over the D features only (the reference code
    draws them over a sequence that also holds the register tokens; we do not copy that).
    """
    if n_features < 2:
        raise ValueError(f"T-JEPA needs at least 2 feature columns, got {n_features}")
    k_c = _size(n_features, *context, floor=1, ceil=n_features - 1)
    perm = torch.randperm(n_features)
    ctx, rest = perm[:k_c].sort().values, perm[k_c:]
    k_t = _size(n_features, *target, floor=1, ceil=len(rest))
    picks = torch.stack([torch.randperm(len(rest))[:k_t] for _ in range(n_targets)])
    return ctx, rest[picks]


def scarf_corrupt(num: Tensor, miss: Tensor, cat: Tensor, rate: float) -> tuple[Tensor, Tensor, Tensor]:
    """Replace a `rate` fraction of each row's features by the same feature of a random other row.

    This samples each corrupted entry from the feature's empirical marginal (over the batch),
    as in SCARF (Bahri et al., arXiv:2106.15147). num/miss (B, Dn), cat (B, Dc) -> same shapes.
    """
    b = num.shape[0] if num.numel() else cat.shape[0]
    d = num.shape[1] + cat.shape[1]
    corrupt = torch.rand(b, d, device=num.device) < rate
    donor = torch.randint(0, b, (b, d), device=num.device)
    dn = num.shape[1]
    num_c = torch.where(corrupt[:, :dn], torch.gather(num, 0, donor[:, :dn]), num)
    miss_c = torch.where(corrupt[:, :dn], torch.gather(miss, 0, donor[:, :dn]), miss)
    cat_c = torch.where(corrupt[:, dn:], torch.gather(cat, 0, donor[:, dn:]), cat)
    return num_c, miss_c, cat_c
