"""FSDD readout check: the linear probe's L2 strength chosen on the 4 selection speakers, the same rule for every row.

benchmarks/audio_quality.py probes every feature set with one fixed logistic regression (standardised, C = 1). With
1,536-4,096 pooled features and ~2,500 training clips that probe can fit speaker detail; a random-features map of the
fbank (random weights, or the blocks-free control) may need a different C than pretrained features. This script asks
whether a readout that is fair to both — C chosen per feature set from the grid GRID by leave-one-speaker-out among
the selection speakers (jackson, lucas, nicolas, yweweler: train on 3, test on the 4th), then applied once to the
6-speaker leave-one-speaker-out — changes the pretrained-minus-random gap. George and theo (held out) never enter the
choice; their two folds are reported apart. Rows: MFCC statistics, MFCC frames with the encoders' pooling, and per
arm its pretrained encoder, its random weights and its blocks-free random embedding layer (audio_quality's control),
every encoder pooled as POOL (the tera-fsdd recipe's pooling).

    flock /tmp/sslkit-heavy.lock .venv/bin/python benchmarks/audio_readout.py [--arms tera-fsdd,tera-fsdd-long=tera-fsdd]

Embeddings are cached (RUNS/readout-embeddings/emb_ROW.npy, not in git) and every (row, C, fold) score is written as
it finishes (OUT/scores.json), so a rerun resumes; the C = 1 six-speaker folds are taken from audio_quality's per-row
JSONs where they exist (same embedding, pooling and probe). Output: OUT/readout.json and OUT/table.md
(OUT = benchmarks/results/audio_quality/readout). Measured figures: docs/audio.md ("Fourth session").
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
from audio_quality import (FSDD, HELD_OUT_SPEAKERS, SELECTION_SPEAKERS, embedding_only, mfcc_pooled,  # noqa: E402
                           say)

GRID = (0.001, 0.01, 0.1, 1.0)     # C of the logistic regression (1.0 = audio_quality's probe)
POOL = {"pool_segments": 3, "pool_stats": "meanstd", "pool_layers": 3}    # tera-fsdd's recipe pooling


def fit_score(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, c: float) -> float:
    """Accuracy of a standardised logistic regression (lbfgs, C = c) trained on `train`, scored on `test`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=0))
    probe.fit(x[train], y[train])
    return float((probe.predict(x[test]) == y[test]).mean())


def readout(row: str, x: np.ndarray, digit: np.ndarray, speaker: np.ndarray, store: dict, save) -> dict:  # noqa: ANN001
    """C chosen on the selection speakers, then the 6-speaker LOSO at that C (and at C = 1 for comparison)."""
    got = store.setdefault(row, {})
    sel = np.isin(speaker, SELECTION_SPEAKERS)

    def score(key: str, train: np.ndarray, test: np.ndarray, c: float) -> float:
        if key not in got:
            t0 = time.perf_counter()
            got[key] = fit_score(x, digit, train, test, c)
            save()
            say(f"{row} {key}: {100 * got[key]:.1f} ({time.perf_counter() - t0:.0f} s)")
        return got[key]

    choice = {c: float(np.mean([score(f"choice C={c} {g}", sel & (speaker != g), speaker == g, c)
                                for g in SELECTION_SPEAKERS])) for c in GRID}
    best = max(GRID, key=lambda c: (round(choice[c], 6), c))     # ties: the weaker regularisation
    out = {"choice_by_C": {str(c): v for c, v in choice.items()}, "C": best}
    for tag, c in (("chosen", best), ("C=1", 1.0)):
        per = {g: score(f"loso C={c} {g}", speaker != g, speaker == g, c) for g in sorted(set(speaker))}
        held = [per[g] for g in HELD_OUT_SPEAKERS]
        out[tag] = {"loso": [float(np.mean(list(per.values()))), float(np.std(list(per.values())))],
                    "held_out_2": [float(np.mean(held)), float(np.std(held))], "per_speaker": per}
    return out


