"""Rotated IoU, NMS, label files and KITTI-style AP against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from sslkit.core.errors import UserError
from sslkit.domains.lidar.boxes import Box, iou_matrix, nms_bev
from sslkit.domains.lidar.labels import read_labels, write_kitti, write_pcdet
from sslkit.domains.lidar.metrics import average_precision


def arr(*rows: tuple) -> np.ndarray:
    return np.array(rows, dtype=float)


def test_bev_iou_hand_values():
    a = arr((0, 0, 0, 2, 2, 1, 0))
    assert iou_matrix(a, a)[0, 0] == pytest.approx(1.0)
    assert iou_matrix(a, arr((0, 0, 0, 2, 2, 1, math.pi / 2)))[0, 0] == pytest.approx(1.0)   # a square turned 90°
    assert iou_matrix(a, arr((1, 0, 0, 2, 2, 1, 0)))[0, 0] == pytest.approx(2 / 6)            # half overlap: 2 / (4+4-2)
    inter = 8 * (math.sqrt(2) - 1)                                                             # square ∩ same square at 45°
    assert iou_matrix(a, arr((0, 0, 0, 2, 2, 1, math.pi / 4)))[0, 0] == pytest.approx(inter / (8 - inter), rel=1e-6)
    assert iou_matrix(a, arr((5, 0, 0, 2, 2, 1, 0)))[0, 0] == 0.0


def test_3d_iou_uses_height_overlap():
    a = arr((0, 0, 0, 2, 2, 2, 0))
    b = arr((0, 0, 1, 2, 2, 2, 0))   # shifted up by half its height: 4 / (8+8-4)
    assert iou_matrix(a, b, "3d")[0, 0] == pytest.approx(4 / 12)
    assert iou_matrix(a, b, "bev")[0, 0] == pytest.approx(1.0)


def test_nms_keeps_best_of_overlapping_and_separate_boxes():
    boxes = [Box(0, 0, 0, 4, 2, 1.5, 0, "Car", 0.9), Box(0.2, 0, 0, 4, 2, 1.5, 0, "Car", 0.5),
             Box(10, 0, 0, 4, 2, 1.5, 0, "Car", 0.4), Box(0.1, 0, 0, 0.6, 0.6, 1.7, 0, "Pedestrian", 0.3)]
    kept = nms_bev(boxes, 0.3)
    assert sorted(b.score for b in kept) == [0.3, 0.4, 0.9]


def test_label_files_round_trip(tmp_path):
    b = Box(12.5, -3.25, -4.1, 4.4, 1.8, 1.5, 0.3, "Car", 0.77)
    write_kitti(tmp_path / "k.txt", [b])
    write_pcdet(tmp_path / "p.txt", [b])
    for name in ("k.txt", "p.txt"):
        got = read_labels(tmp_path / name)[0]
        assert np.allclose(got.array(), b.array(), atol=2e-3) and got.cls == "Car"
    assert read_labels(tmp_path / "k.txt")[0].score == pytest.approx(0.77)
    (tmp_path / "bad.txt").write_text("Car 1 2 3\n")
    with pytest.raises(UserError, match="bad.txt:1"):
        read_labels(tmp_path / "bad.txt")


def car(x: float, score: float = 1.0) -> Box:
    return Box(x, 5, -4, 4.5, 1.8, 1.5, 0, "Car", score)


def test_ap_perfect_empty_and_ranked():
    gts = {"a": [car(0), car(10)], "b": [car(20)]}
    assert average_precision(gts, gts, "Car", 0.7)["ap"] == pytest.approx(1.0)
    assert average_precision({}, gts, "Car", 0.7)["ap"] == 0.0
    # a false positive ranked first: precision 1/2, 2/3, 3/4 at recall 1/3, 2/3, 1 -> R40 mean
    preds = {"a": [car(0, 0.8), car(10, 0.7), car(40, 0.9)], "b": [car(20, 0.6)]}
    prec = {1: 0.5, 2: 2 / 3, 3: 0.75}
    want = np.mean([max(p for k, p in prec.items() if k / 3 >= r - 1e-9) for r in np.linspace(1 / 40, 1, 40)])
    assert average_precision(preds, gts, "Car", 0.7)["ap"] == pytest.approx(want)


def test_ap_ignores_predictions_on_dontcare():
    gts = {"a": [car(0), Box(30, 5, -4, 4.5, 1.8, 1.5, 0, "DontCare")]}
    preds = {"a": [car(30, 0.9), car(0, 0.8)]}
    assert average_precision(preds, gts, "Car", 0.7)["ap"] == pytest.approx(1.0)
