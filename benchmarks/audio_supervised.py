"""Supervised ceiling on FSDD: tera-fsdd's encoder and pooling + a linear layer, trained with digit labels.

Issue 23's target 1 asks the frozen pretrained encoder (linear probe) for leave-one-speaker-out (LOSO) digit accuracy
≥ 15 points above the same encoder with random weights (80.3 % with the probe's C chosen per fold: ≥ 95.3 %). This
script measures what the *same inputs and architecture* reach when trained end to end with the labels — the
supervised ceiling a pretrained encoder read by a linear probe is compared against.

Model (both arms): the tera-fsdd recipe's encoder, built by the audio method's builder after seeding as pretraining
does (its initial weights are the frozen "random weights" row's), the recipe's clip pooling (`model.pool*`: 3 time
segments + std, last 3 layers: 1,536 features), then BatchNorm1d without affine (the end-to-end form of the probe's
standardisation; a fixed affine map at test time, so the classifier stays linear in the pooled features) and a Linear
layer over the 10 digits. Input: the recipe's fbank (8 kHz, 40 mel) from the audio domain's on-disk cache
(`data.prepare_cache`, decoded once into OUT/runs/fsdd-cache/, git-ignored), normalised with the cache's mean/std over
all clips — the pretraining run's normalisation. Training clips longer than the recipe's 96-frame window give a random
window per epoch; test clips are embedded as the frozen evaluation does (`evaluation.embed_clips`: windows averaged).

Arms: `s` (no augmentation) and `s-aug` (tera-inv's voice perturbation, `augment.perturb_voice` with the recipe
defaults of `inv`, then SpecAugment-style masks: 2 mel bands of ≤ SPEC_FREQ bins, 2 time spans of ≤ SPEC_TIME of the
clip, set to 0). Settings are fixed (SETTINGS); the one choice is the stopping epoch per arm (`--stage select`):
among EVAL_EPOCHS of the E_MAX-epoch schedule, the best mean accuracy over the 4 selection speakers (jackson, lucas,
nicolas, yweweler: train on 3, test on the 4th; ties → the later epoch). `--stage final` then trains the 6-speaker
LOSO folds (train on 5, test on the 6th) with the same schedule, stopped there. george and theo (the benchmark's
held-out pair) never enter the choice and are reported apart. Optional arm `cnn`: a non-TERA reference, a res8-like
keyword-spotting CNN (Tang & Lin 2018) on the same normalised fbank, the same SETTINGS, no augmentation, fixed at
CNN_EPOCHS (no selection); its test clips are read whole.

    flock /tmp/sslkit-heavy.lock .venv/bin/python benchmarks/audio_supervised.py --stage select
    flock /tmp/sslkit-heavy.lock .venv/bin/python benchmarks/audio_supervised.py --stage final --arms s
    flock /tmp/sslkit-heavy.lock .venv/bin/python benchmarks/audio_supervised.py --stage final --arms s-aug
    flock /tmp/sslkit-heavy.lock .venv/bin/python benchmarks/audio_supervised.py --stage final --arms cnn
    .venv/bin/python benchmarks/audio_supervised.py --stage table

Each fold is written to OUT/<arm>_<speaker>.json (selection folds: OUT/select/) as it finishes; a rerun resumes.
The table (every arm, per speaker, mean ± std, the held-out pair, the 4-speaker choice, and the frozen rows of
audio_quality's seventh-session table for reference) is printed and written to OUT/summary.json and OUT/table.md.
Measured figures: docs/audio.md ("Supervised ceiling").
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from audio_quality import FSDD, HELD_OUT_SPEAKERS, SELECTION_SPEAKERS, say  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "audio_quality" / "supervised"
FROZEN = ROOT / "benchmarks" / "results" / "audio_quality" / "s7"     # audio_quality --probe-c auto, seventh session
RECIPE = "tera-fsdd"
E_MAX = 20                       # epochs of the schedule (fixed after a timing run, before any score: ~3 s per
                                 # 5-speaker epoch, so both arms' selection and LOSO folds fit ~20 min of the 2 cores)
EVAL_EPOCHS = (5, 10, 15, 20)    # where the selection folds are scored; the stopping epoch is one of these
BF16 = False                     # the recipe pretrains in bf16 (core.precision), but on these short clips the timing
                                 # run gave bf16 0.042 vs fp32 0.039 s per step: fp32, as the evaluation
SETTINGS = {"lr": 5e-4,          # the recipe's peak lr
            "weight_decay": 0.05,   # AdamW, not on 1-D parameters (norms, biases)
            "batch_size": 32,    # the recipe's
            "warmup_epochs": 1,  # linear warmup, then cosine to 0 at E_MAX
            "clip_grad": 5.0,    # the recipe's
            "seed": 0}           # data order and augmentation draws
SPEC_FREQ = 8                    # SpecAugment: widest masked mel band (bins of 40)
SPEC_TIME = 0.2                  # SpecAugment: widest masked time span (fraction of the clip's frames)
CNN_EPOCHS = 15                  # cnn: fixed (cosine over 15 epochs; 15 = the s arm's stopping epoch), no selection
CNN_WIDTH = 45                   # res8-narrow's channels (Tang & Lin 2018)
ARMS = ("s", "s-aug", "cnn")
ARM_NAMES = {"s": "supervised (S)", "s-aug": "supervised + voice perturbation + SpecAugment (S+aug)",
             "cnn": "keyword-spotting CNN (res8-like), supervised, no augmentation"}


# ---- data ------------------------------------------------------------------------------------


def shown(path: Path) -> Path:
    """`path` relative to the repository when inside it (an --out elsewhere stays absolute)."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def load_fsdd(data: Path, cache: Path):  # noqa: ANN201
    """(recipe, clips: list of normalised fbank (T, 40) tensors, digit (N,), speaker (N,), mean, std) from the audio
    domain's on-disk cache (built once, reused by every later run)."""
    import re

    import torch

    from sslkit.core.recipes import load_recipe
    from sslkit.domains.audio.cli import patch_frames
    from sslkit.domains.audio.data import prepare_cache
    from sslkit.domains.audio.features import normalise
    from sslkit.domains.audio.io import find_audio
    from sslkit.domains.audio.method import RECIPE_SCHEMA

    recipe = load_recipe(RECIPE_SCHEMA, "audio", RECIPE)
    sources = find_audio([data])
    t0 = time.perf_counter()
    index, _, reused = prepare_cache(sources, recipe.data, cache, strict=True, min_frames=patch_frames(recipe))
    frames = np.fromfile(cache / "fbank.bin", dtype=np.float32).reshape(-1, index["n_mels"])
    mean, std = float(index["mean"]), float(index["std"])
    off = index["offsets"]
    clips = [normalise(torch.from_numpy(frames[off[i]: off[i + 1]].copy()), mean, std) for i in range(len(off) - 1)]
    names = [Path(p).name for p in index["paths"]]
    digit = np.asarray([int(re.match(r"^(\d)_", n).group(1)) for n in names])
    speaker = np.asarray([re.match(r"^\d_([a-z]+)_", n).group(1) for n in names])
    say(f"FSDD: {len(clips)} clips, {len(set(speaker))} speakers; fbank cache {'reused' if reused else 'built'} "
        f"({shown(cache)}, {time.perf_counter() - t0:.1f} s); "
        f"mean {mean:.3f} std {std:.3f}")
    return recipe, clips, digit, speaker, mean, std


