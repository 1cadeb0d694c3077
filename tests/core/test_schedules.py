from __future__ import annotations

import math

import pytest

from sslkit.core.recipes import TrainConfig
from sslkit.core.schedules import infinite, lr_at, warmup_cosine


def test_warmup_then_cosine_values():
    assert warmup_cosine(0, 100, 1.0, warmup=10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 1.0, warmup=10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 1.0, warmup=10) == pytest.approx(1.0)
    mid = 10 + 45
    assert warmup_cosine(mid, 100, 1.0, warmup=10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 1.0, warmup=10, final=0.1) == pytest.approx(0.1)


def test_infinite_schedule_phases():
    kw = dict(total=1000, base=1.0, warmup=50, cooldown_frac=0.15, constant=0.3, anneal_frac=0.2, final=0.003)
    assert infinite(0, **kw) == pytest.approx(1 / 50)
    assert infinite(49, **kw) == pytest.approx(1.0)
    assert infinite(150, **kw) == pytest.approx(0.3)          # cool-down finished
    assert infinite(500, **kw) == pytest.approx(0.3)          # constant plateau
    assert infinite(799, **kw) == pytest.approx(0.3)
    assert infinite(900, **kw) == pytest.approx(0.3 * (0.01) ** 0.5)   # halfway through exponential anneal
    mid_cool = infinite(100, **kw)
    assert 0.3 < mid_cool < 1.0
    # open-ended: no anneal
    assert infinite(999, **{**kw, "anneal_frac": 0.0}) == pytest.approx(0.3)


def test_lr_at_uses_recipe():
    t = TrainConfig(steps=100, schedule="constant", warmup_steps=4)
    assert lr_at(0, t, 2.0) == pytest.approx(0.5)
    assert lr_at(50, t, 2.0) == pytest.approx(2.0)
    t = TrainConfig(steps=100, schedule="cosine", min_lr=0.0)
    assert lr_at(50, t, 2.0) == pytest.approx(1.0)
    assert math.isclose(lr_at(100, t, 2.0), 0.0, abs_tol=1e-12)
