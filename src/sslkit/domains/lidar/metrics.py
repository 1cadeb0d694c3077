"""KITTI-style average precision (BEV and 3D, 40 recall points) for oriented boxes."""
from __future__ import annotations

import numpy as np

from sslkit.domains.lidar.boxes import CLASSES, Box, bev_intersection, iou_matrix, to_arrays

IOU_THRESHOLDS = {"Car": 0.7, "Pedestrian": 0.5, "Cyclist": 0.5}


def _match_frame(preds: list[Box], gts: list[Box], cls: str, thr: float, mode: str) -> tuple[list[tuple[float, bool]], int]:
    """(score, true positive) for each counted prediction of `cls`, and the number of `cls` ground truths."""
    p = sorted((b for b in preds if b.cls == cls), key=lambda b: -b.score)
    g = [b for b in gts if b.cls == cls]
    dont = [b for b in gts if b.cls == "DontCare"]
    pg, _, _ = to_arrays(p)
    gg, _, _ = to_arrays(g)
    ious = iou_matrix(pg, gg, mode)
    taken = np.zeros(len(g), bool)
    out = []
    for i, b in enumerate(p):
        cand = np.where(taken, -1.0, ious[i]) if len(g) else np.zeros(0)
        j = int(np.argmax(cand)) if len(cand) else -1
        if j >= 0 and cand[j] >= thr:
            taken[j] = True
            out.append((b.score, True))
            continue
        # a prediction mostly inside a DontCare region (an object with too few points) is not counted
        if any(bev_intersection(b.array(), d.array()) >= 0.5 * b.l * b.w for d in dont):
            continue
        out.append((b.score, False))
    return out, len(g)


def average_precision(preds: dict[str, list[Box]], gts: dict[str, list[Box]], cls: str, thr: float,
                      mode: str = "bev", recall_points: int = 40) -> dict[str, float]:
    """AP over all frames of `gts` (frames without predictions count as empty)."""
    scored, n_gt = [], 0
    for frame, g in gts.items():
        s, n = _match_frame(preds.get(frame, []), g, cls, thr, mode)
        scored += s
        n_gt += n
    if n_gt == 0:
        return {"ap": float("nan"), "n_gt": 0, "n_pred": len(scored)}
    scored.sort(key=lambda t: -t[0])
    tp = np.cumsum([t for _, t in scored]) if scored else np.zeros(0)
    fp = np.cumsum([not t for _, t in scored]) if scored else np.zeros(0)
    recall = tp / n_gt if len(tp) else np.zeros(0)
    precision = tp / np.maximum(tp + fp, 1) if len(tp) else np.zeros(0)
    ap = 0.0
    for r in np.linspace(1 / recall_points, 1.0, recall_points):
        ok = recall >= r - 1e-9
        ap += float(precision[ok].max()) if ok.any() else 0.0
    return {"ap": ap / recall_points, "n_gt": n_gt, "n_pred": len(scored),
            "max_recall": float(recall[-1]) if len(recall) else 0.0}


def evaluate_sets(preds: dict[str, list[Box]], gts: dict[str, list[Box]]) -> dict[str, dict[str, dict[str, float]]]:
    """{class: {"bev": {...}, "3d": {...}, "iou": thr}} at KITTI's IoU thresholds."""
    out: dict[str, dict] = {}
    for cls in CLASSES:
        thr = IOU_THRESHOLDS[cls]
        out[cls] = {"iou": thr, "bev": average_precision(preds, gts, cls, thr, "bev"),
                    "3d": average_precision(preds, gts, cls, thr, "3d")}
    return out
