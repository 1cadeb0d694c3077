"""Few-label segmentation: fine-tuning from Alice pretraining vs from scratch, same labels and steps, held-out Dice.

Real MRI: MNI152 T1 (2 mm) with GM/WM labels, trained on one hemisphere and scored on the other; pretraining on
the T1 and its warped copies. Synthetic: MONAI spheres, 2 labelled volumes for training, the rest held out.
Mean over seeds; the CLI runs exactly as a user would.

    .venv/bin/python benchmarks/medical3d_fewlabel.py [--seeds 3] [--sets mri,synthetic] [--steps 40]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def sslkit(*args: object) -> None:
    res = subprocess.run([sys.executable, "-m", "sslkit", "medical3d", *map(str, args)], capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"sslkit {' '.join(map(str, args))} failed:\n{res.stderr[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sets", default="mri,synthetic")
    ap.add_argument("--steps", type=int, default=40, help="pretraining steps (mri-demo recipe)")
    ap.add_argument("--ft-steps", type=int, default=40)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="m3d-fewlabel-"))
    os.environ["SSLKIT_CACHE_DIR"] = str(tmp / "cache")
    data = tmp / "data"
    sslkit("sample-data", data, "--subjects", "4", "--synthetic", "6", "--size", "64")
    sets = {"mri": ([data / "mri" / "images", data / "mri" / "unlabelled"], data / "mri" / "images", data / "mri" / "labels", []),
            "synthetic": ([data / "synthetic" / "images"], data / "synthetic" / "images", data / "synthetic" / "labels",
                          ["--train", "2"])}
    rows = []
    for name in a.sets.split(","):
        unlabelled, images, labels, extra = sets[name]
        scores: dict[str, list[float]] = {"alice": [], "scratch": []}
        for seed in range(a.seeds):
            run = tmp / f"{name}-pre-{seed}"
            sslkit("pretrain", *unlabelled, "-r", "mri-demo", "--out", run, "--set", f"train.seed={seed}",
                   "--set", f"train.steps={a.steps}")
            for arm, flag in (("alice", []), ("scratch", ["--from-scratch"])):
                out = tmp / f"{name}-{arm}-{seed}"
                sslkit("finetune", run, images, labels, *extra, *flag, "--out", out, "--set", f"finetune.seed={seed}",
                       "--set", f"finetune.steps={a.ft_steps}")
                scores[arm].append(json.loads((out / "evaluation.json").read_text())["mean_dice"])
        al, sc = np.array(scores["alice"]), np.array(scores["scratch"])
        rows.append((name, al.mean(), al.std(), sc.mean(), sc.std(), 100 * (al.mean() - sc.mean())))
    print(f"{'data':<11}{'alice Dice':>16}{'scratch Dice':>16}{'gain (points)':>15}   ({a.seeds} seeds, "
          f"{a.steps} pretrain / {a.ft_steps} fine-tune steps, 2 shared CPU cores)")
    for name, am, asd, sm, ssd, gain in rows:
        print(f"{name:<11}{am:>10.3f} ± {asd:.3f}{sm:>10.3f} ± {ssd:.3f}{gain:>15.1f}")


if __name__ == "__main__":
    main()
