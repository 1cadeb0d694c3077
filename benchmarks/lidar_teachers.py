"""Teacher speed and label quality on a simulated held-out sequence, against a scikit-learn DBSCAN pipeline.

For each teacher of the recipe: background-model build time, then frames/s and points/s of labelling
(frames already in memory; background filter + clustering + box fitting + classification), and KITTI-style
AP of its labels against the simulator's truth; then the merged labels (vote, NMS, union). The baseline,
measured in the same run on the same frames and the same foreground, replaces the grid clustering with
scikit-learn's DBSCAN (eps 0.5 m, min_samples 3, xyz) — the straightforward research-code pipeline.

    python benchmarks/lidar_teachers.py [--frames 100] [--beams 32] [--data DIR] [--recipe pointpillars-tiny]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, help="a simulated sequence (velodyne/ + label_2/); default: simulate one")
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--beams", type=int, default=32)
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--recipe", default="pointpillars-tiny")
    a = ap.parse_args()
    data = a.data or Path(f"bench-lidar-teachers-{a.beams}b-s{a.seed}")
    if not data.exists():
        subprocess.run([sys.executable, "-m", "sslkit", "lidar", "simulate", str(data), "--frames", str(a.frames),
                        "--beams", str(a.beams), "--seed", str(a.seed)], check=True)

    from sklearn.cluster import DBSCAN

    from sslkit.core.recipes import load_recipe
    from sslkit.domains.lidar.boxes import Box
    from sslkit.domains.lidar.io import list_frames, read_frame
    from sslkit.domains.lidar.labels import read_labels
    from sslkit.domains.lidar.method import LidarRecipe
    from sslkit.domains.lidar.metrics import evaluate_sets
    from sslkit.domains.lidar.teachers import Teacher, merge_teachers

    cfg = load_recipe(LidarRecipe, "lidar", a.recipe)
    files = list_frames(data)
    frames = [read_frame(f) for f in files]
    names = [f.stem for f in files]
    truth = {f.stem: read_labels(data / "label_2" / f"{f.stem}.txt") for f in files}
    n_pts = sum(len(f) for f in frames)
    print(f"{len(frames)} frames, {n_pts / len(frames):.0f} points/frame ({a.beams} beams), "
          f"{os.cpu_count()} CPUs (shared machine: figures taken under load)")
    rows, per_teacher = [], []

    def row(name: str, labels: list[list[Box]], secs: float | None, bg: float | None) -> list:
        ap_ = evaluate_sets(dict(zip(names, labels)), truth)
        fps = f"{len(frames) / secs:8.1f}" if secs else f"{'':>8}"
        pps = f"{n_pts / secs / 1e6:8.2f}" if secs else f"{'':>8}"
        bgs = f"{bg:6.2f}" if bg is not None else f"{'':>6}"
        r = [name, fps, pps, bgs] + [f"{ap_[c]['bev']['ap']:.3f}" for c in ("Car", "Pedestrian", "Cyclist")] + \
            [f"{ap_['Car']['3d']['ap']:.3f}"]
        rows.append(r)
        return r

    teachers = []
    for tc in cfg.teachers:
        t = Teacher(tc)
        t0 = time.perf_counter()
        t.fit_background(frames)
        bg = time.perf_counter() - t0
        t.label(frames[0])  # warm-up (imports)
        t0 = time.perf_counter()
        labels = [t.label(f) for f in frames]
        row(tc.name, labels, time.perf_counter() - t0, bg)
        per_teacher.append(labels)
        teachers.append(t)
    for rule in ("vote", "nms", "union"):
        row(f"merged:{rule}", [merge_teachers([p[i] for p in per_teacher], rule, cfg.merge.iou) for i in range(len(frames))],
            None, None)

    # baseline: same background model and foreground as teacher 1, scikit-learn DBSCAN instead of the grid
    t = teachers[0]
    sk = DBSCAN(eps=0.5, min_samples=3)

    def sk_label(points: np.ndarray) -> list[Box]:
        fg = t.foreground(points)
        ids = sk.fit_predict(fg[:, :3]) if len(fg) >= 3 else np.full(len(fg), -1)
        return t.boxes_from_clusters(fg, ids)  # the same box fitting + classification

    sk_label(frames[0])
    t0 = time.perf_counter()
    base = [sk_label(f) for f in frames]
    base_s = time.perf_counter() - t0
    row("sklearn-DBSCAN", base, base_s, None)
    t0 = time.perf_counter()
    for f in frames:
        teachers[0].label(f)
    ours = time.perf_counter() - t0

    head = ["labels", "frames/s", "Mpts/s", "bg s", "Car BEV", "Ped BEV", "Cyc BEV", "Car 3D"]
    print(f"\nteachers on {data} (AP R40 vs truth; Car IoU 0.7, Ped/Cyc 0.5)")
    print(f"{head[0]:<16}" + "".join(f"{h:>9}" for h in head[1:]))
    for r in rows:
        print(f"{r[0]:<16}" + "".join(f"{str(x).strip():>9}" for x in r[1:]))
    print(f"\nspeed: {teachers[0].cfg.name} labels {len(frames) / ours:.1f} frames/s vs sklearn-DBSCAN pipeline "
          f"{len(frames) / base_s:.1f} frames/s -> {base_s / ours:.1f}x faster (re-timed back to back)")


if __name__ == "__main__":
    main()
