"""GlaS, the target's own protocol (#24 targets 2 and 3): leave-one-fold-out over all 4 patient folds, for encoders
whose every choice was made on the development folds 0-2 — reported beside dev and held-out figures; chooses nothing.

    python benchmarks/pathology_fourfold.py --names dino-hed-k1024-t540,random,handcrafted [--seeds 5]
    python benchmarks/pathology_fourfold.py report

Features: WORK/readout/<name>-px112-tta8-reinhard.npy as benchmarks/pathology_long.py embeds them, read out as
chosen on the development folds (WORK/readout/chosen.json: CLS token, 8-fold dihedral mean, Reinhard per image to
the development images' mean); `random` (the same ViT with random weights, read alike) and `handcrafted` (HED
colour and LBP/GLCM texture of the 112-px tiles) as in the other GlaS benchmarks. Per held-out fold f in 0..3 the
probe / head is fitted on the other three folds' tiles or images:
- tile: `evaluate`'s linear probe (standardised, class-balanced logistic regression), balanced accuracy per held-out
  fold, mean ± std over the 4 folds;
- image (one bag per image): AUC and accuracy of the pooled out-of-fold predictions of the 165 images — ABMIL with
  `sslkit pathology mil`'s default head (--seeds seeds, mean ± std) and mean pooling + logistic regression C = 1.
Caveat written into the results: the encoders saw the images of the folds they are scored on while pretraining
(without labels: folds 0-2 for the development-fold runs, all four for an all-images run), as the target allows.
Results: benchmarks/results/pathology_glas/fourfold.json (one entry per name, written as it finishes; a rerun skips
names already there). Run under the heavy-job lock (the script takes none itself).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from pathology_heads import BASE  # noqa: E402
from pathology_quality import log  # noqa: E402
from pathology_readout import features, image_bags, linear_probe, mil_predict, parse_spec  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "pathology_glas" / "fourfold.json"


def four_folds(fold: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(indices of the other three folds, indices of fold f)] for every patient fold f."""
    return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in sorted(set(fold.tolist()))]


def pooled_auc(bags: list, y: np.ndarray, fold: np.ndarray, head: dict | float, seeds: int) -> dict:
    """AUC / accuracy of the pooled out-of-fold image predictions over the 4 folds, mean ± std over seeds."""
    from sslkit.core.evaluation import mean_std
    from sslkit.domains.pathology.mil import scores

    per: dict[str, list[float]] = {"auc": [], "accuracy": []}
    for seed in range(seeds):
        p = np.full((len(y), 2), np.nan)
        for k, (train, test) in enumerate(four_folds(fold)):
            p[test] = mil_predict(bags, y, train, test, seed * 1000 + k, head)
        for m, v in scores(y, p).items():
            per[m].append(v)
    return {m: mean_std(v) for m, v in per.items()}


def cmd_run(args: argparse.Namespace) -> None:
    from sslkit.domains.pathology.mil import DROPOUT, EPOCHS, HIDDEN

    y, fold = np.load(args.work / "embeddings" / "labels.npy")
    chosen = json.loads((args.work / "readout" / "chosen.json").read_text())
    spec = parse_spec(f"x | {chosen['tile']}")
    abmil = {**BASE, "epochs": EPOCHS, "hidden": HIDDEN, "dropout": DROPOUT}
    res = json.loads(OUT.read_text()) if OUT.is_file() else {}
    for name in args.names.split(","):
        if name in res:
            continue
        t0 = time.perf_counter()
        x = features(args.work, name, spec)
        bags, yb, fb = image_bags(args.work, x)
        r = {"readout": spec if not name.startswith("handcrafted") else f"{name}, 112 px", "tiles": len(y),
             "images": len(yb),
             "tile linear": linear_probe(x, y, four_folds(fold)),
             "abmil mil default": {**pooled_auc(bags, yb, fb, abmil, args.seeds), "head": abmil},
             "mean pooling C=1": pooled_auc(bags, yb, fb, 1.0, 1)}
        r["seconds"] = time.perf_counter() - t0
        res[name] = r
        OUT.write_text(json.dumps(res, indent=1))
        log(f"{name}: 4-fold tile {r['tile linear'][0]:.3f} ± {r['tile linear'][1]:.3f}, ABMIL AUC "
            f"{r['abmil mil default']['auc'][0]:.3f}, mean pool AUC {r['mean pooling C=1']['auc'][0]:.3f} "
            f"({r['seconds']:.0f}s)")
    cmd_report(args)


def cmd_report(args: argparse.Namespace) -> None:  # noqa: ARG001
    res = json.loads(OUT.read_text()) if OUT.is_file() else {}
    print(f"{'features':28s} {'tile BA (4 folds)':>18s}  {'per fold':20s} {'ABMIL AUC':>14s} {'mean-pool AUC':>13s}")
    for name, r in res.items():
        t, a = r["tile linear"], r["abmil mil default"]["auc"]
        print(f"{name:28s} {t[0]:.3f} ± {t[1]:.3f}     {' '.join(f'{v:.2f}' for v in t[2]):20s} "
              f"{a[0]:.3f} ± {a[1]:.3f} {r['mean pooling C=1']['auc'][0]:13.3f}")


def main() -> None:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("step", nargs="?", choices=["run", "report"], default="run")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-pathology-v2")
    ap.add_argument("--names", default="dino-hed-k1024-t540,random,handcrafted")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=OUT, help="smoke runs: another results file")
    args = ap.parse_args()
    OUT = args.out
    {"run": cmd_run, "report": cmd_report}[args.step](args)


if __name__ == "__main__":
    main()
