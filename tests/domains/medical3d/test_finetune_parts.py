"""Fine-tuning parts against hand values: the foreground-balanced crop sampler, the augmentation (image and label
moved together), Dice + cross-entropy, and Dice / Jaccard / HD95 / ASD on toy masks."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sslkit.domains.medical3d.recipe import AugmentConfig


def _entries(tmp_path: Path, vol: np.ndarray, lab: np.ndarray) -> list:
    np.save(tmp_path / "v.npy", vol.astype(np.float32))
    np.save(tmp_path / "l.npy", lab.astype(np.int16))
    return [(tmp_path / "v.npy", {"label": str(tmp_path / "l.npy"), "shape": list(vol.shape)})]


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_crops_hold_foreground_at_the_requested_ratio(tmp_path: Path, fraction: float) -> None:
    """A 4³ object in a corner of a 64³ volume: with pos_fraction p, p of the 16³ crops are centred on it (so hold
    it) and the others on background, which rarely reaches it (a uniform crop would hold it ~1% of the time)."""
    from sslkit.domains.medical3d.datasets import LabelledCrops

    lab = np.zeros((64, 64, 64), np.int16)
    lab[50:54, 6:10, 40:44] = 1
    crops = LabelledCrops(_entries(tmp_path, np.random.default_rng(0).random(lab.shape), lab), 16, 400,
                          pos_fraction=fraction)
    np.random.seed(0)
    holding = [bool((crops[i]["label"] > 0).any()) for i in range(400)]
    share = np.mean(holding)
    assert abs(share - fraction) < 0.08, share
    item = crops[0]
    assert item["image"].shape == (1, 16, 16, 16) and item["label"].dtype == torch.int64


def test_augmentation_moves_image_and_label_together(tmp_path: Path) -> None:
    """Flips and 90° turns: the crop is exactly a turned/flipped plain crop (same centre), the label with it; the
    small affine: a smooth image thresholded agrees with the nearest-neighbour label almost everywhere; intensity
    changes leave the label alone."""
    from scipy.ndimage import gaussian_filter

    from sslkit.domains.medical3d.datasets import LabelledCrops

    field = gaussian_filter(np.random.default_rng(1).random((40, 40, 40)), 3)
    field = (field - field.min()) / np.ptp(field)
    lab = (field > np.median(field)).astype(np.int16)
    entries = _entries(tmp_path, field, lab)
    still = {"intensity_scale": 0.0, "intensity_shift": 0.0, "gamma_p": 0.0, "noise_p": 0.0}
    turns = AugmentConfig(**still, affine=0.0)
    plain, turned = LabelledCrops(entries, 16, 30), LabelledCrops(entries, 16, 30, aug=turns)
    moved = 0
    for i in range(30):
        np.random.seed(i)
        ref = plain[i]
        np.random.seed(i)
        got = turned[i]
        r_img, r_lab, g_img, g_lab = ref["image"][0].numpy(), ref["label"].numpy(), got["image"][0].numpy(), \
            got["label"].numpy()
        found = [(k, f) for k in range(4) for m in range(8) for f in [tuple(a for a in range(3) if m >> a & 1)]
                 if np.array_equal(np.flip(np.rot90(r_img, k, (0, 1)), f), g_img)]
        assert found, i
        k, f = found[0]
        assert np.array_equal(np.flip(np.rot90(r_lab, k, (0, 1)), f), g_lab)
        moved += (k, f) != (0, ())
    assert moved >= 20                              # (no turn, no flip): 1/2 · 1/8 of the crops
    warped = LabelledCrops(entries, 16, 30, aug=AugmentConfig(**still, affine=1.0, flip=0.0, rot90=0.0))
    for i in range(10):
        np.random.seed(i)
        ref = plain[i]
        np.random.seed(i)
        got = warped[i]
        img, lab_w = got["image"][0].numpy(), got["label"].numpy()
        assert not np.allclose(img, ref["image"][0].numpy())
        agree = np.mean((img > np.median(field)) == (lab_w > 0))
        assert agree > 0.93, agree
    bright = LabelledCrops(entries, 16, 30, aug=AugmentConfig(flip=0.0, rot90=0.0, affine=0.0, gamma_p=1.0,
                                                              noise_p=0.0))
    np.random.seed(3)
    ref = plain[3]
    np.random.seed(3)
    got = bright[3]
    assert np.array_equal(got["label"].numpy(), ref["label"].numpy())
    a, b = ref["image"][0].numpy().ravel(), got["image"][0].numpy().ravel()
    assert not np.allclose(a, b) and np.all(np.diff(b[np.argsort(a)]) >= -1e-6)    # monotone in the plain crop


def test_dice_ce_loss_against_a_hand_computed_value() -> None:
    """Two voxels, labels (1, 0); logits (0, ln 3) -> p1 = 0.75 and (0, 0) -> 0.5. CE = (−ln 0.75 − ln 0.5) / 2;
    soft Dice of class 1 = 2·0.75 / (0.75 + 0.5 + 1) = 2/3; loss = CE + 1 − 2/3."""
    from sslkit.domains.medical3d.segmentation import dice_ce_loss

    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]]).reshape(1, 2, 1, 1, 2)
    label = torch.tensor([1, 0]).reshape(1, 1, 1, 2)
    loss, soft = dice_ce_loss(logits, label)
    ce = (-math.log(0.75) - math.log(0.5)) / 2
    assert float(soft) == pytest.approx(2 / 3, abs=1e-5)
    assert float(loss) == pytest.approx(ce + 1 - 2 / 3, abs=1e-5)
    ignored = torch.tensor([1, -1]).reshape(1, 1, 1, 2)             # -1: left out of both terms
    loss, soft = dice_ce_loss(logits, ignored)
    assert float(loss) == pytest.approx(-math.log(0.75) + 1 - 1.5 / 1.75, abs=1e-5)


def test_scores_against_hand_values_on_toy_masks(capsys) -> None:  # noqa: ANN001
    """Spacing (1, 1, 2) mm. A: truth voxels (2,2,2),(2,2,3), prediction (2,2,2): Dice 2/3, Jaccard 1/2; the
    prediction's surface point is on the truth (0 mm), the truth's are 0 and 2 mm from it: HD95 = the 95th
    percentile of (0, 2) = 1.9 mm, ASD = (0 + 0 + 2) / 3 mm. B: one voxel each, 3 voxels apart along z: Dice 0,
    HD95 = ASD = 6 mm."""
    from sslkit.domains.medical3d.scoring import score_volume, scores_payload

    truth, pred = np.zeros((6, 6, 8), np.int64), np.zeros((6, 6, 8), np.int64)
    truth[2, 2, 2:4] = 1
    pred[2, 2, 2] = 1
    a = score_volume(pred, truth, 2, {}, [1.0, 1.0, 2.0])
    assert a["dice"] == [pytest.approx(2 / 3)]
    assert a["hd95"] == [pytest.approx(1.9)] and a["asd"] == [pytest.approx(2 / 3)]
    truth_b, pred_b = np.zeros_like(truth), np.zeros_like(pred)
    truth_b[2, 2, 2], pred_b[2, 2, 5] = 1, 1
    b = score_volume(pred_b, truth_b, 2, {}, [1.0, 1.0, 2.0])
    assert b["dice"] == [0.0] and b["hd95"] == [pytest.approx(6.0)] and b["asd"] == [pytest.approx(6.0)]
    payload = scores_payload({"a": a, "b": b}, ["atrium"], [0, 1], {}, "test")
    assert payload["jaccard_per_volume"] == {"a": [pytest.approx(0.5)], "b": [0.0]}
    assert payload["summary"]["dice"] == {"mean": pytest.approx(1 / 3), "std": pytest.approx(1 / 3), "volumes": 2}
    assert payload["summary"]["asd_mm"]["mean"] == pytest.approx((2 / 3 + 6) / 2)
    assert payload["summary"]["hd95_mm"]["std"] == pytest.approx((6 - 1.9) / 2)
    table = " ".join(capsys.readouterr().err.split())
    assert "test Dice, Jaccard, HD95 (mm), ASD (mm) — atrium" in table and "0.333 ± 0.333" in table
