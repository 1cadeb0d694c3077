"""Training samples for the student: cropped frames plus CenterPoint-style heatmap/regression targets."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from sslkit.core.errors import UserError
from sslkit.domains.lidar.boxes import CLASSES, Box


def crop(points: np.ndarray, x_range, y_range, z_range) -> np.ndarray:  # noqa: ANN001
    """Points inside the detection region (the pillar grid)."""
    m = ((points[:, 0] >= x_range[0]) & (points[:, 0] < x_range[1]) & (points[:, 1] >= y_range[0])
         & (points[:, 1] < y_range[1]) & (points[:, 2] >= z_range[0]) & (points[:, 2] < z_range[1]))
    return points[m]


def build_targets(boxes: list[Box], enc, max_objects: int) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """Heatmap (K, H, W) with a Gaussian per object, plus (M,) cell index, (M, 8) regression and mask."""
    cell = enc.out_cell
    h, w = (enc.nx + 1) // 2, (enc.ny + 1) // 2  # stride-2 conv with padding 1 rounds up
    hm = np.zeros((len(CLASSES), h, w), np.float32)
    ind = np.zeros(max_objects, np.int64)
    reg = np.zeros((max_objects, 8), np.float32)
    mask = np.zeros(max_objects, np.float32)
    k = 0
    for b in boxes:
        if b.cls not in CLASSES or k >= max_objects:
            continue
        u, v = (b.x - enc.x_range[0]) / cell, (b.y - enc.y_range[0]) / cell
        iu, iv = int(u), int(v)
        if not (0 <= iu < h and 0 <= iv < w):
            continue
        radius = max(1, int(0.35 * min(b.l, b.w * 2) / cell + 0.5))
        sigma = (2 * radius + 1) / 6
        uu, vv = np.arange(max(0, iu - radius), min(h, iu + radius + 1)), np.arange(max(0, iv - radius), min(w, iv + radius + 1))
        g = np.exp(-((uu[:, None] - iu) ** 2 + (vv[None, :] - iv) ** 2) / (2 * sigma * sigma))
        c = CLASSES.index(b.cls)
        hm[c, uu[0]:uu[-1] + 1, vv[0]:vv[-1] + 1] = np.maximum(hm[c, uu[0]:uu[-1] + 1, vv[0]:vv[-1] + 1], g)
        ind[k] = iu * w + iv
        reg[k] = [u - iu, v - iv, b.z, math.log(b.l), math.log(b.w), math.log(b.h), math.sin(2 * b.yaw), math.cos(2 * b.yaw)]
        mask[k] = 1.0
        k += 1
    return {"heatmap": torch.from_numpy(hm), "ind": torch.from_numpy(ind), "reg": torch.from_numpy(reg),
            "mask": torch.from_numpy(mask)}


class StudentFrames(Dataset):
    """Frames with (pseudo-)labels; x-flip augmentation drawn per item (seeded by fit)."""

    def __init__(self, frames: list[np.ndarray], labels: list[list[Box]], enc, max_objects: int = 64,  # noqa: ANN001
                 flip: bool = True) -> None:
        self.points = [crop(f, enc.x_range, enc.y_range, enc.z_range) for f in frames]
        self.labels, self.enc, self.max_objects, self.flip = labels, enc, max_objects, flip

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        pts, boxes = self.points[i], self.labels[i]
        lo, hi = self.enc.x_range
        if self.flip and abs(lo + hi) < 1e-6 and torch.rand(()) < 0.5:  # mirror along x (road runs along x)
            pts = pts * np.array([-1, 1, 1, 1], np.float32)
            boxes = [Box(-b.x, b.y, b.z, b.l, b.w, b.h, math.pi - b.yaw, b.cls, b.score) for b in boxes]
        return {"points": torch.from_numpy(np.ascontiguousarray(pts)), **build_targets(boxes, self.enc, self.max_objects)}


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    pts = [torch.cat([torch.full((len(it["points"]), 1), float(i)), it["points"]], 1) for i, it in enumerate(items)]
    out = {k: torch.stack([it[k] for it in items]) for k in ("heatmap", "ind", "reg", "mask")}
    out["points"] = torch.cat(pts)
    return out


def pair_labels(frame_files: list[Path], label_map: dict[str, Path]) -> tuple[list[Path], list[Path], dict[str, int]]:
    """Frames that have a label file, in order; labels without frames and frames without labels are counted."""
    names = {p.stem for p in frame_files}
    orphans = sorted(set(label_map) - names)
    unlabelled = [p for p in frame_files if p.stem not in label_map]
    kept = [p for p in frame_files if p.stem in label_map]
    if not kept:
        raise UserError(f"none of the {len(frame_files)} frames has a label file (labels are named like "
                        f"{next(iter(label_map))}.txt) — point LABELS at the labels of these frames")
    return kept, [label_map[p.stem] for p in kept], {"labels_without_frame": len(orphans),
                                                     "frames_without_labels": len(unlabelled),
                                                     "first_orphan": orphans[0] if orphans else ""}
