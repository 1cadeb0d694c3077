"""LARS (written by hand in core.optim): two steps against updates worked out on paper."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sslkit.core.optim import LARS, build_optimizer
from sslkit.core.recipes import TrainConfig


def test_lars_two_steps_match_hand_computed_update_and_biases_get_plain_sgd():
    layer = nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 4.0]]))       # ||W|| = 5
        layer.bias.copy_(torch.tensor([2.0]))
    opt = build_optimizer(layer, TrainConfig(optimizer="lars", weight_decay=0.1, momentum=0.9), lr=1.0)
    assert isinstance(opt, LARS)

    def step() -> None:
        layer.weight.grad = torch.tensor([[0.5, -1.0]])      # not parallel to W: weight decay changes the direction
        layer.bias.grad = torch.tensor([0.5])
        opt.step()

    # step 1, weight: g = G + wd W = [0.5, -1] + [0.3, 0.4] = [0.8, -0.6] (norm 1); trust = eta ||W|| / ||g|| = 0.02 * 5
    #   mu = 0.1 g = [0.08, -0.06];  W = [3, 4] - lr mu = [2.92, 4.06]
    # bias (excluded: no decay, no trust ratio): mu = 0.5;  b = 2 - 0.5 = 1.5
    step()
    assert layer.weight.detach().tolist() == [pytest.approx([2.92, 4.06], abs=1e-6)]
    assert layer.bias.item() == pytest.approx(1.5, abs=1e-6)
    # step 2, weight: g = [0.5, -1] + 0.1 [2.92, 4.06] = [0.792, -0.594] = 0.99 [0.8, -0.6];  ||W|| = sqrt(25.01)
    #   trust g = 0.02 sqrt(25.01) [0.8, -0.6];  mu = 0.9 [0.08, -0.06] + trust g;  W = [2.92, 4.06] - mu
    # bias: mu = 0.9 * 0.5 + 0.5 = 0.95;  b = 1.5 - 0.95 = 0.55
    step()
    r = 0.02 * math.sqrt(25.01)
    expected = [2.92 - (0.072 + 0.8 * r), 4.06 - (-0.054 - 0.6 * r)]
    assert expected == pytest.approx([2.767984, 4.174012], abs=1e-6)
    assert layer.weight.detach().tolist() == [pytest.approx(expected, abs=1e-5)]
    assert layer.bias.item() == pytest.approx(0.55, abs=1e-6)


def test_lars_zero_weight_falls_back_to_trust_one():
    """A freshly zeroed matrix has no norm to scale by: the trust ratio is 1 (plain SGD), not 0 (no update ever)."""
    w = nn.Parameter(torch.zeros(1, 2))
    opt = LARS([{"params": [w], "weight_decay": 0.0}], lr=0.5, momentum=0.0)
    w.grad = torch.tensor([[1.0, -2.0]])
    opt.step()
    assert w.detach().tolist() == [[-0.5, 1.0]]