def seed_from_quality(store: dict, quality: Path, rows: list[str]) -> None:
    """Take the C = 1 six-speaker folds from audio_quality's per-row JSONs (the same embedding code, pooling and probe
    at C = 1), so that only the other C values are fitted here. Rows without such a JSON are fitted as usual."""
    tag = "".join(f"_{k.removeprefix('pool_')}{v}" for k, v in sorted(POOL.items()))
    files = {"mfcc_stats": "mfcc.json", "mfcc_pooled": "mfcc_seg3_std.json"}
    for row in rows:
        path = quality / files.get(row, f"{row}{tag}.json")
        if path.is_file() and row not in store:
            per = json.loads(path.read_text())["loso_per_speaker"]
            store[row] = {f"loso C={1.0} {g}": v["linear"] for g, v in per.items()}
            say(f"{row}: C = 1 six-speaker folds from {path.name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=FSDD)
    ap.add_argument("--runs", type=Path, default=ROOT / "benchmarks" / "results" / "audio_quality" / "runs")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "audio_quality" / "readout")
    ap.add_argument("--arms", default="tera-fsdd,tera-fsdd-long=tera-fsdd", help="NAME[=RECIPE],...: runs under --runs")
    args = ap.parse_args()
    import re

    import torch

    torch.set_num_threads(2)
    from sslkit.core.export import load_encoder
    from sslkit.core.runs import Run
    from sslkit.domains.audio.evaluation import embed_clips, mfcc_stats, random_encoder
    from sslkit.domains.audio.features import AudioData
    from sslkit.domains.audio.io import find_audio, iter_fbanks

    args.out.mkdir(parents=True, exist_ok=True)
    sources = find_audio([args.data])
    names = [s.path.name for s in sources]
    digit = np.asarray([re.match(r"^(\d)_", n).group(1) for n in names])
    speaker = np.asarray([re.match(r"^\d_([a-z]+)_", n).group(1) for n in names])
    fb_cache: dict[str, list] = {}

    def fbanks(cfg: AudioData) -> list:
        key = json.dumps(cfg.feature_spec(), sort_keys=True)
        if key not in fb_cache:
            fb_cache[key] = iter_fbanks(sources, cfg)[1]
        return fb_cache[key]

    def embedded(row: str, make) -> np.ndarray:  # noqa: ANN001
        path = args.runs / "readout-embeddings" / f"emb_{row}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file():
            t0 = time.perf_counter()
            np.save(path, make())
            say(f"{row}: embedded in {time.perf_counter() - t0:.0f} s")
        return np.load(path)

    rows: dict[str, np.ndarray] = {
        "mfcc_stats": embedded("mfcc_stats", lambda: mfcc_stats(fbanks(AudioData()))),
        "mfcc_pooled": embedded("mfcc_pooled", lambda: mfcc_pooled(fbanks(AudioData()), 3, True))}
    for item in args.arms.split(","):
        arm, recipe = (item.split("=", 1) * 2)[:2]
        run = Run.load(args.runs / arm, "audio")
        cfg = AudioData(**run.recipe_dict["data"])
        mean, std = run.manifest["audio"]["mean"], run.manifest["audio"]["std"]

        def emb(encoder) -> np.ndarray:  # noqa: ANN001
            for k, v in POOL.items():
                setattr(encoder, k, v)
            return embed_clips(encoder.eval(), fbanks(cfg), mean, std, cfg.clip_frames, batch_size=64)

        rows[f"{arm}_pretrained"] = embedded(f"{arm}_pretrained", lambda: emb(load_encoder(run.dir)))
        if f"{recipe}_random" not in rows:    # random weights depend on the recipe's model and seed only
            rows[f"{recipe}_random"] = embedded(f"{recipe}_random", lambda: emb(random_encoder(run, mean, std)))
            rows[f"{recipe}_embedonly"] = embedded(
                f"{recipe}_embedonly", lambda: emb(embedding_only(random_encoder(run, mean, std))))

    store_path = args.out / "scores.json"
    store = json.loads(store_path.read_text()) if store_path.is_file() else {}
    seed_from_quality(store, args.out.parent, list(rows))
    save = lambda: store_path.write_text(json.dumps(store, indent=1))   # noqa: E731
    result = {row: readout(row, x, digit, speaker, store, save) | {"width": int(x.shape[1])} for row, x in rows.items()}
    (args.out / "readout.json").write_text(json.dumps({"grid": GRID, "pool": POOL, "rows": result}, indent=2))
    pct = lambda ms: f"{100 * ms[0]:.1f} ± {100 * ms[1]:.1f}"            # noqa: E731
    md = ["| features | C chosen (4-speaker choice at C: " + " / ".join(map(str, GRID)) + ") | 6-speaker LOSO, chosen C "
          "| held-out 2, chosen C | 6-speaker LOSO, C = 1 | held-out 2, C = 1 |", "|---|---|---|---|---|---|"]
    for row, r in result.items():
        ch = " / ".join(f"{100 * r['choice_by_C'][str(c)]:.1f}" for c in GRID)
        md.append(f"| {row} ({r['width']}) | {r['C']:g} ({ch}) | {pct(r['chosen']['loso'])} | "
                  f"{pct(r['chosen']['held_out_2'])} | {pct(r['C=1']['loso'])} | {pct(r['C=1']['held_out_2'])} |")
    (args.out / "table.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
