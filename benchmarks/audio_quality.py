"""Audio quality on FSDD: pretrain without labels, freeze, probe digits for unseen speakers and speakers.

Target (issue 23): leave-one-speaker-out digit accuracy ≥ 80% (MFCC statistics: 63.2%) and ≥ 15 points above the
same encoder with random weights; speaker accuracy on the conventional split ≥ 95%; ssamba, ssast and tera side by
side. The issue allows 30 minutes of pretraining per method on 2 CPU cores; this script takes a budget per arm
(--budget-min, default 5) because the session that wrote it was short and the machine shared — the figures are for
that budget. A run still going at 1.5× the budget (other jobs slowing it) is stopped and its last checkpoint used.

    flock /tmp/sslkit-heavy.lock .venv/bin/python benchmarks/audio_quality.py [--arms ssamba-fsdd,ssast-fsdd,tera-fsdd]
        [--budget-min 5] [--arm-budget ARM:MIN]... [--set KEY=VALUE]... [--arm-set ARM:KEY=VALUE]...
        [--pool-set ARM:KEY=VALUE]... [--pretrain-only] [--seeds 1] [--out DIR]
        [--hard-stop 1.5] [--snapshots K --trend] [--controls] [--probe-c 1|auto]

Arms: the recipes/audio/*-fsdd.yaml recipes (CPU-sized; fbank mean/std computed from FSDD), or NAME=RECIPE for a
second run of a recipe (runs/NAME; e.g. `ssamba-fsdd-long=ssamba-fsdd --arm-budget ssamba-fsdd-long:18`). --set
replaces DEFAULT_SET (train.device=cpu); --arm-set adds an override to one arm. --snapshots K keeps K checkpoints
along a pretraining; --trend scores each (and the random start) on the 4 selection speakers only → ARM_trend.json.
--controls adds, per recipe, its random patch (frame) embedding without the blocks, pooled the same: a random, near-
linear map of the fbank, to show how much of the random-weight score the pooling alone makes.

Protocol. Pretraining uses all 3,000 clips without labels (the held-out speaker's audio included, never a label:
FSDD has only 6 speakers). Each arm first runs 12 steps to time a step (median of steps 3-12), then pretrains for
as many steps as fit the budget (cosine schedule over exactly those steps), through `sslkit audio pretrain`, as a
user would. Then, in this process, every clip is embedded once with the frozen encoder (windows averaged), and the same probes score:
  * digit, leave-one-speaker-out: logistic regression (standardised) and cosine kNN (k=20), mean ± std over the 6;
  * digit and speaker on the conventional split (recordings 0–4 of each speaker and digit are the test set):
    logistic regression once (the split is fixed and lbfgs deterministic: --seeds N would repeat the same number);
next to MFCC statistics (mean/std of 20 MFCCs and deltas) and each encoder with its random initial weights.
Each arm's pretraining, and each evaluation, is written to OUT as it finishes; a rerun resumes where it stopped.

Held-out speakers. Defaults (the clip-embedding pooling, by benchmarks/audio_pool_choice.py) are chosen on SELECTION_SPEAKERS only: leave-one-
speaker-out among those 4 (train on 3, test on the 4th; column "4-speaker choice"). HELD_OUT_SPEAKERS (george, theo:
drawn once with numpy's default_rng(23) before any per-speaker number was looked at) never enter a choice; their two
folds of the 6-speaker leave-one-speaker-out (probe trained on the other 5) are reported apart ("held-out 2"), next
to the full 6-speaker mean. Pretraining itself sees all 3,000 clips' audio, never a label.
--pool-set ARM:model.pool_segments=3 (etc.) sets the clip-embedding pooling of an arm's encoder (and of its random-
weight twin) at evaluation: pooling does not change pretraining, so the trained runs are reused.
"""
from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT.parent / "shared" / "data" / "audio" / "fsdd" / "recordings"
DEFAULT_SET = ["train.device=cpu"]
# The arms are the FSDD recipes of recipes/audio/*-fsdd.yaml (CPU-sized: 8 kHz, 64 mel × 96 frames (40 mel for tera),
# 8×8 patches, width 128, depth 4 (tera 3); the shipped ssamba/ssast/tera recipes are the papers' AudioSet/LibriSpeech
# shapes). train.steps in them is replaced by the steps that fit the budget.
ARM_SET: dict[str, list[str]] = {}


