"""Run several statistical teachers over a sequence, merge their labels, write label folders + summary."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from sslkit.core.errors import UserError
from sslkit.domains.lidar.boxes import Box
from sslkit.domains.lidar.io import MAX_COORD, clean_frame, read_frame
from sslkit.domains.lidar.teachers import Teacher, merge_teachers


def load_sequence(files: list[Path]) -> tuple[list[Path], list[np.ndarray], dict[str, int], list[str]]:
    """Read and clean frames; empty frames are skipped and invalid points dropped (all counted).
    A frame that is mostly out-of-range values is not a frame: `clean_frame` refuses it (UserError)."""
    kept, frames, notes = [], [], []
    counts = {"frames_read": 0, "empty_frames_skipped": 0, "nonfinite_points_dropped": 0, "frames_with_nonfinite": 0,
              "out_of_range_points_dropped": 0, "frames_with_out_of_range": 0}
    for f in files:
        pts, bad, far = clean_frame(read_frame(f), f)
        counts["frames_read"] += 1
        if bad:
            counts["nonfinite_points_dropped"] += bad
            counts["frames_with_nonfinite"] += 1
            notes.append(f"{f.name}: dropped {bad} NaN/inf points")
        if far:
            counts["out_of_range_points_dropped"] += far
            counts["frames_with_out_of_range"] += 1
            notes.append(f"{f.name}: dropped {far} points beyond ±{MAX_COORD:g} m or with absurd intensity")
        if len(pts) == 0:
            counts["empty_frames_skipped"] += 1
            notes.append(f"{f.name}: empty frame skipped")
            continue
        kept.append(f)
        frames.append(pts)
    return kept, frames, counts, notes


def run_teachers(frames: list[np.ndarray], recipe, n_teachers: int | None = None) -> tuple[list[list[list[Box]]], list[list[Box]], dict]:  # noqa: ANN001
    """Per-teacher labels [teacher][frame], merged labels [frame], and timing."""
    cfgs = recipe.teachers[: n_teachers or len(recipe.teachers)]
    need = recipe.background.min_frames
    if len(frames) < need:
        raise UserError(f"the background model needs at least {need} non-empty frames of one static sensor, got "
                        f"{len(frames)} — add frames or lower it with --set background.min_frames={max(2, len(frames))}")
    sample = np.linspace(0, len(frames) - 1, min(len(frames), recipe.background.max_frames)).round().astype(int)
    per_teacher, timing = [], {"teachers": []}
    for cfg in cfgs:
        teacher = Teacher(cfg)
        t0 = time.perf_counter()
        teacher.fit_background([frames[i] for i in sample])
        t1 = time.perf_counter()
        per_teacher.append([teacher.label(f) for f in frames])
        t2 = time.perf_counter()
        timing["teachers"].append({"name": cfg.name, "background_s": t1 - t0, "label_s": t2 - t1,
                                   "frames_per_s": len(frames) / max(t2 - t1, 1e-9),
                                   "points_per_s": sum(len(f) for f in frames) / max(t2 - t1, 1e-9)})
    t0 = time.perf_counter()
    merged = [merge_teachers([p[i] for p in per_teacher], recipe.merge.rule, recipe.merge.iou, recipe.merge.min_votes)
              for i in range(len(frames))]
    timing["merge_s"] = time.perf_counter() - t0
    return per_teacher, merged, timing


def write_label_sets(out: Path, names: list[str], per_teacher: list[list[list[Box]]], merged: list[list[Box]],
                     teacher_names: list[str]) -> None:
    """out/<teacher>/label_2, out/<teacher>/pcdet and the same for out/combined/."""
    from sslkit.domains.lidar.labels import write_kitti, write_pcdet

    sets = list(zip(teacher_names, per_teacher)) + [("combined", merged)]
    for name, labels in sets:
        for sub in ("label_2", "pcdet"):
            (out / name / sub).mkdir(parents=True, exist_ok=True)
        for frame, boxes in zip(names, labels):
            write_kitti(out / name / "label_2" / f"{frame}.txt", boxes)
            write_pcdet(out / name / "pcdet" / f"{frame}.txt", boxes)


def summary(names: list[str], per_teacher, merged, teacher_names, timing: dict, counts: dict, rule: str) -> dict:  # noqa: ANN001
    def per_class(sets: list[list[Box]]) -> dict[str, int]:
        out: dict[str, int] = {}
        for boxes in sets:
            for b in boxes:
                out[b.cls] = out.get(b.cls, 0) + 1
        return out

    return {"frames": len(names), "merge_rule": rule, **counts,
            "teachers": {n: per_class(p) for n, p in zip(teacher_names, per_teacher)},
            "combined": per_class(merged), "timing": timing}


def dump(path: Path, payload: dict) -> None:
    from sslkit.core.files import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2))
