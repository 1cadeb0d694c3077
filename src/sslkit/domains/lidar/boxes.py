"""Oriented 3D boxes: corners, rotated BEV/3D IoU and class-wise BEV non-maximum suppression."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CLASSES = ("Car", "Pedestrian", "Cyclist")


@dataclass(frozen=True)
class Box:
    """Centre (x, y, z), size (l along heading, w, h), heading yaw (rad) about z, class and score."""

    x: float
    y: float
    z: float
    l: float
    w: float
    h: float
    yaw: float
    cls: str
    score: float = 1.0

    def array(self) -> np.ndarray:
        return np.array([self.x, self.y, self.z, self.l, self.w, self.h, self.yaw], np.float64)


def bev_corners(b: np.ndarray) -> np.ndarray:
    """(7,) box -> (4, 2) BEV corners, counter-clockwise."""
    c, s = math.cos(b[6]), math.sin(b[6])
    dx = np.array([1, -1, -1, 1]) * b[3] / 2
    dy = np.array([1, 1, -1, -1]) * b[4] / 2
    return np.stack([b[0] + dx * c - dy * s, b[1] + dx * s + dy * c], 1)


def _clip(subject: list[np.ndarray], a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    """Sutherland–Hodgman: keep the part of `subject` left of the edge a->b."""
    out: list[np.ndarray] = []
    if not subject:
        return out
    def side(p: np.ndarray) -> float:
        return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])
    prev = subject[-1]
    for cur in subject:
        sp, sc = side(prev), side(cur)
        if sc >= 0:
            if sp < 0:
                out.append(prev + (cur - prev) * (sp / (sp - sc)))
            out.append(cur)
        elif sp >= 0:
            out.append(prev + (cur - prev) * (sp / (sp - sc)))
        prev = cur
    return out


def _area(poly: list[np.ndarray]) -> float:
    if len(poly) < 3:
        return 0.0
    p = np.asarray(poly)
    return 0.5 * abs(float(np.dot(p[:, 0], np.roll(p[:, 1], -1)) - np.dot(p[:, 1], np.roll(p[:, 0], -1))))


def bev_intersection(a: np.ndarray, b: np.ndarray) -> float:
    """Overlap area (m²) of two oriented boxes in bird's-eye view."""
    poly = list(bev_corners(a))
    cb = bev_corners(b)
    for i in range(4):
        poly = _clip(poly, cb[i], cb[(i + 1) % 4])
    return _area(poly)


def iou_matrix(a: np.ndarray, b: np.ndarray, mode: str = "bev") -> np.ndarray:
    """(Na, 7) x (Nb, 7) -> (Na, Nb) rotated IoU, `mode` "bev" or "3d" (z is the box centre)."""
    out = np.zeros((len(a), len(b)))
    if not len(a) or not len(b):
        return out
    ra = np.hypot(a[:, 3], a[:, 4]) / 2
    rb = np.hypot(b[:, 3], b[:, 4]) / 2
    dist = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])
    for i, j in zip(*np.nonzero(dist < ra[:, None] + rb[None, :])):
        inter = bev_intersection(a[i], b[j])
        if inter <= 0:
            continue
        if mode == "bev":
            union = a[i, 3] * a[i, 4] + b[j, 3] * b[j, 4] - inter
        else:
            zo = min(a[i, 2] + a[i, 5] / 2, b[j, 2] + b[j, 5] / 2) - max(a[i, 2] - a[i, 5] / 2, b[j, 2] - b[j, 5] / 2)
            if zo <= 0:
                continue
            inter = inter * zo
            union = a[i, 3] * a[i, 4] * a[i, 5] + b[j, 3] * b[j, 4] * b[j, 5] - inter
        out[i, j] = inter / max(union, 1e-9)
    return out


def to_arrays(boxes: list[Box]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 7) geometry, (N,) class names, (N,) scores."""
    if not boxes:
        return np.zeros((0, 7)), np.zeros(0, dtype=object), np.zeros(0)
    return (np.stack([b.array() for b in boxes]), np.array([b.cls for b in boxes], dtype=object),
            np.array([b.score for b in boxes]))


def nms_bev(boxes: list[Box], iou: float) -> list[Box]:
    """Greedy class-wise BEV NMS, highest score first."""
    kept: list[Box] = []
    for cls in sorted({b.cls for b in boxes}):
        group = sorted((b for b in boxes if b.cls == cls), key=lambda b: -b.score)
        geo = np.stack([b.array() for b in group])
        ious = iou_matrix(geo, geo)
        alive = np.ones(len(group), bool)
        for i in range(len(group)):
            if not alive[i]:
                continue
            kept.append(group[i])
            alive[i + 1:] &= ious[i, i + 1:] < iou
    return kept
