"""GlaS: the ABMIL head of `sslkit pathology mil` on frozen tile features — settings chosen on the development
folds only, then the held-out fold once (#24 target 3: ABMIL AUC >= 0.90, above mean pooling and random weights).

    python benchmarks/pathology_heads.py dev   --name dino-hed-k1024-t540 [--seeds 5]   # every head, folds 0-2
    python benchmarks/pathology_heads.py final --name dino-hed-k1024-t540               # + held-out fold 3, once
    python benchmarks/pathology_heads.py rows  --name dino-k1024-nostain-t540              # mil's default, reporting only
    python benchmarks/pathology_heads.py report

Features: WORK/readout/<name>-px112-tta8-reinhard.npy as benchmarks/pathology_long.py embeds them, read out as
chosen in WORK/readout/chosen.json (CLS token, 8-fold dihedral mean, Reinhard per image); `random` and
`handcrafted` read alike for the baselines. One bag per GlaS image (~6 tiles of 224 px at 0.62 µm/px).
HEADS are fixed before any score (rule in docs/pathology.md): the shipped head, the readout session's dev choice
(`base`) and on it a 2x2x2 factorial of weight decay {1e-4, 0.1}, instance dropout {0, 0.5} and a uniform start
(attention output layer zero-initialised: the head starts as mean pooling), plus a narrower hidden layer.
`dev`: AUC of the pooled out-of-fold predictions, leave-one-fold-out over folds 0-2, --seeds seeds, per head.
`final`: the chosen head (highest dev AUC) and the shipped head, dev and held-out; mean pooling C = 1 and 0.1;
the chosen head on random-weight and handcrafted features. Results: benchmarks/results/pathology_glas/heads/.
Run under the heavy-job lock (the script takes none itself).
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
from pathology_quality import log  # noqa: E402
from pathology_readout import features, image_bags, mil_scores, parse_spec  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "pathology_glas" / "heads"
SHIPPED = {"lr": 5e-4, "epochs": 60, "dropout": 0.25, "weight_decay": 1e-4, "hidden": 128}
BASE = {"lr": 5e-4, "epochs": 100, "dropout": 0.5, "weight_decay": 1e-4, "hidden": 128}


def heads() -> dict[str, dict]:
    """name -> train_abmil settings, in the order ties are broken."""
    out = {"shipped": SHIPPED, "base": BASE}
    for wd in (1e-4, 0.1):
        for inst in (0.0, 0.5):
            for uniform in (False, True):
                if (wd, inst, uniform) == (1e-4, 0.0, False):
                    continue                                       # = base
                name = "base" + (" wd0.1" if wd == 0.1 else "") + (" inst0.5" if inst else "") + \
                       (" uniform" if uniform else "")
                out[name] = {**BASE, "weight_decay": wd, "instance_dropout": inst, "uniform_start": uniform}
    out["base hidden32"] = {**BASE, "hidden": 32}
    return out


def _features(work: Path, name: str) -> np.ndarray:
    c = json.loads((work / "readout" / "chosen.json").read_text())
    spec = parse_spec(f"x | {c['tile']}")
    return features(work, name, spec)


def cmd_dev(args: argparse.Namespace) -> None:
    out = RESULTS / f"dev-{args.name}.json"
    res = json.loads(out.read_text()) if out.is_file() else {}
    bags, y, fold = image_bags(args.work, _features(args.work, args.name))
    for hname, head in heads().items():
        if hname in res:
            continue
        t0 = time.perf_counter()
        res[hname] = {"head": head, **mil_scores(bags, y, fold, head, args.seeds, "dev"),
                      "seconds": time.perf_counter() - t0}
        out.write_text(json.dumps(res, indent=1))
        log(f"{hname:28s} dev AUC {res[hname]['auc'][0]:.3f} ± {res[hname]['auc'][1]:.3f}  "
            f"acc {res[hname]['accuracy'][0]:.3f}  ({res[hname]['seconds']:.0f}s)")


def chosen(res: dict) -> str:
    """The head of the highest mean dev AUC; ties: the first listed in heads()."""
    order = list(heads())
    return max((k for k in order if k in res), key=lambda k: (res[k]["auc"][0], -order.index(k)))


def cmd_final(args: argparse.Namespace) -> None:
    dev = json.loads((RESULTS / f"dev-{args.name}.json").read_text())
    assert set(dev) == set(heads()), "run `dev` to the end first"
    out = RESULTS / f"final-{args.name}.json"
    if out.is_file():
        log(f"{out} exists: the held-out fold was scored already — not again")
        return cmd_report(args)
    best = chosen(dev)
    rule = "chosen = highest dev AUC; default of `mil` iff its dev AUC > the shipped head's"
    r: dict = {"chosen": best, "head": heads()[best], "rule": rule, "ships": dev[best]["auc"][0] > dev["shipped"]["auc"][0],
               "rows": {}}
    rows = [(args.name, f"ABMIL {best}", heads()[best]), (args.name, "ABMIL shipped", SHIPPED),
            (args.name, "mean pooling C=1", 1.0), (args.name, "mean pooling C=0.1", 0.1),
            ("random", f"ABMIL {best}", heads()[best]), ("random", "mean pooling C=0.1", 0.1),
            ("handcrafted", f"ABMIL {best}", heads()[best])]
    cache: dict = {}
    for feats, label, head in rows:
        t0 = time.perf_counter()
        if feats not in cache:
            cache[feats] = image_bags(args.work, _features(args.work, feats))
        bags, y, fold = cache[feats]
        r["rows"][f"{feats} | {label}"] = {part: mil_scores(bags, y, fold, head, args.seeds, part)
                                          for part in ("dev", "holdout")} | {"seconds": time.perf_counter() - t0}
        out.write_text(json.dumps(r, indent=1))
    cmd_report(args)


def cmd_rows(args: argparse.Namespace) -> None:
    """Reporting only (chooses nothing): `mil`'s default head (the one chosen on the main arm) and mean pooling
    C = 1 on another encoder's features (e.g. the no-stain ablation), dev and held-out, into rows-<name>.json."""
    from sslkit.domains.pathology.mil import DROPOUT, EPOCHS, HIDDEN

    out = RESULTS / f"rows-{args.name}.json"
    if out.is_file():
        log(f"{out} exists: the held-out fold was scored already — not again")
        return
    head = {**BASE, "epochs": EPOCHS, "hidden": HIDDEN, "dropout": DROPOUT}
    bags, y, fold = image_bags(args.work, _features(args.work, args.name))
    r: dict = {}
    for label, h in (("ABMIL mil default", head), ("mean pooling C=1", 1.0)):
        t0 = time.perf_counter()
        r[label] = {part: mil_scores(bags, y, fold, h, args.seeds, part) for part in ("dev", "holdout")} | {
            "head": h, "seconds": time.perf_counter() - t0}
        out.write_text(json.dumps(r, indent=1))
        log(f"{args.name} {label}: AUC {r[label]['dev']['auc'][0]:.3f} / {r[label]['holdout']['auc'][0]:.3f} "
            f"(dev / held-out), {r[label]['seconds']:.0f}s")


