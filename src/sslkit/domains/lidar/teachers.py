"""DINOSTAR-style statistical teachers: background model -> foreground clusters -> oriented boxes -> classes.

A teacher learns a voxel occupancy background model from the sequence itself (a voxel occupied in at
least `bg_min_frac` of the sampled frames is static scene: ground, kerbs, walls, poles, trees), keeps
the other points as foreground, groups them by BEV grid connectivity (or Open3D DBSCAN), fits an
oriented rectangle (L-shape closeness criterion or minimum area), takes the height from the points and
the learned ground, and classifies the box with size rules that also complete partly seen cars to a
prior size. Several teachers with different settings are merged by `merge_teachers`.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field

from sslkit.core.recipes import Section
from sslkit.domains.lidar.boxes import Box, iou_matrix, nms_bev

OFF = 1 << 20
# Class priors: (length, width, height) mean and spread, used for confidence and amodal completion.
PRIORS = {"Car": ((4.45, 1.8, 1.58), (0.5, 0.2, 0.2)),
          "Pedestrian": ((0.6, 0.58, 1.72), (0.2, 0.2, 0.15)),
          "Cyclist": ((1.75, 0.65, 1.72), (0.25, 0.2, 0.15))}


class TeacherConfig(Section):
    name: str = Field("t", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="also its output folder name")
    voxel: float = Field(0.3, ge=0.01, description="background voxel edge (m); keys pack ±1000 m / voxel in 21 bits")
    bg_min_frac: float = Field(0.2, gt=0, le=1, description="occupied in >= this fraction of frames = background")
    bg_dilate: bool = True
    cluster: Literal["grid", "dbscan"] = "grid"
    cell: float = Field(0.4, ge=0.05, description="BEV grid cell (grid) or DBSCAN eps (m); the grid is dense")
    smear: float = Field(0.03, ge=0, le=0.5, description="grid clustering joins points along their bearing within ± this x range / 2")
    min_points: int = Field(8, ge=1)
    fit: Literal["lshape", "minarea"] = "lshape"
    angle_step_deg: float = Field(1.0, gt=0, le=15)
    max_range: float = Field(80.0, gt=0, le=1000, description="points beyond this BEV range (m) are ignored")


def voxel_keys(xyz: np.ndarray, size: float) -> np.ndarray:
    """(N, 3) -> (N,) int64 keys of the voxels holding each point."""
    idx = np.floor(xyz / size).astype(np.int64) + OFF
    return (idx[:, 0] << 42) | (idx[:, 1] << 21) | idx[:, 2]


class Background:
    """Voxel occupancy statistics over a sequence (static scene) plus a 1 m ground-height map."""

    def __init__(self, voxel: float, min_frac: float, dilate: bool = True) -> None:
        self.voxel, self.min_frac, self.dilate = voxel, min_frac, dilate
        self.keys = np.zeros(0, np.int64)
        self.ground_keys = np.zeros(0, np.int64)
        self.ground_z = np.zeros(0, np.float32)

    def fit(self, frames: list[np.ndarray]) -> Background:
        per_frame = [np.unique(voxel_keys(f[:, :3], self.voxel)) for f in frames]
        keys, counts = np.unique(np.concatenate(per_frame), return_counts=True)
        bg = keys[counts >= max(1, math.ceil(self.min_frac * len(frames)))]
        if self.dilate:  # a voxel above/below a static one is static too (range noise crosses voxel faces)
            bg = np.unique(np.concatenate([bg, bg + 1, bg - 1]))
        self.keys = bg
        pts = np.concatenate([f[self.is_background(f)][:, :3] for f in frames])
        cells = _cell_keys(pts[:, :2], 1.0)
        order = np.lexsort((pts[:, 2], cells))
        cells, z = cells[order], pts[order, 2]
        first = np.r_[0, np.nonzero(np.diff(cells))[0] + 1]
        self.ground_keys, self.ground_z = cells[first], z[first].astype(np.float32)
        self.plane = _ground_plane(self.ground_keys, self.ground_z)
        return self

    def is_background(self, points: np.ndarray) -> np.ndarray:
        k = voxel_keys(points[:, :3], self.voxel)
        pos = np.searchsorted(self.keys, k).clip(0, max(len(self.keys) - 1, 0))
        return (self.keys[pos] == k) if len(self.keys) else np.zeros(len(k), bool)

    def ground_at(self, xy: np.ndarray) -> np.ndarray:
        """Ground height (m) under each xy: the lowest static z of its 1 m cell when that lies near the
        fitted ground plane, else the plane (cells never seen, e.g. the blind circle under the pole)."""
        plane = self.plane[0] + xy @ self.plane[1:]
        k = _cell_keys(xy, 1.0)
        pos = np.searchsorted(self.ground_keys, k).clip(0, max(len(self.ground_keys) - 1, 0))
        hit = self.ground_keys[pos] == k if len(self.ground_keys) else np.zeros(len(k), bool)
        cell = self.ground_z[pos] if len(self.ground_z) else plane
        return np.where(hit & (np.abs(cell - plane) < 0.4), cell, plane)


def _ground_plane(keys: np.ndarray, z: np.ndarray, rounds: int = 4) -> np.ndarray:
    """(a, b, c) of z = a + b x + c y fitted to the lowest static point per cell, trimming outliers."""
    if len(keys) < 3:
        return np.array([float(z.min()) if len(z) else 0.0, 0.0, 0.0])
    xy = np.stack([(keys >> 21) - OFF, (keys & ((1 << 21) - 1)) - OFF], 1).astype(np.float64) + 0.5
    use = z <= np.quantile(z, 0.6)  # walls and canopies have their lowest points above the road
    coef = np.zeros(3)
    for _ in range(rounds):
        a = np.c_[np.ones(use.sum()), xy[use]]
        coef, *_ = np.linalg.lstsq(a, z[use], rcond=None)
        res = z - (coef[0] + xy @ coef[1:])
        use = np.abs(res) < max(0.15, 2.5 * float(np.median(np.abs(res[use]))))
    return coef


def _cell_keys(xy: np.ndarray, size: float) -> np.ndarray:
    idx = np.floor(xy / size).astype(np.int64) + OFF
    return (idx[:, 0] << 21) | idx[:, 1]


def grid_clusters(xy: np.ndarray, cell: float, smear: float = 0.0) -> np.ndarray:
    """(N, 2) -> (N,) cluster ids by 8-connectivity of occupied BEV cells.

    Far objects are hit by rings about range x beam spacing apart, so each point also marks the cells
    along its own bearing within ±smear x range / 2: ring slices of one object join, while objects side
    by side (apart across the bearing) stay apart.
    """
    from scipy import ndimage

    if not len(xy):
        return np.zeros(0, np.int64)
    r = np.hypot(xy[:, 0], xy[:, 1])
    marks = xy
    if smear > 0:
        m = int(np.ceil(smear * r.max() / cell)) + 1
        t = np.linspace(-0.5, 0.5, max(m, 2))
        unit = xy / np.maximum(r, 1e-6)[:, None]
        marks = np.concatenate([xy, (xy[:, None, :] + unit[:, None, :] * (smear * r)[:, None, None] * t[None, :, None])
                                .reshape(-1, 2)])
    origin = marks.min(0)
    ij_all = np.floor((marks - origin) / cell).astype(np.int64)
    grid = np.zeros(tuple(ij_all.max(0) + 1), bool)
    grid[ij_all[:, 0], ij_all[:, 1]] = True
    ij = ij_all[:len(xy)]
    lab, _ = ndimage.label(grid, structure=np.ones((3, 3), bool))
    return lab[ij[:, 0], ij[:, 1]].astype(np.int64) - 1


def dbscan_clusters(xyz: np.ndarray, eps: float, min_points: int) -> np.ndarray:
    import open3d as o3d

    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz.astype(np.float64)))
    return np.asarray(pcd.cluster_dbscan(eps=eps, min_points=min(min_points, 5)), dtype=np.int64)


def fit_rectangle(xy: np.ndarray, fit: str, step_deg: float) -> tuple[float, float, float, float, float]:
    """Oriented BEV rectangle (cx, cy, length, width, yaw) of a point cluster (N, 2).

    lshape: the closeness criterion of Zhang et al. (2017); minarea: smallest enclosing area.
    """
    theta = np.radians(np.arange(0, 90, step_deg))
    e1 = np.stack([np.cos(theta), np.sin(theta)], 1)
    e2 = np.stack([-np.sin(theta), np.cos(theta)], 1)
    c1, c2 = e1 @ xy.T, e2 @ xy.T  # (A, N)
    lo1, hi1, lo2, hi2 = c1.min(1), c1.max(1), c2.min(1), c2.max(1)
    if fit == "minarea":
        score = -(hi1 - lo1) * (hi2 - lo2)
    else:
        d1 = np.minimum(hi1[:, None] - c1, c1 - lo1[:, None])
        d2 = np.minimum(hi2[:, None] - c2, c2 - lo2[:, None])
        d = np.maximum(np.minimum(d1, d2), 0.05)
        score = (1.0 / d).sum(1)
    a = int(np.argmax(score))
    m1, m2 = (lo1[a] + hi1[a]) / 2, (lo2[a] + hi2[a]) / 2
    cx, cy = m1 * e1[a] + m2 * e2[a]
    l1, l2 = hi1[a] - lo1[a], hi2[a] - lo2[a]
    yaw = float(theta[a])
    if l2 > l1:
        l1, l2, yaw = l2, l1, yaw + math.pi / 2
    return float(cx), float(cy), float(l1), float(l2), yaw


def classify(l: float, w: float, h: float, n: int) -> tuple[str | None, float]:
    """Class and confidence from observed BEV extent (l >= w), height and point count."""
    if h < 0.9 or h > 2.6 or l > 7.0:
        return None, 0.0
    if l >= 2.4 or w >= 1.25:
        cls = "Car"
    elif l >= 1.25 and w < 1.1 and h >= 1.3:
        cls = "Cyclist"
    elif l < 1.25 and w < 1.1 and h >= 1.2:
        cls = "Pedestrian"
    else:
        return None, 0.0
    mean, std = PRIORS[cls]
    # only penalise what was seen: a dimension smaller than the prior may just be occluded
    over = [max(0.0, o - m) / s for o, m, s in zip((l, w), mean[:2], std[:2])]
    z = over + [(h - mean[2]) / std[2]]
    conf = math.exp(-0.5 * sum(v * v for v in z) / 3) * (1 - math.exp(-n / 25))
    return cls, float(conf)


def complete(cls: str, cx: float, cy: float, l: float, w: float, yaw: float) -> tuple[float, float, float, float]:
    """Grow a partly seen box to its class prior size, away from the sensor (the hidden side)."""
    mean = PRIORS[cls][0]
    e1 = np.array([math.cos(yaw), math.sin(yaw)])
    e2 = np.array([-math.sin(yaw), math.cos(yaw)])
    c = np.array([cx, cy])
    for axis, seen, prior in ((e1, l, mean[0]), (e2, w, mean[1])):
        if seen < prior:
            away = 1.0 if float(c @ axis) >= 0 else -1.0
            c = c + axis * away * (prior - seen) / 2
    return float(c[0]), float(c[1]), max(l, mean[0]), max(w, mean[1])


class Teacher:
    """One statistical teacher; `fit_background` on the sequence, then `label(frame)` per frame."""

    def __init__(self, cfg: TeacherConfig) -> None:
        self.cfg = cfg
        self.background = Background(cfg.voxel, cfg.bg_min_frac, cfg.bg_dilate)

    def fit_background(self, frames: list[np.ndarray]) -> Teacher:
        self.background.fit(frames)
        return self

    def foreground(self, points: np.ndarray) -> np.ndarray:
        r = np.hypot(points[:, 0], points[:, 1])
        return points[(r <= self.cfg.max_range) & ~self.background.is_background(points)]

    def label(self, points: np.ndarray) -> list[Box]:
        """(N, 4) frame -> boxes with class and confidence."""
        cfg = self.cfg
        fg = self.foreground(points)
        if len(fg) < cfg.min_points:
            return []
        ids = grid_clusters(fg[:, :2], cfg.cell, cfg.smear) if cfg.cluster == "grid" else dbscan_clusters(fg[:, :3], cfg.cell, cfg.min_points)
        return self.boxes_from_clusters(fg, ids)

    def boxes_from_clusters(self, fg: np.ndarray, ids: np.ndarray) -> list[Box]:
        """(M, 4) foreground points and (M,) cluster ids (-1 = noise) -> classified oriented boxes."""
        cfg = self.cfg
        keep = ids >= 0
        fg, ids = fg[keep], ids[keep]
        order = np.argsort(ids, kind="stable")
        fg, ids = fg[order], ids[order]
        bounds = np.r_[0, np.nonzero(np.diff(ids))[0] + 1, len(ids)]
        sizes = np.diff(bounds)
        boxes = []
        for s, e in zip(bounds[:-1][sizes >= cfg.min_points], bounds[1:][sizes >= cfg.min_points]):
            pts = fg[s:e]
            cx, cy, l, w, yaw = fit_rectangle(pts[:, :2].astype(np.float64), cfg.fit, cfg.angle_step_deg)
            top = float(pts[:, 2].max())
            bottom = min(float(self.background.ground_at(np.array([[cx, cy]]))[0]), float(pts[:, 2].min()))
            h = top - bottom
            cls, conf = classify(l, w, h, e - s)
            if cls is None:
                continue
            if cls == "Car":
                cx, cy, l, w = complete(cls, cx, cy, l, w, yaw)
            else:
                mean = PRIORS[cls][0]
                l, w = max(l, 0.8 * mean[0]), max(w, 0.8 * mean[1])
            yaw = (yaw + math.pi / 2) % math.pi - math.pi / 2
            boxes.append(Box(cx, cy, bottom + h / 2, l, w, h, yaw, cls, conf))
        return boxes


def merge_teachers(per_teacher: list[list[Box]], rule: str = "vote", iou: float = 0.3, min_votes: int = 1) -> list[Box]:
    """Combine the teachers' boxes of one frame.

    vote: group boxes of different teachers that overlap (BEV IoU >= iou), keep groups seen by at
    least `min_votes` teachers, average their geometry (score-weighted; yaw of the best box), take
    the majority class, and score = mean member score x votes / teachers, so consensus ranks first.
    nms: union followed by class-wise BEV NMS. union: all boxes.
    """
    every = [b for boxes in per_teacher for b in boxes]
    if rule == "union" or not every:
        return every
    if rule == "nms":
        return drop_contained(nms_bev(every, iou))
    owner = np.concatenate([[t] * len(b) for t, b in enumerate(per_teacher)]).astype(int)
    geo = np.stack([b.array() for b in every])
    ious = iou_matrix(geo, geo)
    order = np.argsort([-b.score for b in every])
    used = np.zeros(len(every), bool)
    merged = []
    for i in order:
        if used[i]:
            continue
        members = [i]
        for t in range(len(per_teacher)):
            if t == owner[i]:
                continue
            cand = [j for j in np.nonzero((owner == t) & ~used & (ious[i] >= iou))[0]]
            if cand:
                members.append(max(cand, key=lambda j: ious[i, j]))
        used[members] = True
        if len(members) < min_votes:
            continue
        wts = np.array([every[j].score for j in members]) + 1e-6
        # centre: score-weighted mean; size and height: the median member (robust to one bad fit)
        g = np.r_[(geo[members, :3] * wts[:, None]).sum(0) / wts.sum(), np.median(geo[members, 3:6], 0)]
        classes = [every[j].cls for j in members]
        cls = max(set(classes), key=lambda c: (classes.count(c), c == every[i].cls))
        score = float(np.mean([every[j].score for j in members]) * len(members) / len(per_teacher))
        merged.append(Box(*map(float, g), every[i].yaw, cls, score))
    return drop_contained(merged)


def drop_contained(boxes: list[Box], frac: float = 0.5) -> list[Box]:
    """Drop a box lying mostly (>= frac of its BEV area) inside a larger, surer box of another class:
    a piece of a car split off by one teacher is not a pedestrian."""
    from sslkit.domains.lidar.boxes import bev_intersection

    keep = []
    for b in boxes:
        inside = any(o.cls != b.cls and o.score >= b.score and o.l * o.w > b.l * b.w
                     and bev_intersection(b.array(), o.array()) >= frac * b.l * b.w for o in boxes)
        if not inside:
            keep.append(b)
    return keep