PROBE_C: float | None = 1.0     # the linear probe's C; None = `auto` (chosen inside each training fold, as `sslkit
                                # audio evaluate --probe-c auto`); set by --probe-c
HARD_STOP = 1.5          # pretraining is stopped (SIGTERM → checkpoint) at this multiple of the budget


def torch_step(run: Path) -> int:
    return torch_step_of(run / "checkpoints" / "last.pt")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pretrain(arm: str, data: Path, out: Path, sets: list[str], budget_s: float, recipe: str | None = None,
             hard_stop: float = HARD_STOP, snapshots: int = 0) -> dict:
    """Time 12 steps, then pretrain for the steps that fit the budget; {'steps', 'seconds', 'step_s'}.

    `arm` names the run (runs/ARM), `recipe` (default: the arm) is the recipe. With `snapshots` K > 0 the run
    checkpoints every steps/K and each checkpoint is copied to runs/ARM/snapshots/step_N.pt (the trend)."""
    recipe = recipe or arm
    done = out / "runs" / f"{arm}.json"
    if done.is_file() and (out / "runs" / arm / "encoder" / "config.json").is_file():
        say(f"{arm}: pretrained already ({done})")
        return json.loads(done.read_text())
    base = [sys.executable, "-m", "sslkit", "audio", "pretrain", str(data), "--recipe", recipe, "--set", "train.device=cpu",
            *(x for s in sets for x in ("--set", s))]
    probe = out / "runs" / f"{arm}-timing"
    res = subprocess.run([*base, "--set", "train.steps=12", "--set", "train.log_every=1", "--out", str(probe),
                          "--overwrite"], capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"{arm}: timing run failed: {res.stderr[-2000:]}")
    rows = [json.loads(x) for x in (probe / "metrics.jsonl").read_text().splitlines()][2:]   # warm-up steps out
    batch = yaml.safe_load((probe / "recipe.yaml").read_text())["train"]["batch_size"]
    step_s = float(np.median([batch / r["samples_per_s"] for r in rows]))
    steps = max(10, int(budget_s * 0.95 / step_s))
    say(f"{arm}: {step_s:.2f} s/step at batch {batch} → {steps} steps in the {budget_s / 60:.0f}-minute budget")
    t0 = time.perf_counter()
    run = out / "runs" / arm
    every = max(10, steps // snapshots) if snapshots else max(10, steps // 20)
    proc = subprocess.Popen([*base, "--set", f"train.steps={steps}", "--set", f"train.checkpoint_every={every}",
                             "--out", str(run), "--overwrite"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    keeper = None
    if snapshots:
        import threading

        stop_keeping = threading.Event()
        keeper = threading.Thread(target=keep_snapshots, args=(run, stop_keeping), daemon=True)
        keeper.start()
    try:                     # a machine shared with other jobs can slow a step 2-3× after the timing run: hard stop
        _, err = proc.communicate(timeout=budget_s * hard_stop)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)            # fit() writes a checkpoint and exits 130
        _, err = proc.communicate()
    seconds = time.perf_counter() - t0
    if keeper is not None:
        stop_keeping.set()
        keeper.join()
    if proc.returncode not in (0, 130) or not (run / "checkpoints" / "last.pt").is_file():
        sys.exit(f"{arm}: pretraining failed or stopped before its first checkpoint: {err[-3000:]}")
    log = run / "metrics.jsonl"
    metrics = [json.loads(x) for x in (log.read_text().splitlines() if log.is_file() else [])] or [{"loss": float("nan")}]
    stopped = None
    if proc.returncode == 130:                     # the encoder of the last checkpoint, said so in the table
        from sslkit.core.export import export_from_run

        export_from_run(run, run / "encoder")
        stopped = torch_step(run)
        say(f"{arm}: stopped at {hard_stop:g}× the budget, at step {stopped} of {steps}")
    result = {"arm": arm, "recipe": recipe, "steps": stopped or steps, "planned_steps": steps, "stopped_early": stopped is not None,
              "batch_size": batch, "step_s": step_s, "seconds": seconds,
              "first_loss": metrics[0]["loss"], "last_loss": metrics[-1]["loss"], "sets": sets}
    done.write_text(json.dumps(result, indent=2))
    say(f"{arm}: pretrained {result['steps']} steps in {seconds / 60:.1f} min, loss {result['first_loss']:.3f} → "
        f"{result['last_loss']:.3f}")
    return result


def keep_snapshots(run: Path, stop) -> None:  # noqa: ANN001
    """Copy each new checkpoint of a running pretraining to run/snapshots/step_N.pt (checkpoints are replaced
    atomically, so a copy is always whole); polls once a second until `stop` is set, then once more."""
    import shutil

    last, snap = run / "checkpoints" / "last.pt", run / "snapshots"
    seen = None
    while True:
        final = stop.is_set()
        try:
            stamp = last.stat().st_mtime_ns
        except FileNotFoundError:
            stamp = None
        if stamp is not None and stamp != seen:
            snap.mkdir(exist_ok=True)
            tmp = snap / "copying.pt"
            shutil.copyfile(last, tmp)
            tmp.replace(snap / f"step_{torch_step_of(tmp):06d}.pt")
            seen = stamp
        if final:
            return
        stop.wait(1.0)


def torch_step_of(path: Path) -> int:
    import torch

    return int(torch.load(path, weights_only=True, map_location="cpu")["step"])


def snapshot_encoder(path: Path):  # noqa: ANN201
    """The encoder of one checkpoint file (eval mode), built from the spec the checkpoint carries."""
    import torch

    from sslkit.core.export import build_encoder

    state = torch.load(path, weights_only=True, map_location="cpu")
    enc = build_encoder(json.loads(state["encoder_spec"]))
    enc.load_state_dict({k[len("encoder."):]: v for k, v in state["model"].items() if k.startswith("encoder.")})
    return enc.eval()


SELECTION_SPEAKERS = ("jackson", "lucas", "nicolas", "yweweler")
HELD_OUT_SPEAKERS = ("george", "theo")          # sorted(np.random.default_rng(23).choice(sorted(speakers), 2))


def scores(x: np.ndarray, meta: dict, seeds: int) -> dict:
    """Every probe of the table on one feature matrix (N, E). Leave-one-speaker-out runs once (lbfgs on a convex loss
    and exact kNN: a probe seed changes nothing); the conventional split runs `seeds` probe seeds."""
    from sslkit.core.evaluation import mean_std
    from sslkit.domains.audio.evaluation import group_scores, split_scores

    train, test = ~meta["test"], meta["test"]
    loso = group_scores(x, meta["digit"], meta["speaker"], k=20, c=PROBE_C)
    sel = np.isin(meta["speaker"], SELECTION_SPEAKERS)
    choice = group_scores(x[sel], meta["digit"][sel], meta["speaker"][sel], k=20, c=PROBE_C)
    held = [loso["per_group"][g]["linear"] for g in HELD_OUT_SPEAKERS]
    return {"loso_digit": {k: loso[k] for k in ("linear", "knn")}, "loso_per_speaker": loso["per_group"],
            "choice_4_speakers": {k: choice[k] for k in ("linear", "knn")},
            "held_out_2": {"linear": mean_std(held), "per_speaker": dict(zip(HELD_OUT_SPEAKERS, held))},
            "conv_digit": split_scores(x, meta["digit"], np.flatnonzero(train), np.flatnonzero(test), range(seeds),
                                       c=PROBE_C),
            "conv_speaker": split_scores(x, meta["speaker"], np.flatnonzero(train), np.flatnonzero(test), range(seeds),
                                         c=PROBE_C)}


def cached(path: Path, fn) -> dict:  # noqa: ANN001
    if path.is_file():
        return json.loads(path.read_text())
    result = fn()
    path.write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=FSDD)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "audio_quality")
    ap.add_argument("--arms", default="ssamba-fsdd,ssast-fsdd,tera-fsdd")
    ap.add_argument("--budget-min", type=float, default=5.0)
    ap.add_argument("--pretrain-only", action="store_true", help="pretrain the arms (one lock turn each), no evaluation")
    ap.add_argument("--arm-budget", action="append", default=[], help="ARM:MINUTES, another budget for one arm")
    ap.add_argument("--pool-set", action="append", default=[], help="ARM:model.pool*=VALUE, the clip-embedding pooling "
                    "of that arm at evaluation (pretrained and random weights)")
    ap.add_argument("--set", action="append", default=None, help=f"override for every arm (default {DEFAULT_SET})")
    ap.add_argument("--arm-set", action="append", default=[], help="ARM:key=value, an override for one arm")
    ap.add_argument("--hard-stop", type=float, default=HARD_STOP, help="stop pretraining at this multiple of the budget")
    ap.add_argument("--snapshots", type=int, default=0, help="K: keep K checkpoints along each pretraining (the trend)")
    ap.add_argument("--trend", action="store_true", help="score each kept snapshot on the 4 selection speakers only "
                    "(leave-one-speaker-out among them; george and theo are not read) → OUT/ARM_trend.json")
    ap.add_argument("--controls", action="store_true", help="add a row per recipe: its random patch/frame embedding "
                    "(position embedding and final norm included, no blocks), pooled the same")
    ap.add_argument("--seeds", type=int, default=1, help="probe seeds on the conventional split (the split is fixed and "
                    "lbfgs deterministic: 5 seeds gave the same number to the last digit, see docs/audio.md)")
    ap.add_argument("--probe-c", default="1", help="the linear probe's C: a number, or auto (chosen inside each "
                    "training fold, whole speakers per inner fold, as `sslkit audio evaluate`; the default of the "
                    "seventh session's table). Earlier tables used 1; use another --out for another C (results are "
                    "cached per row)")
    args = ap.parse_args()
    global PROBE_C
    from sslkit.domains.audio.evaluation import parse_probe_c

    PROBE_C = parse_probe_c(args.probe_c)
    if not args.data.is_dir():
        sys.exit(f"no FSDD at {args.data} — pass --data DIR with files named DIGIT_SPEAKER_INDEX.wav")
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(2)
    from sslkit.core.console import print_table
    from sslkit.core.export import load_encoder
    from sslkit.domains.audio.evaluation import embed_clips, mfcc_stats, random_encoder
    from sslkit.domains.audio.features import AudioData
    from sslkit.domains.audio.io import find_audio, iter_fbanks
    from sslkit.core.runs import Run

    named = dict((a.split("=", 1) * 2)[:2] for a in args.arms.split(",") if a)   # NAME=RECIPE or RECIPE
    arms = list(named)
    sets = DEFAULT_SET if args.set is None else args.set
    per_arm = {a: sets + ARM_SET.get(a, []) + [s.split(":", 1)[1] for s in args.arm_set if s.split(":", 1)[0] == a]
               for a in arms}
    budgets = {a: args.budget_min for a in arms} | {b.split(":")[0]: float(b.split(":")[1]) for b in args.arm_budget}
    trained = {a: pretrain(a, args.data, args.out, per_arm[a], budgets[a] * 60, named[a], args.hard_stop,
                           args.snapshots) for a in arms}
    if args.pretrain_only and not args.trend:
        return

    sources = find_audio([args.data])
    names = [s.path.name for s in sources]
    meta = {"digit": np.asarray([re.match(r"^(\d)_", n).group(1) for n in names]),
            "speaker": np.asarray([re.match(r"^\d_([a-z]+)_", n).group(1) for n in names]),
            "test": np.asarray([int(re.search(r"_(\d+)\.wav$", n).group(1)) < 5 for n in names])}
    fbank_cache: dict[str, list] = {}

    def fbanks(cfg: AudioData) -> list:
        key = json.dumps(cfg.feature_spec(), sort_keys=True)
        if key not in fbank_cache:
            used, fb, _ = iter_fbanks(sources, cfg)
            assert len(used) == len(sources)
            fbank_cache[key] = fb
        return fbank_cache[key]

    results = {"MFCC statistics": cached(args.out / "mfcc.json",
                                         lambda: scores(mfcc_stats(fbanks(AudioData())), meta, args.seeds))}
    pools = {}
    for item in args.pool_set:
        arm, kv = item.split(":", 1)
        k, v = kv.split("=", 1)
        pools.setdefault(arm, {})[k.removeprefix("model.")] = int(v) if v.isdigit() else v
    seg = max([p.get("pool_segments", 1) for p in pools.values()] or [1])
    with_std = any(p.get("pool_stats") == "meanstd" for p in pools.values())
    if seg > 1 or with_std:          # the encoders' time pooling on the MFCC frames: how much is the pooling alone
        results[f"MFCC frames, {seg} segment mean(s){' + std' if with_std else ''} (the encoders' pooling)"] = cached(
            args.out / f"mfcc_seg{seg}{'_std' if with_std else ''}.json",
            lambda: scores(mfcc_pooled(fbanks(AudioData()), seg, with_std), meta, args.seeds))
    if args.trend:
        for arm in arms:
            trend(arm, args.out / "runs" / arm, args.out / f"{arm}_trend.json", pools.get(named[arm], pools.get(arm, {})),
                  fbanks, meta)
        if args.pretrain_only:
            return
    wall = {}
    for arm in arms:
        run = Run.load(args.out / "runs" / arm, "audio")
        cfg = AudioData(**run.recipe_dict["data"])
        mean, std = run.manifest["audio"]["mean"], run.manifest["audio"]["std"]
        pool = pools.get(arm, pools.get(named[arm], {}))
        tag = "".join(f"_{k.removeprefix('pool_')}{v}" for k, v in sorted(pool.items()))

        def evaluate(encoder, kind: str) -> dict:  # noqa: ANN001
            for k, v in pool.items():
                setattr(encoder, k, v)
            t0 = time.perf_counter()
            x = embed_clips(encoder, fbanks(cfg), mean, std, cfg.clip_frames, batch_size=64)
            seconds = time.perf_counter() - t0
            say(f"{arm} {kind}: embedded {len(x)} clips ({x.shape[1]} features) in {seconds:.0f} s")
            return {**scores(x, meta, args.seeds), "embed_seconds": seconds, "width": int(x.shape[1]), "pool": pool}

        t = trained[arm]
        stop = f" of {t['planned_steps']} steps, stopped;" if t.get("stopped_early") else " steps,"
        name = "".join(f", {k.removeprefix('pool_')} {v}" for k, v in sorted(pool.items()))
        got = cached(args.out / f"{arm}_pretrained{tag}.json", lambda: evaluate(load_encoder(run.dir), "pretrained"))
        results[f"{arm} pretrained ({t['steps']}{stop} {t['seconds'] / 60:.1f} min){name}"] = got
        # random weights depend on the recipe's model and seed only: one file per recipe
        results[f"{named[arm]} random weights{name}"] = cached(args.out / f"{named[arm]}_random{tag}.json",
                                                        lambda: evaluate(random_encoder(run, mean, std), "random"))
        if args.controls:    # how much of the random encoder's score the pooled (random, near-linear) patch embedding makes
            results[f"{named[arm]} random, embedding layer only (no blocks){name}"] = cached(
                args.out / f"{named[arm]}_embedonly{tag}.json",
                lambda: evaluate(embedding_only(random_encoder(run, mean, std)), "embedding layer only"))
        wall[arm] = {"pretrain_min": t["seconds"] / 60, "embed_s": got.get("embed_seconds")}

    def cell(r: dict, key: str, metric: str = "linear") -> str:
        m, s = r[key][metric]
        return f"{100 * m:.1f} ± {100 * s:.1f}"

    columns = ["features", "digit, unseen speaker (6-speaker LOSO, linear)", "held-out 2 (george, theo)",
               "4-speaker choice", "digit, unseen speaker (kNN)", "digit, conventional", "speaker, conventional"]
    rows = [[n, cell(r, "loso_digit"), cell(r, "held_out_2") if "held_out_2" in r else "—",
             cell(r, "choice_4_speakers") if "choice_4_speakers" in r else "—", cell(r, "loso_digit", "knn"),
             cell(r, "conv_digit"), cell(r, "conv_speaker")] for n, r in results.items()]
    print_table(f"FSDD ({len(sources)} clips, 6 speakers): accuracy % of frozen features; LOSO = leave-one-speaker-"
                "out, mean ± std over speakers; pretraining on 2 CPU cores, on all clips without labels", columns, rows)
    (args.out / "summary.json").write_text(json.dumps({"probe_c": args.probe_c, "budgets_min": budgets, "pretraining": trained, "wall": wall,
                                                       "pool_set": pools, "results": results}, indent=2))
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + ["| " + " | ".join(r) + " |" for r in rows]
    (args.out / "table.md").write_text("\n".join(md) + "\n")
    say(f"wrote {args.out / 'summary.json'} and {args.out / 'table.md'}")