def bucketed(idx: np.ndarray, lengths: np.ndarray, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of similar length (less padding): shuffle, sort pools of 16 batches by length, cut, shuffle batches."""
    idx = rng.permutation(idx)
    pool = 16 * batch
    out = []
    for i in range(0, len(idx), pool):
        part = idx[i: i + pool]
        part = part[np.argsort(lengths[part], kind="stable")]
        out += [part[j: j + batch] for j in range(0, len(part), batch)]
    return [out[k] for k in rng.permutation(len(out))]


def collate(clips: list, ids: np.ndarray, window: int, rng: np.random.Generator, room: float = 1.0):  # noqa: ANN201
    """(x (B, T, M) zero-padded, valid (B, T)); a clip longer than `window` gives a random window; T = the longest
    clip × `room` (space for a slower tempo), at most `window`."""
    import torch

    parts = []
    for i in ids:
        c = clips[i]
        s = int(rng.integers(0, c.shape[0] - window + 1)) if c.shape[0] > window else 0
        parts.append(c[s: s + window])
    t = min(window, math.ceil(max(p.shape[0] for p in parts) * room))
    x = torch.zeros(len(parts), t, parts[0].shape[1])
    valid = torch.zeros(len(parts), t, dtype=torch.bool)
    for k, p in enumerate(parts):
        x[k, : p.shape[0]], valid[k, : p.shape[0]] = p, True
    return x, valid


def augment(x, valid, rng: np.random.Generator, recipe, std: float):  # noqa: ANN001, ANN201
    """The s-aug views: tera-inv's voice perturbation (recipe `inv` defaults), then 2 band and 2 time-span masks."""
    import torch

    from sslkit.domains.audio.augment import perturb_voice

    gens = [torch.Generator().manual_seed(int(s)) for s in rng.integers(0, 2**62, len(x))]
    v = recipe.inv
    x, valid = perturb_voice(x, valid, gens, sample_rate=recipe.data.sample_rate, std=std, warp=v.warp, tempo=v.tempo,
                             gain_db=v.gain_db, tilt_db=v.tilt_db, noise=v.noise)
    m = x.shape[2]
    for k, n in enumerate(valid.sum(1).tolist()):
        for _ in range(2):
            w = int(rng.integers(0, SPEC_FREQ + 1))
            f0 = int(rng.integers(0, m - w + 1))
            x[k, :n, f0: f0 + w] = 0.0
            w = int(rng.integers(0, int(SPEC_TIME * n) + 1))
            t0 = int(rng.integers(0, max(1, n - w + 1)))
            x[k, t0: t0 + w] = 0.0
    keep = int(valid.sum(1).max())
    return x[:, :keep], valid[:, :keep]


# ---- model and training -----------------------------------------------------------------------


def build(recipe, mean: float, std: float, arm: str = "s"):  # noqa: ANN001, ANN201
    """(encoder with the recipe's pooling and the random weights pretraining starts from, head BN + Linear); for
    the cnn arm (res8 features, Linear)."""
    import torch

    from sslkit.core.loop import seed_everything
    from sslkit.domains.audio.method import build_method

    seed_everything(recipe.train.seed)
    if arm == "cnn":
        return res8(CNN_WIDTH), torch.nn.Linear(CNN_WIDTH, 10)
    encoder = build_method(recipe, mean, std).encoder
    e = encoder
    width = (e.pool_segments + (e.pool_stats == "meanstd")) * e.pool_layers * e.dim
    width *= e.grid_f if e.pool == "freq" else 1
    head = torch.nn.Sequential(torch.nn.BatchNorm1d(width, affine=False), torch.nn.Linear(width, 10))
    return encoder, head


def res8(width: int):  # noqa: ANN201
    """A res8-like keyword-spotting CNN (Tang & Lin 2018, arXiv:1710.10361): 3×3 conv, average pool 4 (mel) × 3
    (frames), 3 residual blocks of two (3×3 conv, ReLU, BatchNorm without affine); features = the mean over mel rows
    and the real time steps (B, width). Input: normalised fbank (B, T, M) with valid (B, T)."""
    import torch
    from torch import nn

    class Res8(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv0 = nn.Conv2d(1, width, 3, padding=1, bias=False)
            self.pool = nn.AvgPool2d((4, 3))
            self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1, bias=False) for _ in range(6))
            self.norms = nn.ModuleList(nn.BatchNorm2d(width, affine=False) for _ in range(6))

        def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
            h = self.pool(torch.relu(self.conv0(x.transpose(1, 2).unsqueeze(1))))       # (B, C, M/4, T/3)
            for i in range(0, 6, 2):
                y = self.norms[i](torch.relu(self.convs[i](h)))
                h = h + self.norms[i + 1](torch.relu(self.convs[i + 1](y)))
            t = h.shape[-1]
            w = valid[:, : 3 * t: 3].to(h.dtype)                                         # (B, T/3) real steps
            return (h.mean(2) * w[:, None]).sum(-1) / w.sum(1, keepdim=True).clamp_min(1.0)

    return Res8()


