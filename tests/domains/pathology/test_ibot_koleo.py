"""DINOv2's additions to pathology DINO: the KoLeo regulariser and iBOT's masked patch-token loss (core losses against
hand-computed values), the masked student input of the ViT, per-item masks, and the tiny recipe training with both
on: finite, decreasing loss, the terms logged, and --resume landing on the uninterrupted weights."""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sslkit.core.losses.ibot import IBOTPatchLoss, masked_token_weights
from sslkit.core.losses.koleo import KoLeoLoss, koleo
from sslkit.core.recipes import load_recipe
from sslkit.domains.pathology.method import RECIPE_SCHEMA, build_method
from sslkit.domains.pathology.transforms import build_views, patch_masks
from tests.domains.pathology.conftest import run_cli
from tests.domains.pathology.test_method import _batch
from tests.domains.pathology.test_model_pretrain import FP32, _same_weights

BOTH = ["--set", "loss.koleo_weight=0.1", "--set", "loss.ibot_weight=1.0"]


# --- KoLeo -------------------------------------------------------------------------------------------------------

def test_koleo_of_points_at_known_distances() -> None:
    # two orthogonal unit vectors: each one's nearest neighbour is the other, at distance √2
    x = torch.tensor([[3.0, 0.0], [0.0, 0.5]])                       # lengths do not matter: rows are normalised
    torch.testing.assert_close(koleo(x), torch.tensor(-math.log(math.sqrt(2.0))), rtol=1e-6, atol=1e-6)
    # three points on the circle at 0°, 10°, 180°: nearest distances 2 sin 5°, 2 sin 5°, 2 sin 85°
    a = torch.deg2rad(torch.tensor([0.0, 10.0, 180.0]))
    pts = torch.stack([a.cos(), a.sin()], 1)
    d = [2 * math.sin(math.radians(5)), 2 * math.sin(math.radians(5)), 2 * math.sin(math.radians(85))]
    torch.testing.assert_close(KoLeoLoss()(pts), torch.tensor(-sum(map(math.log, d)) / 3), rtol=1e-5, atol=1e-6)


def test_koleo_gradient_pushes_nearest_neighbours_apart() -> None:
    a = torch.deg2rad(torch.tensor([0.0, 10.0, 180.0]))
    pts = torch.stack([a.cos(), a.sin()], 1).requires_grad_(True)
    koleo(pts).backward()
    step = pts.detach() - 0.01 * pts.grad
    angles = torch.rad2deg(torch.atan2(step[:, 1], step[:, 0]))
    assert angles[0] < 0.0 and angles[1] > 10.0                      # the close pair moved apart
    assert float(koleo(step)) < float(koleo(pts.detach()))


def test_koleo_refuses_a_batch_of_one() -> None:
    with pytest.raises(ValueError, match="B >= 2"):
        KoLeoLoss()(torch.randn(1, 8))


# --- iBOT patch loss ---------------------------------------------------------------------------------------------