def embedding_only(encoder):  # noqa: ANN001, ANN201
    """The encoder with its blocks replaced by one identity: tokens = norm(patch embedding + positions) (TERA:
    LayerNorm(Linear(frame) + sinusoid)). With random weights this is a random, nearly linear map of the fbank."""
    import torch

    class Skip(torch.nn.Module):
        def forward(self, x, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
            return x

    encoder.layers = torch.nn.ModuleList([Skip()])
    return encoder


def trend(arm: str, run: Path, path: Path, pool: dict, fbanks, meta: dict) -> None:  # noqa: ANN001
    """Score every snapshot of a run (and its random start) on the selection speakers only: leave-one-speaker-out
    among jackson, lucas, nicolas, yweweler (linear and kNN). The held-out speakers' clips are not embedded."""
    from sslkit.core.runs import Run
    from sslkit.domains.audio.evaluation import embed_clips, group_scores, random_encoder
    from sslkit.domains.audio.features import AudioData

    snaps = sorted((run / "snapshots").glob("step_*.pt"))
    if not snaps:
        return
    got = json.loads(path.read_text()) if path.is_file() else {}
    r = Run.load(run, "audio")
    cfg = AudioData(**r.recipe_dict["data"])
    mean, std = r.manifest["audio"]["mean"], r.manifest["audio"]["std"]
    sel = np.flatnonzero(np.isin(meta["speaker"], SELECTION_SPEAKERS))
    fb = [fbanks(cfg)[i] for i in sel]
    todo = [("0", None)] + [(str(int(p.stem.split("_")[1])), p) for p in snaps]
    for step, snap in todo:
        if step in got:
            continue
        enc = random_encoder(r, mean, std) if snap is None else snapshot_encoder(snap)
        for k, v in pool.items():
            setattr(enc, k, v)
        t0 = time.perf_counter()
        x = embed_clips(enc, fb, mean, std, cfg.clip_frames, batch_size=64)
        sc = group_scores(x, meta["digit"][sel], meta["speaker"][sel], k=20, c=PROBE_C)
        got[step] = {"linear": sc["linear"], "knn": sc["knn"], "per_speaker": {g: v["linear"] for g, v in
                                                                               sc["per_group"].items()},
                     "seconds": time.perf_counter() - t0}
        path.write_text(json.dumps(got, indent=2))
        say(f"{arm} step {step}: 4-speaker choice, linear {100 * sc['linear'][0]:.1f}, kNN {100 * sc['knn'][0]:.1f}")


def mfcc_pooled(fbanks: list, segments: int, std: bool) -> np.ndarray:
    """MFCC + delta frames pooled like the encoders' tokens (segment means + std over time): the pooling's share."""
    import torch
    import torchaudio.functional as AF

    from sslkit.domains.audio.evaluation import N_MFCC
    from sslkit.domains.audio.model import pool_tokens

    dct = AF.create_dct(N_MFCC, fbanks[0].shape[1], norm="ortho")
    rows = []
    for f in fbanks:
        c = f.float() @ dct
        frames = torch.cat([c, AF.compute_deltas(c.T.unsqueeze(0)).squeeze(0).T], dim=1).unsqueeze(0)
        rows.append(pool_tokens(frames, torch.ones(frames.shape[:2], dtype=torch.bool), 1, False, std, segments)[0])
    return torch.stack(rows).double().numpy()


if __name__ == "__main__":
    main()
