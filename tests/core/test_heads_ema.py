"""Heads (shapes, layer layout, DINO weight norm) and EMA (update rule, schedule, frozen target)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sslkit.core.ema import ema_update, make_target, momentum_schedule
from sslkit.core.heads import DINOHead, PredictorHead, ProjectionHead


def _count(module: nn.Module, kind: type[nn.Module]) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


# ---------------------------------------------------------------- heads


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_projection_head_layout_and_shape(num_layers: int) -> None:
    head = ProjectionHead(12, 32, 8, num_layers=num_layers)
    assert head(torch.randn(5, 12)).shape == (5, 8)
    assert _count(head, nn.Linear) == num_layers
    assert _count(head, nn.BatchNorm1d) == num_layers - 1
    assert _count(head, nn.ReLU) == num_layers - 1
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert all(m.bias is None for m in linears[:-1])  # BN follows: bias would be redundant
    assert linears[-1].bias is not None


def test_projection_head_options() -> None:
    plain = ProjectionHead(6, 10, 4, num_layers=2, batch_norm=False)
    assert _count(plain, nn.BatchNorm1d) == 0
    assert all(m.bias is not None for m in plain.modules() if isinstance(m, nn.Linear))
    last_bn = ProjectionHead(6, 10, 4, num_layers=2, last_bn=True).train()
    out = last_bn(torch.randn(64, 6))
    assert isinstance(last_bn.layers[-1], nn.BatchNorm1d) and not last_bn.layers[-1].affine
    assert torch.allclose(out.mean(0), torch.zeros(4), atol=1e-5)  # batch-normalised output
    with pytest.raises(ValueError, match="num_layers"):
        ProjectionHead(6, 10, 4, num_layers=0)


def test_predictor_head_shape() -> None:
    head = PredictorHead(8, 16, 8)
    assert head(torch.randn(4, 8)).shape == (4, 8)
    assert _count(head, nn.Linear) == 2 and _count(head, nn.BatchNorm1d) == 1


def test_dino_head_weight_norm_and_bounded_logits() -> None:
    head = DINOHead(10, 50, hidden_dim=32, bottleneck_dim=8)
    logits = head(torch.randn(6, 10))
    assert logits.shape == (6, 50)
    # unit-norm bottleneck times unit-norm rows: every logit is a cosine in [-1, 1]
    assert logits.abs().max() <= 1.0 + 1e-6
    rows = head.last_layer.weight.norm(dim=1)
    assert torch.allclose(rows, torch.ones(50), atol=1e-6)
    magnitude = head.last_layer.parametrizations.weight.original0
    direction = head.last_layer.parametrizations.weight.original1
    assert not magnitude.requires_grad and direction.requires_grad
    # a step on the direction keeps the rows unit-norm
    logits.sum().backward()
    with torch.no_grad():
        direction -= 0.5 * direction.grad
    assert torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(50), atol=1e-6)
    assert _count(head, nn.Linear) == 4 and _count(head, nn.GELU) == 2


def test_dino_head_trainable_magnitude_and_single_layer() -> None:
    head = DINOHead(10, 20, hidden_dim=16, bottleneck_dim=4, num_layers=1, norm_last_layer=False)
    assert head.last_layer.parametrizations.weight.original0.requires_grad
    assert _count(head.mlp, nn.Linear) == 1
    assert head(torch.randn(3, 10)).shape == (3, 20)
    with pytest.raises(ValueError, match="num_layers"):
        DINOHead(10, 20, num_layers=0)


# ---------------------------------------------------------------- EMA


def _pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    target = make_target(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    online.train()(torch.randn(8, 4))  # moves the BN running statistics
    return target, online


def test_make_target_is_a_frozen_independent_copy() -> None:
    online = ProjectionHead(4, 8, 2)
    target = make_target(online)
    assert all(not p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in online.parameters())
    for a, b in zip(target.parameters(), online.parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    dino_target = make_target(DINOHead(4, 6, hidden_dim=8, bottleneck_dim=4))
    assert dino_target(torch.randn(2, 4)).shape == (2, 6)


def test_ema_momentum_one_keeps_target_bitwise() -> None:
    target, online = _pair()
    before = [p.clone() for p in target.parameters()]
    ema_update(target, online, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), before))


def test_ema_momentum_zero_copies_online() -> None:
    target, online = _pair()
    ema_update(target, online, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), online.parameters()))


def test_ema_half_momentum_averages_and_copies_buffers() -> None:
    target, online = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        target.weight.copy_(torch.tensor([[1.0, 2.0]]))
        target.bias.fill_(4.0)
        online.weight.copy_(torch.tensor([[3.0, -2.0]]))
        online.bias.fill_(0.0)
    ema_update(target, online, 0.5)
    assert target.weight.tolist() == [[2.0, 0.0]] and target.bias.tolist() == [2.0]

    target, online = _pair()
    expected = [0.9 * t + 0.1 * o for t, o in zip(target.parameters(), online.parameters())]
    ema_update(target, online, 0.9)
    assert all(torch.allclose(a, b) for a, b in zip(target.parameters(), expected))
    assert torch.equal(target[1].running_mean, online[1].running_mean)
    assert torch.equal(target[1].num_batches_tracked, online[1].num_batches_tracked)


def test_ema_errors() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ema_update(nn.Linear(2, 2), nn.Linear(2, 2), 1.5)
    with pytest.raises(ValueError, match="different parameters"):
        ema_update(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)), 0.5)
    with pytest.raises(ValueError, match="shape"):
        ema_update(nn.Linear(2, 2), nn.Linear(2, 3), 0.5)


def test_momentum_schedule_cosine_and_linear() -> None:
    assert momentum_schedule(0, 100) == pytest.approx(0.996)
    assert momentum_schedule(50, 100) == pytest.approx(0.998)
    assert momentum_schedule(100, 100) == pytest.approx(1.0)
    assert momentum_schedule(200, 100) == pytest.approx(1.0)  # clamped past the end
    # BYOL's form: 1 − (1 − m0)(cos(πt) + 1)/2
    assert momentum_schedule(25, 100) == pytest.approx(1 - 0.004 * (math.cos(math.pi / 4) + 1) / 2)
    assert momentum_schedule(25, 100, start=0.99, end=0.999, kind="linear") == pytest.approx(0.99225)
    values = [momentum_schedule(s, 10) for s in range(11)]
    assert all(a <= b for a, b in zip(values, values[1:]))


def test_momentum_schedule_errors() -> None:
    with pytest.raises(ValueError, match="total > 0"):
        momentum_schedule(0, 0)
    with pytest.raises(ValueError, match="'cosine' or 'linear'"):
        momentum_schedule(1, 10, kind="step")  # type: ignore[arg-type]


def test_dino_head_batchnorm_spreads_nearly_equal_inputs() -> None:
    """use_bn (DINO's use_bn_in_head): inputs that differ by 1e-3 give logits that differ by order 1 in training mode,
    where the plain head keeps them ~1e-3 apart (the uniform-teacher failure it exists to fix)."""
    torch.manual_seed(0)
    x = torch.randn(1, 16) + 1e-3 * torch.randn(64, 16)
    spreads = {}
    for bn in (False, True):
        torch.manual_seed(1)
        head = DINOHead(16, 32, hidden_dim=64, bottleneck_dim=8, use_bn=bn)
        assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in head.modules()) == (2 if bn else 0)
        spreads[bn] = head(x).std(0).mean().item()
    assert spreads[False] < 1e-2 and spreads[True] > 0.1, spreads