def test_ibot_loss_is_the_per_image_mean_cross_entropy_at_masked_tokens() -> None:
    torch.manual_seed(0)
    k, temp_s, temp_t = 16, 0.1, 0.04
    mask = torch.tensor([[True, False, True, False], [False, False, False, False], [False, True, False, False]])
    m = int(mask.sum())
    s, t = torch.randn(m, k), torch.randn(m, k)
    loss_fn = IBOTPatchLoss(k, student_temp=temp_s, teacher_temp=temp_t, warmup_teacher_temp=temp_t)
    center = torch.randn(1, k) * 0.1
    loss_fn.center.copy_(center)
    loss = loss_fn(s, t, mask)
    ce = (-F.softmax((t - center) / temp_t, -1) * F.log_softmax(s / temp_s, -1)).sum(-1)
    # image 0 has 2 masked tokens (rows 0, 1), image 1 none, image 2 one (row 2); the sum is divided by all 3 images
    torch.testing.assert_close(loss, ((ce[0] + ce[1]) / 2 + ce[2]) / 3, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(masked_token_weights(mask), torch.tensor([1 / 6, 1 / 6, 1 / 3]))
    torch.testing.assert_close(loss_fn.center, 0.9 * center + 0.1 * t.mean(0, keepdim=True))


def test_ibot_loss_counts_only_masked_positions_and_gives_unmasked_tokens_no_gradient() -> None:
    torch.manual_seed(0)
    k, b, n = 8, 2, 5
    mask = torch.tensor([[True, False, False, True, False], [False, True, False, False, False]])
    student = torch.randn(b, n, k, requires_grad=True)              # a head's output at every patch
    teacher = torch.randn(b, n, k)
    loss_fn = IBOTPatchLoss(k)
    loss = loss_fn(student[mask], teacher[mask], mask)
    loss.backward()
    assert torch.all(student.grad[~mask] == 0) and torch.all(student.grad[mask].abs().sum(-1) > 0)
    # what the teacher outputs at unmasked positions changes nothing
    teacher2 = teacher.clone()
    teacher2[~mask] = 100.0
    torch.testing.assert_close(IBOTPatchLoss(k)(student[mask], teacher2[mask], mask), loss.detach())


def test_ibot_loss_with_no_masked_token_is_zero_and_keeps_the_centre() -> None:
    loss_fn = IBOTPatchLoss(8)
    loss_fn.center.fill_(0.5)
    loss = loss_fn(torch.zeros(0, 8), torch.zeros(0, 8), torch.zeros(2, 3, dtype=torch.bool))
    assert float(loss) == 0.0 and torch.all(loss_fn.center == 0.5)
    with pytest.raises(ValueError, match="masked tokens"):
        loss_fn(torch.zeros(1, 8), torch.zeros(1, 8), torch.zeros(2, 3, dtype=torch.bool))


# --- masks and the masked ViT input ------------------------------------------------------------------------------

def test_patch_masks_follow_the_item_seed_probability_and_ratio() -> None:
    seeds = torch.arange(400)
    masks = patch_masks(seeds, 2, 49, 0.5, (0.1, 0.5))
    assert masks.shape == (800, 49) and masks.dtype == torch.bool
    torch.testing.assert_close(patch_masks(seeds[7:9], 2, 49, 0.5, (0.1, 0.5)),   # per item: the same in any batch
                               masks.view(2, 400, 49)[:, 7:9].flatten(0, 1))
    counts = masks.sum(1)
    masked = counts > 0
    assert 0.42 < float(masked.float().mean()) < 0.58                         # p = 0.5 per crop
    assert counts[masked].min() >= round(0.1 * 49) and counts.max() <= round(0.5 * 49)
    assert 0.25 < float(counts[masked].float().mean()) / 49 < 0.35             # E[ratio] = 0.3


def test_views_carry_a_mask_seed_drawn_after_the_crops() -> None:
    tiny = load_recipe(RECIPE_SCHEMA, "pathology", "tiny")
    tile = (torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    torch.manual_seed(3)
    with_seed = build_views("dino", tiny.aug, masks=True)(tile)
    torch.manual_seed(3)
    without = build_views("dino", tiny.aug)(tile)
    assert "mask_seed" in with_seed and "mask_seed" not in without
    assert torch.equal(with_seed["global"], without["global"]) and torch.equal(with_seed["local"], without["local"])


def test_vit_with_an_empty_mask_equals_the_plain_forward_and_masked_patches_use_the_token() -> None:
    tiny = load_recipe(RECIPE_SCHEMA, "pathology", "tiny", overrides=["loss.ibot_weight=1.0"])
    torch.manual_seed(0)
    m = build_method(tiny).eval()
    x = torch.randn(3, 3, 32, 32)
    n = m.encoder.n_patches(32)
    none = torch.zeros(3, n, dtype=torch.bool)
    torch.testing.assert_close(m.encoder.tokens(x, none, m.mask_token), m.encoder.tokens(x), rtol=0, atol=0)
    # a masked patch's content no longer matters: change the pixels under patch 0 of image 0 only
    mask = none.clone()
    mask[0, 0] = True
    y = x.clone()
    y[0, :, :8, :8] = 5.0
    torch.testing.assert_close(m.encoder.tokens(y, mask, m.mask_token), m.encoder.tokens(x, mask, m.mask_token))
    assert not torch.allclose(m.encoder.tokens(y), m.encoder.tokens(x))


# --- the method and the CLI --------------------------------------------------------------------------------------

def test_off_by_default_builds_nothing_and_on_adds_the_terms_to_the_dino_loss() -> None:
    tiny = load_recipe(RECIPE_SCHEMA, "pathology", "tiny")
    torch.manual_seed(0)
    plain = build_method(tiny)
    assert not any("patch_head" in k or "mask_token" in k for k in plain.state_dict())
    both = load_recipe(RECIPE_SCHEMA, "pathology", "tiny",
                       overrides=["loss.koleo_weight=0.1", "loss.ibot_weight=1.0", "aug.mask_prob=1.0"])
    torch.manual_seed(0)
    m = build_method(both).train()
    loss, metrics = m(_batch("dino", both))
    assert {"dino", "koleo", "ibot", "ibot_teacher_entropy", "masked_share"} <= set(metrics)
    torch.testing.assert_close(loss.detach(), metrics["dino"] + 0.1 * metrics["koleo"] + metrics["ibot"])
    assert float(metrics["ibot"]) > 0 and 0.1 <= float(metrics["masked_share"]) <= 0.5
    loss.backward()
    assert m.mask_token.grad is not None and m.mask_token.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.teacher.parameters())
    assert set(m.teacher) == {"encoder", "head", "patch_head"}


def test_bad_settings_name_the_flag() -> None:
    with pytest.raises(Exception, match="aug.mask_prob"):
        load_recipe(RECIPE_SCHEMA, "pathology", "tiny", overrides=["loss.ibot_weight=1.0", "aug.mask_prob=0"])
    with pytest.raises(Exception, match="koleo_weight"):
        load_recipe(RECIPE_SCHEMA, "pathology", "tiny", overrides=["method=simclr", "loss.koleo_weight=0.1"])


def test_tiny_recipe_with_both_trains_logs_the_terms_and_resumes_exactly(tile_folder: Path, tmp_path: Path,
                                                                         monkeypatch) -> None:  # noqa: ANN001
    import sslkit.core.loop as loop

    full, cut = tmp_path / "full", tmp_path / "cut"
    long = ["--set", "train.steps=12", "--set", "train.log_every=1"]
    res = run_cli("pretrain", tile_folder, "-r", "tiny", *FP32, *BOTH, *long, "--out", full)
    assert res.returncode == 0, res.stderr
    records = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    losses = torch.tensor([r["loss"] for r in records])
    assert len(records) == 12 and torch.isfinite(losses).all()
    assert all({"dino", "koleo", "ibot"} <= set(r) for r in records)
    assert losses[-3:].mean() < losses[:3].mean()
    monkeypatch.setattr(loop, "fit", functools.partial(loop.fit, until=5))      # stopped at step 5 of 12
    assert run_cli("pretrain", tile_folder, "-r", "tiny", *FP32, *BOTH, *long, "--out", cut).returncode == 0
    monkeypatch.undo()
    res = run_cli("pretrain", tile_folder, "--out", cut, "--resume")
    assert res.returncode == 0, res.stderr
    _same_weights(full, cut)