def cmd_report(args: argparse.Namespace) -> None:
    f = RESULTS / f"dev-{args.name}.json"
    if f.is_file():
        for k, v in json.loads(f.read_text()).items():
            print(f"dev  {k:28s} AUC {v['auc'][0]:.3f} ± {v['auc'][1]:.3f}  acc {v['accuracy'][0]:.3f}  "
                  f"{v['seconds']:.0f}s")
    f = RESULTS / f"final-{args.name}.json"
    if f.is_file():
        r = json.loads(f.read_text())
        print(f"chosen on dev: {r['chosen']}; ships as `mil`'s default: {r['ships']}")
        for k, v in r["rows"].items():
            print(f"{k:42s} AUC dev {v['dev']['auc'][0]:.3f} ± {v['dev']['auc'][1]:.3f} / held-out "
                  f"{v['holdout']['auc'][0]:.3f} ± {v['holdout']['auc'][1]:.3f}  (acc {v['dev']['accuracy'][0]:.3f} / "
                  f"{v['holdout']['accuracy'][0]:.3f})")


def main() -> None:
    global RESULTS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("step", choices=["dev", "final", "rows", "report"])
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-pathology-v2")
    ap.add_argument("--name", required=True, help="features: WORK/readout/<name>-px112-tta8-reinhard.npy")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    RESULTS = args.results
    RESULTS.mkdir(parents=True, exist_ok=True)
    {"dev": cmd_dev, "final": cmd_final, "rows": cmd_rows, "report": cmd_report}[args.step](args)


if __name__ == "__main__":
    main()