def pooled(encoder, x, valid, bf16: bool):  # noqa: ANN001, ANN201
    """The clip embedding of `embed_fbank` (B, E) with gradients; the encoder under bf16 autocast when the recipe
    trains in bf16, the pooling (its variance: E[x²] − mean²) in fp32."""
    import torch

    from sslkit.domains.audio.model import pool_tokens

    if not hasattr(encoder, "_encode"):     # the cnn arm
        return encoder(x, valid)
    x, valid = encoder.pad(x, valid)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        tokens, present = encoder._encode(x, valid, None, encoder.pool_layers)
    return pool_tokens(tokens.float(), present, encoder.grid_f, encoder.pool == "freq",
                       encoder.pool_stats == "meanstd", encoder.pool_segments)


def embed(encoder, clips: list, idx: np.ndarray, window: int) -> np.ndarray:  # noqa: ANN001
    """(N, E) pooled features of clips `idx`, exactly as the frozen evaluation (embed_clips: fp32, windows averaged).
    Our clips are normalised already: embed_clips' (x − mean) / (2·std) gets mean 0, std 0.5 (the identity)."""
    from sslkit.domains.audio.evaluation import embed_clips

    if not hasattr(encoder, "_encode"):     # the cnn arm: whole clips, in batches of similar length
        return embed_cnn(encoder, clips, idx)
    return embed_clips(encoder, [clips[i] for i in idx], 0.0, 0.5, window, batch_size=64)


