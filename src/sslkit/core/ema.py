"""Exponential moving average of weights for BYOL / DINO / JEPA target networks.

The target follows the online network, ξ ← m·ξ + (1 − m)·θ, with m rising
towards 1 during training (METHODS.md, "EMA self-distillation").
"""
from __future__ import annotations

import copy
import math
from typing import Literal

import torch
from torch import nn


def make_target(online: nn.Module) -> nn.Module:
    """A deep copy of `online` with every parameter frozen: the target gets no gradient."""
    target = copy.deepcopy(online)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """In place: ξ ← m·ξ + (1 − m)·θ for every parameter; buffers (BN statistics) are copied.

    m = 1 leaves the parameters untouched, m = 0 copies them.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must lie in [0, 1], got {momentum}")
    target_params = dict(target.named_parameters())
    online_params = dict(online.named_parameters())
    if target_params.keys() != online_params.keys():
        raise ValueError(
            "ema_update: target and online networks have different parameters; "
            "build the target with make_target(online)"
        )
    names = list(online_params)
    for name in names:
        if target_params[name].shape != online_params[name].shape:
            raise ValueError(
                f"ema_update: parameter {name!r} has shape {tuple(target_params[name].shape)} in the target, "
                f"{tuple(online_params[name].shape)} online"
            )
    targets = [target_params[n] for n in names]
    sources = [online_params[n].detach().to(target_params[n].dtype) for n in names]
    if momentum == 0.0:
        torch._foreach_copy_(targets, sources)
    elif momentum < 1.0:
        # one fused kernel over all tensors instead of hundreds of small launches (GPU)
        torch._foreach_lerp_(targets, sources, 1.0 - momentum)
    target_buffers = dict(target.named_buffers())
    for name, online_b in online.named_buffers():
        if name in target_buffers:
            target_buffers[name].copy_(online_b)


def momentum_schedule(
    step: int,
    total: int,
    start: float = 0.996,
    end: float = 1.0,
    kind: Literal["cosine", "linear"] = "cosine",
) -> float:
    """EMA momentum at `step` of `total`: `start` at step 0, `end` at step `total`.

    cosine (BYOL, DINO): m = end − (end − start)·(cos(π·t) + 1)/2; linear (I-JEPA, T-JEPA).
    """
    if total <= 0:
        raise ValueError(f"momentum_schedule needs total > 0 steps, got {total}")
    t = min(max(step / total, 0.0), 1.0)
    if kind == "cosine":
        return end - (end - start) * (math.cos(math.pi * t) + 1.0) / 2.0
    if kind == "linear":
        return start + (end - start) * t
    raise ValueError(f"momentum_schedule kind must be 'cosine' or 'linear', got {kind!r}")
