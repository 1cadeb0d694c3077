"""Pillar encoder, center head targets/decoding, and the loss."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sslkit.domains.lidar.boxes import Box, iou_matrix
from sslkit.domains.lidar.method import StudentDetector, StudentModel, focal_heatmap_loss
from sslkit.domains.lidar.model import ENCODERS
from sslkit.domains.lidar.student_data import StudentFrames, build_targets, collate

CFG = StudentModel(pillar=0.8, channels=8, head_hidden=16)


def random_points(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.c_[rng.uniform(-50, 50, n), rng.uniform(-6, 25, n), rng.uniform(-7, -1, n), rng.uniform(0, 1, n)].astype(np.float32)


def test_encoder_registered_and_shapes_and_grads():
    enc = ENCODERS["pillar_bev"](pillar=0.8, channels=8)
    pts = torch.from_numpy(np.c_[np.repeat([0, 1], 500), np.concatenate([random_points(500, 0), random_points(500, 1)])]).float()
    out = enc(pts, 2)
    assert out.shape == (2, enc.out_channels, math.ceil(enc.nx / 2), math.ceil(enc.ny / 2))
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in enc.parameters() if p.requires_grad)
    # frames are independent: frame 1 alone gives the same features as inside the batch (eval mode)
    enc.eval()
    alone = enc(torch.cat([torch.zeros(500, 1), pts[500:, 1:]], 1), 1)
    assert torch.allclose(enc(pts, 2)[1], alone[0], atol=1e-5)


def test_targets_decode_back_to_the_boxes():
    model = StudentDetector(CFG).eval()
    truth = [Box(10.3, 5.1, -4.2, 4.4, 1.8, 1.5, 0.2, "Car"), Box(-20.0, 17.2, -4.1, 0.6, 0.6, 1.7, 0.0, "Pedestrian")]
    t = build_targets(truth, model.encoder, 8)
    hm_logit = torch.logit(t["heatmap"].clamp(1e-4, 1 - 1e-4))[None]
    h, w = hm_logit.shape[-2:]
    reg = torch.zeros(1, 8, h, w)
    for k in range(int(t["mask"].sum())):
        u, v = divmod(int(t["ind"][k]), w)
        reg[0, :, u, v] = t["reg"][k]
    model.predict_maps = lambda points, batch_size: (hm_logit, reg)  # the head's perfect output
    got = model.detect(torch.zeros(1, 5), 1)[0]
    assert sorted(b.cls for b in got) == ["Car", "Pedestrian"]
    for b in got:
        ref = next(x for x in truth if x.cls == b.cls)
        assert iou_matrix(b.array()[None], ref.array()[None], "3d")[0, 0] > 0.99


def test_focal_loss_prefers_correct_heatmaps():
    target = torch.zeros(1, 3, 8, 8)
    target[0, 0, 4, 4] = 1.0
    good = torch.full_like(target, -6.0)
    good[0, 0, 4, 4] = 6.0
    assert focal_heatmap_loss(good, target) < 0.01 < focal_heatmap_loss(torch.zeros_like(target), target)


def test_student_loss_decreases_on_one_batch():
    torch.manual_seed(0)
    model = StudentDetector(CFG)
    frames = [random_points(3000, i) for i in range(2)]
    labels = [[Box(5, 5, -4, 4.5, 1.8, 1.5, 0, "Car")], [Box(-10, 12, -4, 0.6, 0.6, 1.7, 0, "Pedestrian")]]
    batch = collate([StudentFrames(frames, labels, model.encoder, flip=False)[i] for i in range(2)])
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    first = None
    for _ in range(15):
        loss, metrics = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else float(loss.detach())
    assert float(loss.detach()) < 0.5 * first and set(metrics) == {"heatmap_loss", "reg_loss"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_student_step_on_gpu_bf16():
    model = StudentDetector(CFG).cuda()
    labels = [[Box(5, 5, -4, 4.5, 1.8, 1.5, 0, "Car")]]
    batch = collate([StudentFrames([random_points(3000, 0)], labels, model.encoder, flip=False)[0]])
    batch = {k: v.cuda() for k, v in batch.items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, _ = model(batch)
    loss.backward()
    assert torch.isfinite(loss)
