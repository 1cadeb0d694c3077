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
    # a 4×2 box against itself turned 90°: a 2×2 overlap, 4 / (8 + 8 - 4); ignoring yaw would give 1
    r = arr((0, 0, 0, 4, 2, 1, 0))
    assert iou_matrix(r, arr((0, 0, 0, 4, 2, 1, math.pi / 2)))[0, 0] == pytest.approx(1 / 3)
    assert iou_matrix(r, arr((0, 0, 0, 4, 2, 1, math.pi)))[0, 0] == pytest.approx(1.0)       # turned 180°: the same box


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


KITTI_LINE = "Car 0.00 0 1.57 0.00 0.00 0.00 0.00 1.500 1.800 4.400 12.500 -3.250 -4.850 0.3000 0.7700"


def test_kitti_line_fields_by_position(tmp_path):
    """type trunc occ alpha x1 y1 x2 y2 h w l x y z_bottom yaw score: read field by field, and written back the same."""
    (tmp_path / "k.txt").write_text(KITTI_LINE + "\n")
    (b,) = read_labels(tmp_path / "k.txt")
    assert (b.cls, b.h, b.w, b.l) == ("Car", 1.5, 1.8, 4.4)                # h w l order, not l w h
    assert (b.x, b.y) == (12.5, -3.25)
    assert b.z == pytest.approx(-4.85 + 1.5 / 2)                           # bottom z in the file, box centre in Box
    assert (b.yaw, b.score) == (0.3, 0.77)
    written = Box(12.5, -3.25, -4.1, 4.4, 1.8, 1.5, 0.3, "Car", 0.77)
    from sslkit.domains.lidar.labels import kitti_line

    fields = kitti_line(written).split()
    assert fields[8:] == KITTI_LINE.split()[8:]                            # size, bottom centre, yaw, score
    assert float(fields[3]) == pytest.approx(-math.atan2(-3.25, 12.5) + 0.3, abs=0.005)   # alpha
    (tmp_path / "p.txt").write_text("12.5 -3.25 -4.1 4.4 1.8 1.5 0.3 Car\n")        # OpenPCDet: centre, l w h
    assert read_labels(tmp_path / "p.txt")[0].array().tolist() == written.array().tolist()


def car(x: float, score: float = 1.0) -> Box:
    return Box(x, 5, -4, 4.5, 1.8, 1.5, 0, "Car", score)


def test_ap_perfect_empty_and_ranked():
    gts = {"a": [car(0), car(10)], "b": [car(20)]}
    assert average_precision(gts, gts, "Car", 0.7)["ap"] == pytest.approx(1.0)
    assert average_precision({}, gts, "Car", 0.7)["ap"] == 0.0
    # a false positive ranked first: precision 1/2, 2/3, 3/4 at recall 1/3, 2/3, 1; the interpolated precision
    # (best at any recall >= r) is 3/4 at all 40 recall points
    preds = {"a": [car(0, 0.8), car(10, 0.7), car(40, 0.9)], "b": [car(20, 0.6)]}
    assert average_precision(preds, gts, "Car", 0.7)["ap"] == pytest.approx(0.75)


def test_ap_interpolation_by_hand():
    # ranked TP, FP, TP, FP over 4 ground truths: (recall, precision) = (1/4, 1), (1/4, 1/2), (1/2, 2/3), (1/2, 1/2)
    # recall points r = 1/40 … 10/40 -> best precision at recall >= r is 1; 11/40 … 20/40 -> 2/3; above 1/2 -> 0
    # AP = (10 · 1 + 10 · 2/3 + 20 · 0) / 40 = 5/12
    gts = {"a": [car(0), car(10), car(20), car(30)]}
    preds = {"a": [car(0, 0.9), car(50, 0.8), car(10, 0.7), car(60, 0.6)]}
    res = average_precision(preds, gts, "Car", 0.7)
    assert res["ap"] == pytest.approx(5 / 12) and res["max_recall"] == 0.5 and res["n_pred"] == 4


def test_ap_duplicate_detection_is_a_false_positive():
    # two boxes on the first car, then the second car: TP (1/2, 1), duplicate FP (1/2, 1/2), TP (1, 2/3)
    # AP = (20 · 1 + 20 · 2/3) / 40 = 5/6; counting the duplicate as a hit would give recall above 1
    gts = {"a": [car(0), car(10)]}
    preds = {"a": [car(0, 0.9), car(0.1, 0.8), car(10, 0.7)]}
    res = average_precision(preds, gts, "Car", 0.7)
    assert res["ap"] == pytest.approx(5 / 6) and res["max_recall"] == 1.0


def test_ap_iou_just_under_and_over_the_threshold():
    # a 4.5 × 1.8 car shifted d along its length: IoU = (4.5 - d)·1.8 / (2 · 8.1 - (4.5 - d)·1.8)
    gts = {"a": [car(0)]}
    under, over = car(0.80), car(0.78)               # IoU 6.66 / 9.54 = 0.6981 and 6.696 / 9.504 = 0.7045
    assert iou_matrix(car(0).array()[None], under.array()[None])[0, 0] == pytest.approx(6.66 / 9.54)
    assert iou_matrix(car(0).array()[None], over.array()[None])[0, 0] == pytest.approx(6.696 / 9.504)
    assert average_precision({"a": [under]}, gts, "Car", 0.7)["ap"] == 0.0
    assert average_precision({"a": [over]}, gts, "Car", 0.7)["ap"] == 1.0


def test_ap_3d_mode_counts_height_offset():
    # the same BEV box 0.3 m higher: 3D IoU = 8.1 · 1.2 / (2 · 8.1 · 1.5 - 8.1 · 1.2) = 2/3 < 0.7, BEV IoU = 1
    gts = {"a": [car(0)]}
    high = {"a": [Box(0, 5, -3.7, 4.5, 1.8, 1.5, 0, "Car", 0.9)]}
    assert average_precision(high, gts, "Car", 0.7, mode="bev")["ap"] == 1.0
    assert average_precision(high, gts, "Car", 0.7, mode="3d")["ap"] == 0.0
    assert average_precision(high, gts, "Car", 0.6, mode="3d")["ap"] == 1.0


def test_ap_without_ground_truth_is_undefined_not_zero():
    preds = {"a": [car(0, 0.9)]}
    res = average_precision(preds, {"a": [Box(0, 0, 0, 0.6, 0.6, 1.7, 0, "Pedestrian")]}, "Car", 0.7)
    assert math.isnan(res["ap"]) and res["n_gt"] == 0 and res["n_pred"] == 1


def test_ap_ignores_predictions_on_dontcare():
    gts = {"a": [car(0), Box(30, 5, -4, 4.5, 1.8, 1.5, 0, "DontCare")]}
    preds = {"a": [car(30, 0.9), car(0, 0.8)]}
    assert average_precision(preds, gts, "Car", 0.7)["ap"] == pytest.approx(1.0)