def embed_cnn(model, clips: list, idx: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """(N, width) res8 features of whole clips (any length), eval mode, batches of 64 sorted by length."""
    import torch

    order = np.argsort([clips[i].shape[0] for i in idx], kind="stable")
    out = np.zeros((len(idx), CNN_WIDTH), dtype=np.float32)
    model.eval()
    with torch.no_grad():
        for j in range(0, len(idx), 64):
            part = order[j: j + 64]
            x, valid = collate(clips, idx[part], 10**9, np.random.default_rng(0))
            out[part] = model(x, valid).numpy()
    return out


def accuracy(encoder, head, clips: list, idx: np.ndarray, digit: np.ndarray,  # noqa: ANN001
             window: int) -> tuple[float, list[int]]:
    """Test accuracy and predictions: `embed`, then the head in eval mode (BatchNorm's running statistics)."""
    import torch

    z = embed(encoder, clips, idx, window)
    head.eval()
    with torch.no_grad():
        pred = head(torch.from_numpy(z)).argmax(1).numpy()
    encoder.train()
    head.train()
    return float((pred == digit[idx]).mean()), pred.tolist()


def batch_loss(arm: str, encoder, head, recipe, clips: list, digit: np.ndarray, ids: np.ndarray,  # noqa: ANN001
               rng: np.random.Generator, std: float, bf16: bool):  # noqa: ANN201
    """One training batch of `arm`: clips `ids` windowed (and perturbed for s-aug) -> (logits, labels, CE loss)."""
    import torch

    room = 1.0 / (1.0 - recipe.inv.tempo) if arm == "s-aug" else 1.0   # s-aug: room for the tempo perturbation
    x, valid = collate(clips, ids, recipe.data.clip_frames, rng, room)
    if arm == "s-aug":
        x, valid = augment(x, valid, rng, recipe, std)
    logits = head(pooled(encoder, x, valid, bf16))
    y = torch.from_numpy(digit[ids])
    return logits, y, torch.nn.functional.cross_entropy(logits, y)


def train_fold(arm: str, recipe, clips: list, digit: np.ndarray, train: np.ndarray, test: np.ndarray,  # noqa: ANN001
               mean: float, std: float, stop: int, evals: tuple[int, ...], bf16: bool, e_max: int = E_MAX) -> dict:
    """Train on `train` from the random weights for `stop` epochs of the e_max schedule; score `test` at `evals`."""
    import torch

    from sslkit.core.schedules import warmup_cosine

    encoder, head = build(recipe, mean, std, arm)
    encoder.train()
    params = [p for m in (encoder, head) for p in m.parameters()]
    decay = [p for p in params if p.dim() > 1]
    rest = [p for p in params if p.dim() <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": SETTINGS["weight_decay"]},
                             {"params": rest, "weight_decay": 0.0}], lr=SETTINGS["lr"])
    rng = np.random.default_rng(SETTINGS["seed"])
    lengths = np.asarray([c.shape[0] for c in clips])
    window = recipe.data.clip_frames
    per_epoch = math.ceil(len(train) / SETTINGS["batch_size"])
    total, warm = e_max * per_epoch, SETTINGS["warmup_epochs"] * per_epoch
    step, curve, preds, t0 = 0, [], [], time.perf_counter()
    for epoch in range(1, stop + 1):
        losses, hits = [], 0
        for ids in bucketed(train, lengths, SETTINGS["batch_size"], rng):
            for g in opt.param_groups:
                g["lr"] = warmup_cosine(step, total, SETTINGS["lr"], warm)
            logits, y, loss = batch_loss(arm, encoder, head, recipe, clips, digit, ids, rng, std, bf16)
            if not torch.isfinite(loss):
                raise SystemExit(f"{arm}: non-finite loss at epoch {epoch}, step {step} — stopped")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, SETTINGS["clip_grad"])
            opt.step()
            step += 1
            losses.append(loss.item())
            hits += int((logits.argmax(1) == y).sum())
        row = {"epoch": epoch, "loss": float(np.mean(losses)), "train_acc": hits / len(train),
               "seconds": time.perf_counter() - t0}
        if epoch in evals:
            row["acc"], preds = accuracy(encoder, head, clips, test, digit, window)
        curve.append(row)
        say(f"  epoch {epoch}: loss {row['loss']:.3f}, train {100 * row['train_acc']:.1f}"
            + (f", test {100 * row['acc']:.1f}" if "acc" in row else "") + f" ({row['seconds']:.0f} s)")
    return {"curve": curve, "acc": curve[-1].get("acc"), "pred": preds, "steps": step,
            "seconds": time.perf_counter() - t0}


