"""Mean-teacher consistency (UA-MT): EMA update, ramp-ups and the masked consistency against hand computations."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from sslkit.domains.medical3d.semisup import (MeanTeacher, ema_alpha, entropy, masked_consistency,
                                              sigmoid_rampup)


def cfg(**kw):  # noqa: ANN003, ANN201
    base = dict(ema_decay=0.99, weight=0.1, rampup_steps=None, noise=0.0, uncertainty=True, passes=3,
                threshold_start=0.75, threshold_end=1.0)
    return SimpleNamespace(**{**base, **kw})


def voxelwise(weight: list[list[float]], bias: list[float]) -> nn.Conv3d:
    """A 1×1×1 convolution C -> K with the given weights: logits are a known function of each voxel."""
    conv = nn.Conv3d(len(weight[0]), len(weight), 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(weight).view(len(weight), len(weight[0]), 1, 1, 1))
        conv.bias.copy_(torch.tensor(bias))
    return conv


def test_ramp_up_and_threshold_values() -> None:
    assert sigmoid_rampup(0, 10) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(5, 10) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(10, 10) == 1.0 and sigmoid_rampup(25, 10) == 1.0
    mt = MeanTeacher(voxelwise([[1.0]], [0.0]), cfg(), total_steps=100)
    assert mt.rampup_steps == 40                                          # None: 40% of the steps
    assert mt.weight(0) == pytest.approx(0.1 * math.exp(-5))
    assert mt.weight(20) == pytest.approx(0.1 * math.exp(-1.25))
    assert mt.weight(40) == pytest.approx(0.1) and mt.weight(99) == pytest.approx(0.1)
    assert MeanTeacher(voxelwise([[1.0]], [0.0]), cfg(rampup_steps=10), 100).weight(5) == pytest.approx(
        0.1 * math.exp(-1.25))
    # threshold: (0.75 + 0.25 ramp(step / total)) ln K
    assert mt.threshold(0, 2) == pytest.approx((0.75 + 0.25 * math.exp(-5)) * math.log(2))
    assert mt.threshold(50, 2) == pytest.approx((0.75 + 0.25 * math.exp(-1.25)) * math.log(2))
    assert mt.threshold(100, 3) == pytest.approx(math.log(3))


def test_ema_update_matches_hand_computation() -> None:
    student = voxelwise([[2.0], [-1.0]], [0.5, 0.0])
    mt = MeanTeacher(student, cfg(ema_decay=0.99), total_steps=10)
    assert all(not p.requires_grad for p in mt.teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    t0 = np.array([2.0, -1.0])
    with torch.no_grad():
        student.weight.copy_(torch.tensor([4.0, 3.0]).view(2, 1, 1, 1, 1))
    mt.update(student, step=0)              # α = min(1 - 1/1, 0.99) = 0: the teacher becomes the student
    assert np.allclose(mt.teacher.weight.flatten().numpy(), [4.0, 3.0])
    with torch.no_grad():
        student.weight.copy_(torch.tensor([0.0, 1.0]).view(2, 1, 1, 1, 1))
    mt.update(student, step=3)              # α = 1 - 1/4 = 0.75
    assert ema_alpha(3, 0.99) == 0.75
    expected = 0.75 * np.array([4.0, 3.0]) + 0.25 * np.array([0.0, 1.0])
    assert np.allclose(mt.teacher.weight.flatten().numpy(), expected)
    mt.update(student, step=500)            # α = min(1 - 1/501, 0.99) = 0.99
    assert ema_alpha(500, 0.99) == 0.99
    assert np.allclose(mt.teacher.weight.flatten().numpy(), 0.99 * expected + 0.01 * np.array([0.0, 1.0]))
    assert not np.allclose(t0, mt.teacher.weight.flatten().numpy())


def test_masked_consistency_equals_hand_reference() -> None:
    # two classes, one batch item, 2×1×1 voxels: p_s and p_t given directly
    ps = torch.tensor([[0.9, 0.2], [0.1, 0.8]]).view(1, 2, 2, 1, 1)
    pt = torch.tensor([[0.6, 0.5], [0.4, 0.5]]).view(1, 2, 2, 1, 1)
    mask = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    # voxel 0 kept: (0.3² + 0.3²) / (2 classes × 1 voxel) = 0.09; voxel 1 left out
    assert masked_consistency(ps, pt, mask).item() == pytest.approx(0.09)
    # no mask: the mean over all 4 values = (0.09 + 0.09 + 0.09 + 0.09) / 4
    assert masked_consistency(ps, pt, None).item() == pytest.approx(0.09)
    assert masked_consistency(ps, pt, torch.zeros(1, 2, 1, 1)).item() == 0.0   # nothing certain: no loss, no NaN


def test_forward_masks_the_uncertain_voxels() -> None:
    """Noise-free teacher with known logits: the voxel whose teacher softmax is near 50/50 is masked out."""
    # teacher logits per voxel x: (0, x): softmax p1 = sigmoid(x)
    teacher = voxelwise([[0.0], [1.0]], [0.0, 0.0])
    mt = MeanTeacher(teacher, cfg(noise=0.0, passes=4, threshold_end=0.75), total_steps=100)
    image = torch.tensor([4.0, 0.1, -3.0]).view(1, 1, 3, 1, 1)
    student_logits = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]).view(1, 2, 3, 1, 1)
    step = 100                                                 # weight 0.1, threshold 0.75 ln 2 ≈ 0.52
    loss, metrics = mt(student_logits, image, step)
    p_t = 1 / (1 + np.exp(-np.array([4.0, 0.1, -3.0])))        # teacher's foreground probability per voxel
    p_s = 1 / (1 + np.exp(-1.0))
    h = -(p_t * np.log(p_t + 1e-6) + (1 - p_t) * np.log(1 - p_t + 1e-6))
    keep = h < 0.75 * math.log(2)
    assert keep.tolist() == [True, False, True]                # 0.1 is the near 50/50 voxel
    d = 2 * (p_s - p_t) ** 2                                   # both classes differ by the same amount
    expected = (d * keep).sum() / (2 * keep.sum())
    assert metrics["consistency"].item() == pytest.approx(expected, rel=1e-5)
    assert loss.item() == pytest.approx(0.1 * expected, rel=1e-5)
    assert metrics["certain"].item() == pytest.approx(2 / 3)
    plain = MeanTeacher(teacher, cfg(noise=0.0, uncertainty=False), 100)(student_logits, image, step)[1]
    assert plain["consistency"].item() == pytest.approx(d.sum() / (2 * 3), rel=1e-5)  # mean over K × voxels


def test_gradient_reaches_only_the_student_and_noise_is_clipped() -> None:
    torch.manual_seed(0)
    student = voxelwise([[1.0], [-1.0]], [0.0, 0.0])
    mt = MeanTeacher(student, cfg(noise=0.1, passes=2), total_steps=10)
    image = torch.rand(2, 1, 4, 4, 4)
    with torch.no_grad():
        student.weight.add_(0.5)                               # student and teacher now differ
    loss, _ = mt(student(image), image, step=10)
    loss.backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert mt.teacher.weight.grad is None
    noisy = mt._noisy(torch.zeros(10000))
    assert noisy.abs().max() <= 0.2 + 1e-7 and noisy.std() > 0.05
    assert entropy(torch.full((1, 2, 1), 0.5)).item() == pytest.approx(math.log(2), abs=1e-5)
