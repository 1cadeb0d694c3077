"""Learning-rate schedules as pure functions of the step (easy to test, exact on resume)."""
from __future__ import annotations

import math

from sslkit.core.recipes import TrainConfig


def warmup_cosine(step: int, total: int, base: float, warmup: int = 0, final: float = 0.0) -> float:
    """Linear warmup from 0 to `base` over `warmup` steps, then cosine decay to `final` at `total`."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * progress))


def infinite(
    step: int,
    total: int,
    base: float,
    warmup: int = 0,
    cooldown_frac: float = 0.15,
    constant: float | None = None,
    anneal_frac: float = 0.2,
    final: float = 0.0,
) -> float:
    """Infinite schedule: warmup -> cosine cool-down to a constant -> constant -> exponential anneal.

    `constant` defaults to base/2 (the public re-implementation's choice is NF in the paper).
    Cool-down ends at `cooldown_frac * total`; the last `anneal_frac * total` steps anneal
    exponentially from the constant to `final` (set anneal_frac=0 for an open-ended run).
    """
    constant = base * 0.5 if constant is None else constant
    cool_end = max(warmup, int(cooldown_frac * total))
    anneal_start = total - int(anneal_frac * total)
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    if step < cool_end:
        progress = (step - warmup) / max(1, cool_end - warmup)
        return constant + 0.5 * (base - constant) * (1.0 + math.cos(math.pi * progress))
    if step < anneal_start or anneal_frac <= 0:
        return constant
    progress = (step - anneal_start) / max(1, total - anneal_start)
    floor = max(final, 1e-12)
    return constant * (floor / constant) ** progress


def lr_at(step: int, train: TrainConfig, base: float) -> float:
    """The recipe's schedule evaluated at `step` (0-based optimizer step)."""
    if train.schedule == "constant":
        return base * min(1.0, (step + 1) / train.warmup_steps) if train.warmup_steps else base
    if train.schedule == "infinite":
        return infinite(step, train.steps, base, train.warmup_steps, train.cooldown_frac,
                        base * train.constant_lr_frac, train.anneal_frac, train.min_lr)
    return warmup_cosine(step, train.steps, base, train.warmup_steps, train.min_lr)