# ---- stages -------------------------------------------------------------------------------------


def write(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)


def run_folds(arm: str, speakers: tuple[str, ...], pool: np.ndarray, folder: Path, stop: int, evals: tuple[int, ...],
              ctx: dict) -> dict[str, dict]:
    """One fold per speaker in `speakers`: train on the other speakers of `pool`, test on it; resumable."""
    folder.mkdir(parents=True, exist_ok=True)
    got = {}
    for g in speakers:
        path = folder / f"{arm}_{g}.json"
        if path.is_file():
            got[g] = json.loads(path.read_text())
            continue
        train = np.flatnonzero(pool & (ctx["speaker"] != g))
        test = np.flatnonzero(ctx["speaker"] == g)
        e_max = CNN_EPOCHS if arm == "cnn" else E_MAX
        say(f"{arm}: test {g}, train on {', '.join(sorted(set(ctx['speaker'][train])))} ({len(train)} clips), "
            f"{stop} of {e_max} epochs")
        res = train_fold(arm, ctx["recipe"], ctx["clips"], ctx["digit"], train, test, ctx["mean"], ctx["std"],
                         stop, evals, ctx["bf16"], e_max)
        got[g] = {"arm": arm, "test_speaker": g, "train_speakers": sorted(set(ctx["speaker"][train])),
                  "train_clips": int(len(train)), "test_clips": int(len(test)), "epochs": stop, "e_max": e_max,
                  "settings": SETTINGS, "precision": "bf16" if ctx["bf16"] else "fp32", "recipe": RECIPE, **res}
        write(path, got[g])
        say(f"{arm} {g}: {100 * res['acc']:.1f} % in {res['seconds'] / 60:.1f} min")
    return got


