"""Choose the clip-embedding pooling of the FSDD encoders on the 4 selection speakers only (george and theo held out).

For each trained run (benchmarks/results/audio_quality/runs/ARM), every layer's tokens of every clip are computed
once; each pooling variant (`model.pool_tokens` with: mean or per-frequency-row, 1 or 3 time segments, with or
without the std over time, last layer or all layers) is scored by leave-one-speaker-out digit accuracy among
jackson, lucas, nicolas and yweweler (train on 3, test on the 4th; standardised logistic regression, C = 1). A
variant replaces the current one when it is ≥ 0.5 point better. Results: OUT/ARM_KIND.json (every variant) and
OUT/ARM_KIND_chosen.json. The held-out speakers' labels are never read.

    flock /tmp/sslkit-heavy.lock .venv/bin/python benchmarks/audio_pool_choice.py \
        benchmarks/results/audio_quality/runs tera-fsdd,ssast-fsdd,ssamba-fsdd pretrained
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch

from sslkit.core.export import load_encoder
from sslkit.core.runs import Run
from sslkit.domains.audio.evaluation import clip_windows_all, random_encoder
from sslkit.domains.audio.features import AudioData
from sslkit.domains.audio.io import find_audio, iter_fbanks
from sslkit.domains.audio.model import pool_tokens

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "audio_quality" / "pool_choice"
FSDD = ROOT.parent / "shared" / "data" / "audio" / "fsdd" / "recordings"
SEL = ["jackson", "lucas", "nicolas", "yweweler"]     # george and theo are held out: never read here
assert not set(SEL) & {"george", "theo"}


def probe_sel(x: np.ndarray, digit: np.ndarray, spk: np.ndarray, c: float) -> tuple[float, dict[str, float]]:
    """Leave-one-speaker-out digit accuracy among the selection speakers (standardised logistic regression)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    accs = {}
    for g in SEL:
        tr, te = np.isin(spk, SEL) & (spk != g), spk == g
        m = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=500)).fit(x[tr], digit[tr])
        accs[g] = float((m.predict(x[te]) == digit[te]).mean())
    return float(np.mean(list(accs.values()))), accs


def tokens_all(enc, fb: list, mean: float, std: float, clip_frames: int):  # noqa: ANN001, ANN201
    """Every layer's tokens of every window of every clip, once: (tokens fp16, present, owning clip, real frames)."""
    enc.eval()
    x, m, owner = clip_windows_all(fb, mean, std, clip_frames)
    xs, ps = [], []
    with torch.inference_mode():
        for i in range(0, len(x), 64):
            fbp, vp = enc.pad(x[i:i + 64], m[i:i + 64])
            t, pres = enc._encode(fbp, vp, None, len(enc.layers))
            xs.append(t.half())
            ps.append(pres)
    return torch.cat(xs), torch.cat(ps), owner, m.sum(1).double().numpy()


def pooled(tokens: torch.Tensor, present: torch.Tensor, owner: np.ndarray, wt: np.ndarray, enc, layers: int,  # noqa: ANN001
           freq: bool, std: bool, seg: int, n: int) -> np.ndarray:
    """Clip embeddings (n, E) for one pooling variant: windows pooled by `pool_tokens`, then averaged per clip
    weighted by their real frames."""
    d, depth = enc.dim, len(enc.layers)
    xs = tokens[..., (depth - layers) * d:].float()
    out = np.concatenate([pool_tokens(xs[i:i + 256], present[i:i + 256], enc.grid_f, freq, std, seg).numpy()
                          for i in range(0, len(xs), 256)]).astype(np.float64)
    tot = np.zeros((n, out.shape[1]))
    np.add.at(tot, owner, out * wt[:, None])
    return tot / np.bincount(owner, weights=wt, minlength=n)[:, None]


def choose(arm: str, kind: str, enc, tokens, present, owner, wt, digit, spk, n: int) -> tuple[dict, float]:  # noqa: ANN001
    """Greedy choice: start from the recipe's pooling, keep a variant when it is >= 0.5 point better."""
    res: dict[str, dict] = {}
    patch = not arm.startswith("tera")
    cur = {"layers": 1, "freq": bool(patch and enc.pool == "freq"), "std": False, "seg": 1, "C": 1.0}

    def score(c: dict) -> float:
        k = f"{arm}|{kind}|" + "|".join(f"{a}={b}" for a, b in c.items())
        if k not in res:
            x = pooled(tokens, present, owner, wt, enc, c["layers"], c["freq"], c["std"], c["seg"], n)
            t1 = time.time()
            acc, per = probe_sel(x, digit, spk, c["C"])
            res[k] = {"sel": acc, "per": per, "dim": x.shape[1]}
            print(f"{k}: {100 * acc:.1f}  dim {x.shape[1]} ({time.time() - t1:.0f}s)", flush=True)
            (OUT / f"{arm}_{kind}.json").write_text(json.dumps(res, indent=1))
        return res[k]["sel"]

    best = score(cur)
    if patch:   # the frequency rows kept apart or averaged, with and without the time pooling
        variants = [dict(freq=f, seg=g, std=t) for f in (False, True) for g, t in ((1, False), (3, True))]
    else:
        depth = len(enc.layers)
        variants = [dict(layers=k, seg=g, std=t) for k in (1, depth) for g, t in ((1, False), (3, False), (3, True))]
    for v in variants:
        acc = score({**cur, **v})
        if acc >= best + 0.005:
            cur, best = {**cur, **v}, acc
    return cur, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, help="folder of trained runs, one per arm")
    ap.add_argument("arms", help="comma list, e.g. tera-fsdd,ssast-fsdd,ssamba-fsdd")
    ap.add_argument("which", help="comma list of pretrained,random")
    args = ap.parse_args()
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    sources = find_audio([FSDD])
    names = [s.path.name for s in sources]
    digit = np.array([n[0] for n in names])
    spk = np.array([re.match(r"^\d_([a-z]+)_", n).group(1) for n in names])
    fbanks: dict[str, list] = {}
    for arm in args.arms.split(","):
        run = Run.load(args.runs / arm, "audio")
        cfg = AudioData(**run.recipe_dict["data"])
        mean, std = run.manifest["audio"]["mean"], run.manifest["audio"]["std"]
        key = json.dumps(cfg.feature_spec(), sort_keys=True)
        if key not in fbanks:
            fbanks[key] = iter_fbanks(sources, cfg)[1]
        fb = fbanks[key]
        for kind in args.which.split(","):
            enc = load_encoder(run.dir) if kind == "pretrained" else random_encoder(run, mean, std)
            t0 = time.time()
            tokens, present, owner, wt = tokens_all(enc, fb, mean, std, cfg.clip_frames)
            print(f"{arm} {kind}: tokens in {time.time() - t0:.0f}s", flush=True)
            cur, best = choose(arm, kind, enc, tokens, present, owner, wt, digit, spk, len(fb))
            print(f"CHOSEN {arm} {kind}: {cur} sel {100 * best:.1f}", flush=True)
            (OUT / f"{arm}_{kind}_chosen.json").write_text(json.dumps({"chosen": cur, "sel": best}))


if __name__ == "__main__":
    main()
