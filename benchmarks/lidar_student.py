"""Student trained on pseudo-labels vs the same student trained on true labels (same steps), on held-out frames.

DINOSTAR's claim: a detector trained on the teachers' combined labels is comparable to one trained on human
labels. Both students use the same recipe, steps and seed; both are scored with KITTI-style BEV/3D AP (R40)
against the simulator's truth on a held-out sequence (another seed: other traffic, slope and buildings).

    python benchmarks/lidar_student.py [--steps 600] [--train DIR --heldout DIR --pseudo DIR] [--work DIR]

Without data folders it simulates them (needs open3d) and runs the teachers first. Prints a table.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def sslkit(*args: str) -> float:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "sslkit", *args], capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"sslkit {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("bench-lidar-student"))
    ap.add_argument("--train", type=Path)
    ap.add_argument("--heldout", type=Path)
    ap.add_argument("--pseudo", type=Path, help="pseudo-label output for --train (else the teachers run here)")
    ap.add_argument("--recipe", default="pointpillars-tiny")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    w = a.work
    w.mkdir(parents=True, exist_ok=True)
    train = a.train or w / "train"
    heldout = a.heldout or w / "heldout"
    if a.train is None and not train.exists():
        sslkit("lidar", "simulate", str(train), "--frames", str(a.frames), "--seed", "11")
    if a.heldout is None and not heldout.exists():
        sslkit("lidar", "simulate", str(heldout), "--frames", "40", "--seed", "12")
    pseudo = a.pseudo or w / "pseudo"
    if a.pseudo is None and not pseudo.exists():
        sslkit("lidar", "pseudo-label", str(train), "--out", str(pseudo), "--recipe", a.recipe)
    sets = [f"--set=train.steps={a.steps}"] + [f"--set={s}" for s in a.set]
    rows = {}
    for name, labels in (("pseudo-labels", pseudo), ("true labels", train / "label_2")):
        run = w / f"run-{name.split()[0].replace('-labels', '')}"
        secs = sslkit("lidar", "train-student", str(train), str(labels), "--recipe", a.recipe, "--out", str(run),
                      "--overwrite", *sets)
        det = w / f"det-{run.name}"
        sslkit("lidar", "detect", str(run), str(heldout), "--out", str(det), "--overwrite")
        out = w / f"{run.name}.evaluation.json"
        sslkit("lidar", "evaluate", str(det), str(heldout / "label_2"), "--out", str(out))
        rows[name] = (json.loads(out.read_text())["ap"], secs)
    print(f"\nstudent on held-out simulated frames ({a.recipe}, {a.steps} steps each, same seed)")
    print(f"{'trained on':<15}{'Car BEV@0.7':>12}{'Car 3D@0.7':>12}{'Ped BEV@0.5':>12}{'Cyc BEV@0.5':>12}{'train s':>9}")
    for name, (ap_, secs) in rows.items():
        print(f"{name:<15}{ap_['Car']['bev']['ap']:>12.3f}{ap_['Car']['3d']['ap']:>12.3f}"
              f"{ap_['Pedestrian']['bev']['ap']:>12.3f}{ap_['Cyclist']['bev']['ap']:>12.3f}{secs:>9.0f}")
    p, t = rows["pseudo-labels"][0]["Car"]["bev"]["ap"], rows["true labels"][0]["Car"]["bev"]["ap"]
    print(f"Car BEV AP ratio pseudo/true = {p / max(t, 1e-9):.2f} (target >= 0.90)")


if __name__ == "__main__":
    main()
