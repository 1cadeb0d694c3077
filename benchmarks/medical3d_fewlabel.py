"""Few-label segmentation: fine-tuning from Alice pretraining vs from scratch, same labels, steps and lr, held-out Dice.

Setting (more unlabelled volumes for pretraining than labelled ones, a short fine-tuning budget):
- synthetic: `--unlabelled` MONAI volumes (create_test_image_3d, 64³) for pretraining only; 6 other labelled
  volumes, of which 2 train and 4 are held out (their images are never seen in pretraining).
- lesions: the same split of `sample-data --lesions` volumes (BraTS-like nested labels, 64³ at 2 mm), fine-tuned on
  whole-volume 64³ crops; Dice averaged over necrosis, edema and enhancing tumour.
- mri: the MNI152 T1 (2 mm) and `--subjects` warped copies of it for pretraining; GM/WM labels of one
  hemisphere train and the other hemisphere is scored. The warped copies are of the same template, so this
  is a transductive, single-anatomy setting (stated in the README).
- mri-subjects: the same pretraining; the whole labelled T1 trains and the 4 warped subjects are scored with their
  warped labels (held-out volumes that differ in pose, size and bias field).
For every seed: one pretraining run (train.seed = seed; the two MRI sets share it) and two fine-tuning runs from
the same recipe (finetune.seed = seed), one from the pretrained encoder, one `--from-scratch` (same architecture,
steps, lr, crops). The CLI runs exactly as a user would. Prints mean ± std over seeds, the paired gain ± its
standard error, and every run's Dice.

    .venv/bin/python benchmarks/medical3d_fewlabel.py [--seeds 3] [--sets mri,synthetic] [--steps 300]
        [--ft-steps 150] [--jobs 2] [--set key=value ...]   # --set goes to pretraining (e.g. alice.mask_ratio=0.3)
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

LABELLED = 6   # synthetic volumes with labels: --train 2, 4 held out


def sslkit(*args: object, env: dict[str, str] | None = None) -> None:
    res = subprocess.run([sys.executable, "-m", "sslkit", "medical3d", *map(str, args)], capture_output=True, text=True,
                         env=env)
    if res.returncode:
        sys.exit(f"sslkit {' '.join(map(str, args))} failed:\n{res.stderr[-2000:]}")


def make_data(root: Path, subjects: int, unlabelled: int) -> Path:
    """sample-data, then move the synthetic volumes past the first LABELLED to an unlabelled folder (labels dropped)."""
    data = root / "data"
    sslkit("sample-data", data, "--subjects", subjects, "--synthetic", LABELLED + unlabelled, "--size", "64",
           "--lesions", LABELLED + unlabelled)
    for syn in (data / "synthetic", data / "lesions"):
        (syn / "unlabelled").mkdir()
        for img in sorted((syn / "images").glob("*.nii.gz"))[LABELLED:]:
            shutil.move(str(img), syn / "unlabelled" / img.name)
            (syn / "labels" / img.name).unlink()
    subj = data / "mri-subjects"   # the T1 first (it trains with --train 1), then the warped subjects (held out)
    for kind, src in (("images", "unlabelled"), ("labels", "subject_labels")):
        (subj / kind).mkdir(parents=True)
        shutil.copy(data / "mri" / kind / "mni152_t1.nii.gz", subj / kind)
        for f in sorted((data / "mri" / src).glob("*.nii.gz")):
            shutil.copy(f, subj / kind / f.name)
    shutil.copy(data / "mri" / "dataset.json", subj)
    return data


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sets", default="mri,synthetic", help="comma-separated: mri, mri-subjects, synthetic, lesions")
    ap.add_argument("--steps", type=int, default=300, help="pretraining steps (mri-demo recipe)")
    ap.add_argument("--ft-steps", type=int, default=150)
    ap.add_argument("--subjects", type=int, default=4, help="warped MNI copies for MRI pretraining")
    ap.add_argument("--unlabelled", type=int, default=24, help="synthetic volumes for pretraining only")
    ap.add_argument("--set", dest="sets_", action="append", default=[], help="pretraining recipe override")
    ap.add_argument("--ft-set", action="append", default=[], help="fine-tuning override (both arms)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="seeds run side by side, each with cores/jobs threads")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="m3d-fewlabel-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # runs and caches are GBs: never left behind
    os.environ["SSLKIT_CACHE_DIR"] = str(tmp / "cache")
    data = make_data(tmp, a.subjects, a.unlabelled)
    # name -> (pretraining run prefix, unlabelled inputs, labelled folder, finetune options); the MRI sets share runs
    mri_unlabelled = [data / "mri" / "images", data / "mri" / "unlabelled"]
    sets = {"mri": ("mri", mri_unlabelled, data / "mri", []),
            "mri-subjects": ("mri", mri_unlabelled, data / "mri-subjects", ["--train", "1"]),
            "synthetic": ("synthetic", [data / "synthetic" / "unlabelled"], data / "synthetic", ["--train", "2"]),
            # whole-volume crops: 32³ crops of a lesion lose the intensity reference (README, "ROI ... context")
            "lesions": ("lesions", [data / "lesions" / "unlabelled"], data / "lesions",
                        ["--train", "2", "--set", "finetune.roi=64"])}
    pre_sets = [x for s in a.sets_ for x in ("--set", s)]
    ft_sets = [x for s in a.ft_set for x in ("--set", s)]
    env = dict(os.environ)
    if a.jobs > 1:   # small 3-D convolutions scale poorly over threads: one thread per seed does more per core
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // a.jobs))

    def one_seed(name: str, seed: int) -> tuple[float, float]:
        """Pretrain with this seed, then fine-tune from it and from scratch: (alice Dice, scratch Dice)."""
        prefix, unlabelled, folder, extra = sets[name]
        run = tmp / f"{prefix}-pre-{seed}"
        if not (run / "encoder").exists():   # sets run one after another: the second MRI set reuses the first's
            sslkit("pretrain", *unlabelled, "-r", "mri-demo", "--out", run, "--set", f"train.seed={seed}",
                   "--set", f"train.steps={a.steps}", *pre_sets, env=env)
        dice = []
        for arm, flag in (("alice", []), ("scratch", ["--from-scratch"])):
            out = tmp / f"{name}-{arm}-{seed}"
            sslkit("finetune", run, folder / "images", folder / "labels", *extra, *flag, "--out", out,
                   "--set", f"finetune.seed={seed}", "--set", f"finetune.steps={a.ft_steps}", *ft_sets, env=env)
            dice.append(json.loads((out / "evaluation.json").read_text())["mean_dice"])
        print(f"{name} seed {seed}: alice {dice[0]:.3f}  scratch {dice[1]:.3f}", file=sys.stderr, flush=True)
        return dice[0], dice[1]

    rows, t0 = [], time.time()
    for name in a.sets.split(","):
        with ThreadPoolExecutor(max_workers=a.jobs) as pool:   # threads only wait on the sslkit processes
            results = list(pool.map(lambda seed: one_seed(name, seed), range(a.seeds)))
        al, sc = np.array(results).T
        rows.append((name, al.mean(), al.std(), sc.mean(), sc.std(), 100 * (al.mean() - sc.mean()), al, sc))
    n_unl = {"mri": 1 + a.subjects, "mri-subjects": 1 + a.subjects, "synthetic": a.unlabelled, "lesions": a.unlabelled}
    print(f"{a.seeds} seeds; pretraining {a.steps} steps (mri-demo{' ' + ' '.join(a.sets_) if a.sets_ else ''}), "
          f"fine-tuning {a.ft_steps} steps; {time.time() - t0:.0f} s, load average {os.getloadavg()[0]:.2f}")
    # the gain is a paired difference (same seed, same labels, same crops): its standard error over seeds says
    # how far a mean of 3-5 noisy fine-tunings can be trusted; "won" counts the seeds where pretraining scored higher
    print(f"{'data':<13}{'unlabelled':>11}{'labelled':>18}{'alice Dice':>16}{'scratch Dice':>16}"
          f"{'gain ± s.e. (points)':>22}{'won':>6}{'+5 target':>11}")
    for name, am, asd, sm, ssd, gain, al, sc in rows:
        lab = {"synthetic": "2 volumes", "lesions": "2 volumes", "mri-subjects": "the T1"}.get(name) or next(
            (f"{float(x.split('=')[1]):.0%} x-slab" for x in a.ft_set if x.startswith("finetune.label_fraction=")),
            "1 hemisphere")
        diff = 100 * (al - sc)
        se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
        won = int((diff.round(1) > 0).sum())
        print(f"{name:<13}{n_unl[name]:>11}{lab:>18}{am:>10.3f} ± {asd:.3f}{sm:>10.3f} ± {ssd:.3f}"
              f"{gain:>+14.1f} ± {se:<5.1f}{won:>4}/{len(diff)}{'PASS' if gain >= 5 else 'FAIL':>11}")
        print(f"{'':<13}per seed: alice {np.round(al, 3).tolist()}  scratch {np.round(sc, 3).tolist()}")


if __name__ == "__main__":
    main()
