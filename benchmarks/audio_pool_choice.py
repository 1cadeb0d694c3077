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

import json, re, sys, time, itertools
from pathlib import Path
import numpy as np, torch
torch.set_num_threads(2)
from sslkit.core.export import load_encoder
from sslkit.core.runs import Run
from sslkit.domains.audio.evaluation import random_encoder
from sslkit.domains.audio.features import AudioData, normalise
from sslkit.domains.audio.io import find_audio, iter_fbanks
from sslkit.domains.audio.data import clip_windows
from sslkit.domains.audio.model import pool_tokens

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "audio_quality" / "pool_choice"
OUT.mkdir(parents=True, exist_ok=True)
FSDD = ROOT.parent / "shared" / "data" / "audio" / "fsdd" / "recordings"
SEL = ["jackson", "lucas", "nicolas", "yweweler"]
runs_dir = Path(sys.argv[1]); arms = sys.argv[2].split(","); which = sys.argv[3].split(",")  # pretrained,random
sources = find_audio([FSDD])
names = [s.path.name for s in sources]
digit = np.array([n[0] for n in names])
spk = np.array([re.match(r"^\d_([a-z]+)_", n).group(1) for n in names])

assert not set(SEL) & {"george", "theo"}


def probe_sel(x, C):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    accs = {}
    for g in SEL:
        tr = np.isin(spk, SEL) & (spk != g); te = spk == g
        m = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=500)).fit(x[tr], digit[tr])
        accs[g] = float((m.predict(x[te]) == digit[te]).mean())
    return float(np.mean(list(accs.values()))), accs

def tokens_all(enc, fb, mean, std, clip_frames):
    enc.eval(); X, P, owner, wts = [], [], [], []
    wins, vals = [], []
    for c, f in enumerate(fb):
        w, v, _ = clip_windows(normalise(f, mean, std), clip_frames); wins.append(w); vals.append(v); owner += [c]*len(w)
    x, m = torch.cat(wins), torch.cat(vals)
    with torch.inference_mode():
        for i in range(0, len(x), 64):
            fbp, vp = enc.pad(x[i:i+64], m[i:i+64])
            t, pres = enc._encode(fbp, vp, None, len(enc.layers))
            X.append(t.half()); P.append(pres)
    return torch.cat(X), torch.cat(P), np.array(owner), m.sum(1).double().numpy()

def pooled(X, P, owner, wt, enc, layers, freq, std, seg, n):
    D = enc.dim; L = len(enc.layers)
    xs = X[..., (L-layers)*D:].float()
    out = []
    for i in range(0, len(xs), 256):
        out.append(pool_tokens(xs[i:i+256], P[i:i+256], enc.grid_f, freq, std, seg).numpy())
    out = np.concatenate(out).astype(np.float64)
    tot = np.zeros((n, out.shape[1])); np.add.at(tot, owner, out*wt[:, None])
    return tot / np.bincount(owner, weights=wt, minlength=n)[:, None]

res = {}
fbc = {}
for arm in arms:
    run = Run.load(runs_dir / arm, "audio"); cfg = AudioData(**run.recipe_dict["data"])
    mean, std = run.manifest["audio"]["mean"], run.manifest["audio"]["std"]
    key = json.dumps(cfg.feature_spec(), sort_keys=True)
    if key not in fbc: fbc[key] = iter_fbanks(sources, cfg)[1]
    fb = fbc[key]
    for kind in which:
        enc = load_encoder(run.dir) if kind == "pretrained" else random_encoder(run, mean, std)
        t0 = time.time(); X, P, owner, wt = tokens_all(enc, fb, mean, std, cfg.clip_frames)
        print(f"{arm} {kind}: tokens in {time.time()-t0:.0f}s", flush=True)
        L = len(enc.layers)
        patch = not arm.startswith("tera")
        cur = {"layers": 1, "freq": bool(patch and enc.pool == "freq"), "std": False, "seg": 1, "C": 1.0}
        def score(c):
            k = f"{arm}|{kind}|" + "|".join(f"{a}={b}" for a, b in c.items())
            if k in res: return res[k]["sel"]
            x = pooled(X, P, owner, wt, enc, c["layers"], c["freq"], c["std"], c["seg"], len(fb))
            t1 = time.time(); acc, per = probe_sel(x, c["C"])
            res[k] = {"sel": acc, "per": per, "dim": x.shape[1]}
            print(f"{k}: {100*acc:.1f}  dim {x.shape[1]} ({time.time()-t1:.0f}s)", flush=True)
            (OUT / f"{arm}_{kind}.json").write_text(json.dumps({k: v for k, v in res.items() if k.startswith(f'{arm}|{kind}')}, indent=1))
            return acc
        best, variants = score(cur), []
        if patch:   # the frequency rows kept apart or averaged, with and without the time pooling
            variants = [dict(freq=f, seg=g, std=t) for f in (False, True) for g, t in ((1, False), (3, True))]
        else:
            variants = [dict(layers=l, seg=g, std=t) for l in (1, L) for g, t in ((1, False), (3, False), (3, True))]
        for v in variants:
            acc = score({**cur, **v})
            if acc >= best + 0.005:
                cur, best = {**cur, **v}, acc
        print(f"CHOSEN {arm} {kind}: {cur} sel {100*best:.1f}", flush=True)
        (OUT / f"{arm}_{kind}_chosen.json").write_text(json.dumps({"chosen": cur, "sel": best}))
        del X, P