def choice(arm: str, out: Path) -> dict | None:
    """The stopping epoch of `arm` from its 4 selection folds (None until all 4 exist); cnn: fixed, no selection."""
    if arm == "cnn":
        return {"epoch": CNN_EPOCHS, "fixed": True}
    folds = [out / "select" / f"{arm}_{g}.json" for g in SELECTION_SPEAKERS]
    if not all(p.is_file() for p in folds):
        return None
    curves = [{r["epoch"]: r["acc"] for r in json.loads(p.read_text())["curve"] if "acc" in r} for p in folds]
    means = {e: float(np.mean([c[e] for c in curves])) for e in EVAL_EPOCHS}
    best = max(EVAL_EPOCHS, key=lambda e: (round(means[e], 9), e))     # ties → the later epoch
    return {"epoch": best, "mean_by_epoch": means,
            "per_speaker": {g: c[best] for g, c in zip(SELECTION_SPEAKERS, curves)}}


def table(out: Path) -> None:
    from sslkit.core.console import print_table

    speakers = sorted(SELECTION_SPEAKERS + HELD_OUT_SPEAKERS)
    columns = ["features", *speakers, "6-speaker LOSO", "held-out 2 (george, theo)", "4-speaker choice"]
    rows, summary = [], {"settings": SETTINGS, "e_max": E_MAX, "eval_epochs": EVAL_EPOCHS, "recipe": RECIPE,
                         "spec_augment": {"freq_bins": SPEC_FREQ, "time_frac": SPEC_TIME}, "arms": {}}
    fmt = lambda v: f"{100 * v[0]:.1f} ± {100 * v[1]:.1f}"   # noqa: E731
    for arm in ARMS:
        ch = choice(arm, out)
        per = {g: json.loads((out / f"{arm}_{g}.json").read_text()) for g in speakers
               if (out / f"{arm}_{g}.json").is_file()}
        if (ch is None or ch.get("fixed")) and not per:
            continue
        acc = {g: r["acc"] for g, r in per.items()}
        ms = lambda v: [float(np.mean(v)), float(np.std(v))]   # noqa: E731
        loso = ms(list(acc.values())) if len(acc) == len(speakers) else None
        held = ms([acc[g] for g in HELD_OUT_SPEAKERS]) if all(g in acc for g in HELD_OUT_SPEAKERS) else None
        sel = ms(list(ch["per_speaker"].values())) if ch and "per_speaker" in ch else None
        summary["arms"][arm] = {"choice": ch, "per_speaker": acc, "loso": loso, "held_out_2": held,
                                "choice_4_speakers": sel, "train_minutes": sum(r["seconds"] for r in per.values()) / 60}
        label = ARM_NAMES[arm] + (f", {ch['epoch']} of {CNN_EPOCHS if arm == 'cnn' else E_MAX} epochs" if ch else "")
        rows.append([label, *(f"{100 * acc[g]:.1f}" if g in acc else "…" for g in speakers),
                     fmt(loso) if loso else "…", fmt(held) if held else "…", fmt(sel) if sel else "…"])
    for name, file in (("frozen tera-fsdd-long pretrained, linear probe (C auto)", "tera-fsdd-long_pretrained.json"),
                       ("frozen tera-inv-fsdd pretrained, linear probe (C auto)", "tera-inv-fsdd_pretrained.json"),
                       ("frozen tera-fsdd random weights, linear probe (C auto)", "tera-fsdd_random.json")):
        if (FROZEN / file).is_file():
            r = json.loads((FROZEN / file).read_text())
            rows.append([name, *(f"{100 * r['loso_per_speaker'][g]['linear']:.1f}" for g in speakers),
                         fmt(r["loso_digit"]["linear"]), fmt(r["held_out_2"]["linear"]),
                         fmt(r["choice_4_speakers"]["linear"])])
    print_table("FSDD digits, leave-one-speaker-out, accuracy %: tera-fsdd's encoder + pooling + linear layer trained "
                "with labels from random weights (frozen rows: benchmarks/results/audio_quality/s7)", columns, rows)
    write(out / "summary.json", summary)
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + ["| " + " | ".join(r) + " |" for r in rows]
    (out / "table.md").write_text("\n".join(md) + "\n")
    say(f"wrote {shown(out / 'summary.json')} and {shown(out / 'table.md')}")


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit code 2."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=FSDD, help="FSDD recordings (files named DIGIT_SPEAKER_INDEX.wav)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--stage", choices=("select", "final", "table", "time"), default="table",
                    help="select: the 4 selection folds per arm (the stopping epoch); final: the 6 LOSO folds at the "
                    "chosen epoch; table: print what exists; time: seconds per training step, no score")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (2: this machine's cores)")
    args = ap.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    if bad := [a for a in arms if a not in ARMS]:
        fail(f"--arms: unknown {', '.join(bad)} — use {', '.join(ARMS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage == "table":
        table(args.out)
        return
    if not args.data.is_dir():
        fail(f"no FSDD at {args.data} — put the Free Spoken Digit Dataset there (../shared/data/audio/fsdd) or pass "
             "--data DIR with files named DIGIT_SPEAKER_INDEX.wav")
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    recipe, clips, digit, speaker, mean, std = load_fsdd(args.data, args.out / "runs" / "fsdd-cache")
    ctx = {"recipe": recipe, "clips": clips, "digit": digit, "speaker": speaker, "mean": mean, "std": std, "bf16": BF16}
    say(f"precision {'bf16' if BF16 else 'fp32'}; settings {SETTINGS}, {E_MAX} epochs")
    with threadpool_limits(1):       # numpy/BLAS outside torch: small products, one thread
        if args.stage == "time":
            time_steps(arms, ctx)
            return
        for arm in arms:
            if args.stage == "select" and arm == "cnn":
                say("cnn: no selection (fixed settings)")
            elif args.stage == "select":
                run_folds(arm, SELECTION_SPEAKERS, np.isin(speaker, SELECTION_SPEAKERS), args.out / "select", E_MAX,
                          EVAL_EPOCHS, ctx)
                ch = choice(arm, args.out)
                say(f"{arm}: stopping epoch {ch['epoch']} (4-speaker means by epoch: "
                    + ", ".join(f"{e}: {100 * m:.1f}" for e, m in ch["mean_by_epoch"].items()) + ")")
            else:
                ch = choice(arm, args.out)
                if ch is None:
                    fail(f"{arm}: no stopping epoch yet — run --stage select --arms {arm} first")
                evals = tuple(sorted({e for e in EVAL_EPOCHS if e <= ch["epoch"]} | {ch["epoch"]}))
                run_folds(arm, tuple(sorted(SELECTION_SPEAKERS + HELD_OUT_SPEAKERS)), np.ones(len(clips), bool),
                          args.out, ch["epoch"], evals, ctx)
    table(args.out)


def time_steps(arms: list[str], ctx: dict) -> None:
    """Seconds per training step (batch 32, bucketed) per arm, on one 5-speaker fold's clips; no score."""
    import torch

    recipe, clips = ctx["recipe"], ctx["clips"]
    rng = np.random.default_rng(0)
    lengths = np.asarray([c.shape[0] for c in clips])
    train = np.flatnonzero(ctx["speaker"] != "george")
    for arm in arms:
        for bf16 in (False,) if arm == "cnn" else (False, True):
            encoder, head = build(recipe, ctx["mean"], ctx["std"], arm)
            opt = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=1e-4)
            times = []
            for ids in bucketed(train, lengths, SETTINGS["batch_size"], rng)[:20]:
                t0 = time.perf_counter()
                loss = batch_loss(arm, encoder, head, recipe, clips, ctx["digit"], ids, rng, ctx["std"], bf16)[2]
                opt.zero_grad()
                loss.backward()
                opt.step()
                times.append(time.perf_counter() - t0)
            step = float(np.median(times[3:]))
            say(f"{arm} {'bf16' if bf16 else 'fp32'}: {step:.3f} s/step → {step * math.ceil(len(train) / 32):.1f} s "
                f"per 5-speaker epoch")
        t0 = time.perf_counter()
        embed(encoder, clips, np.flatnonzero(ctx["speaker"] == "george"), recipe.data.clip_frames)
        say(f"embedding 500 test clips: {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
