"""Region-based vs class-based fine-tuning on BraTS-style nested lesions (`sample-data --lesions`), held-out Dice.

Both arms fine-tune from the same Alice pretraining run (the lesion images, unlabelled; `mri-demo`, --steps) with
the same labelled volumes, steps, lr and crops and score the same BraTS regions (WT = {1, 2, 4}, TC = {1, 4},
ET = {4}) and classes on the held-out volumes. The only difference: `finetune.region_training` (one sigmoid output
per region, BCE + Dice, painted largest first) or not (softmax over the 4 label values, Dice + CE).

    .venv/bin/python benchmarks/medical3d_regions.py [--seeds 3] [--lesions 12] [--train 4] [--ft-steps 150] [--roi 64]
        [--jobs 2] [--ft-set finetune.keep_largest=true]
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from medical3d_fewlabel import sslkit

REGIONS = "finetune.regions={WT: [1, 2, 4], TC: [1, 4], ET: [4]}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--lesions", type=int, default=12)
    ap.add_argument("--train", type=int, default=4, help="labelled volumes that train; the rest are held out")
    ap.add_argument("--steps", type=int, default=100, help="pretraining steps")
    ap.add_argument("--ft-steps", type=int, default=150)
    ap.add_argument("--roi", type=int, default=64, help="fine-tuning crop side: 64 = the whole volume (32³ crops lose "
                    "the intensity reference that per-crop normalisation needs)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--ft-set", action="append", default=[], help="fine-tuning override (both arms)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="m3d-regions-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    os.environ["SSLKIT_CACHE_DIR"] = str(tmp / "cache")
    sslkit("sample-data", tmp / "data", "--subjects", 0, "--synthetic", 0, "--lesions", a.lesions, "--size", 64)
    lesions = tmp / "data" / "lesions"
    env = dict(os.environ)
    if a.jobs > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // a.jobs))
    t0 = time.time()
    sslkit("pretrain", lesions / "images", "-r", "mri-demo", "--out", tmp / "pre", "--set", f"train.steps={a.steps}",
           env=env)

    def one(job: tuple[str, int]) -> dict:
        arm, seed = job
        out = tmp / f"{arm}-{seed}"
        sslkit("finetune", tmp / "pre", lesions / "images", lesions / "labels", "--train", a.train, "--out", out,
               "--set", REGIONS, "--set", f"finetune.roi={a.roi}",
               "--set", f"finetune.region_training={arm == 'regions'}",
               "--set", f"finetune.seed={seed}", "--set", f"finetune.steps={a.ft_steps}",
               *[x for o in a.ft_set for x in ("--set", o)], env=env)
        return json.loads((out / "evaluation.json").read_text())

    jobs = [(arm, s) for s in range(a.seeds) for arm in ("classes", "regions")]
    with ThreadPoolExecutor(max_workers=a.jobs) as pool:
        results = dict(zip(jobs, pool.map(one, jobs)))
    print(f"{a.lesions} lesions ({a.train} train, {a.lesions - a.train} held out), {a.seeds} seeds, pretraining "
          f"{a.steps} steps, fine-tuning {a.ft_steps} at {a.roi}³{' ' + ' '.join(a.ft_set) if a.ft_set else ''}; "
          f"{time.time() - t0:.0f} s, load {os.getloadavg()[0]:.2f}")
    names = ["WT", "TC", "ET", "necrosis", "edema", "enhancing", "HD95 WT (mm)"]
    print(f"{'training':<10}" + "".join(f"{n:>17}" for n in names))
    for arm in ("classes", "regions"):
        rows = np.array([r["regions"]["dice_per_class"] + r["dice_per_class"] + r["regions"]["hd95_mm_per_class"][:1]
                         for (k, _), r in results.items() if k == arm])
        print(f"{arm:<10}" + "".join(f"{m:>10.3f} ± {s:.3f}" for m, s in zip(rows.mean(0), rows.std(0))))
        print(f"{'':<10}per seed WT {np.round(rows[:, 0], 3).tolist()}  TC {np.round(rows[:, 1], 3).tolist()}  "
              f"ET {np.round(rows[:, 2], 3).tolist()}", file=sys.stderr)


if __name__ == "__main__":
    main()
