"""GlaS: DINO + HED with a real CPU pretraining budget (~22 min instead of 240 steps / 8 min), read out as chosen on
the development folds (CLS token, 8-fold dihedral mean, Reinhard per image), with a dev-fold trend over snapshots.

    python benchmarks/pathology_long.py pretrain [--budget-s 1340]   # timing run, then the long run (one lock hold)
    python benchmarks/pathology_long.py embed                         # snapshots at 1/4, 1/2, 3/4, 1 of the run
    python benchmarks/pathology_long.py trend                         # development folds 0-2 only
    python benchmarks/pathology_long.py final                         # + held-out fold 3, once, final encoder only
    python benchmarks/pathology_long.py report
    python benchmarks/pathology_long.py heldout --name t540 --arm ... --results ...   # one more encoder, once
    # another arm beside the first: its own run, snapshot files and results folder
    python benchmarks/pathology_long.py pretrain --arm dino-hed-k1024 --results benchmarks/results/pathology_glas/long-k1024 \
        --steps 540 --snapshots 3 --set loss.out_dim=1024 --set loss.teacher_temp=0.025 --set loss.warmup_teacher_temp=0.025
    python benchmarks/pathology_long.py embed --arm dino-hed-k1024 --results ... --no-teacher   # then trend, final alike
    # more unlabelled tiles: pretrain on another manifest (all 165 images, overlapping tiles); embed one encoder
    python benchmarks/pathology_long.py pretrain --arm dino-hed-all-ov50 --manifest WORK/tiles-all-ov50/manifest.parquet
    python benchmarks/pathology_long.py embed --arm dino-hed-all-ov50 --results ... --only t540
    # the training magnification: 112 px read at 1.0 um/px (names t540-mpp1, random-mpp1, handcrafted-mpp1)
    python benchmarks/pathology_long.py embed --arm dino-hed-k1024 --results ... --only t540 --read-mpp 1.0 \
        --random --handcrafted

Reuses the work folder of benchmarks/pathology_quality.py (WORK = runs/bench-pathology-v2: the GlaS tiles, the
development manifest, labels) and the readout/heads chosen there on folds 0-2 by benchmarks/pathology_readout.py
(WORK/readout/chosen.json). Run it under the heavy-job lock (the script takes none itself):
`flock -w 3600 /tmp/sslkit-heavy.lock timeout 1600 python benchmarks/pathology_long.py pretrain`.

pretrain: a `--timing-steps` run of dino-tiny on the development tiles fixes the step rate and start-up time; the
long run's train.steps S is the largest multiple of 40 that fits `--budget-s` of wall time. Its schedules are scaled
as DINO's authors scale theirs (Caron et al. 2021; their 100-epoch ViT-S run; S ≈ 95 epochs of the 704 development
tiles here): learning-rate warmup 10 % of the run (their 10 of 100 epochs), cosine to min_lr over S; teacher
temperature 0.04 flat (their setting up to 100 epochs; the 0.04 -> 0.07 warmup is for 300+ epochs and would sharpen
the teacher less); freeze_last_layer 30 steps (their rule is a fixed ~1 epoch, independent of the length); EMA
momentum 0.99 -> 1 cosine, unchanged (their momentum is set by batch size, not length: the teacher's lag 1/(1-m) =
100 steps is already ~10 % of this run against 0.2 % of theirs). Checkpoints every S/4 steps are copied to
RUN/snapshots/ as they appear. The run resumes from its checkpoint when rerun (plan.json keeps S).
embed: the student encoder of each snapshot (and the EMA teacher of the last one), px112 / TTA 8 / Reinhard (the
reference = mean over development images), (N, blocks, 2, width) to WORK/readout/long-<name>-px112-tta8-reinhard.npy.
trend: the chosen tile readout's dev probe and the chosen MIL heads' dev AUC per snapshot. final: for the final
encoder — the student, unless its EMA teacher scores a higher dev tile balanced accuracy (rule fixed before any
score) — dev and held-out fold 3. Random weights and handcrafted features read alike are in WORK/readout/final.json
(the same ViT shape, the same readout file). Results: benchmarks/results/pathology_glas/long/*.json.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from pathology_quality import HOLDOUT, dev_and_holdout, log  # noqa: E402
from pathology_readout import SHIPPED_MIL, features, image_bags, linear_probe, mil_scores, parse_spec  # noqa: E402

SSLKIT = [sys.executable, "-m", "sslkit"]
RESULTS = ROOT / "benchmarks" / "results" / "pathology_glas" / "long"   # --results (smoke runs elsewhere)
ARM = "dino-hed-long"      # --arm: the run's folder under WORK/runs
TAG = "px112-tta8-reinhard"


def prefix(arm: str) -> str:
    """The readout files' name prefix of an arm: `long-` for the first long run (its files keep their names)."""
    return "long-" if arm == ARM else f"{arm}-"


def _watch(path: Path, stop: threading.Event, on_change) -> None:  # noqa: ANN001
    """Call on_change(mtime) whenever `path`'s mtime changes (polled every 0.5 s) until `stop` is set."""
    seen = None
    while not stop.is_set():
        try:
            m = path.stat().st_mtime
        except FileNotFoundError:
            m = None
        if m is not None and m != seen:
            seen = m
            on_change(m)
        stop.wait(0.5)


def _train(run: Path, sets: list[str], resume: bool, manifest: Path, snapshots: bool, recipe: str
           ) -> tuple[float, list]:
    """Run `pretrain`; (wall seconds, [(seconds since start, metric line)]) with line times from polling."""
    cmd = [*SSLKIT, "pathology", "pretrain", str(manifest), "-r", recipe, *[a for s in sets for a in ("--set", s)],
           "--out", str(run), "--resume" if resume else "--overwrite"]
    log(" ".join(cmd[2:]))
    stop, lines, t0 = threading.Event(), [], time.perf_counter()

    def new_lines(_m: float) -> None:
        text = (run / "metrics.jsonl").read_text().splitlines()
        for x in text[len(lines):]:
            lines.append((time.perf_counter() - t0, json.loads(x)))

    def snapshot(_m: float) -> None:
        (run / "snapshots").mkdir(exist_ok=True)
        k = len(list((run / "snapshots").glob("ckpt-*.pt")))
        time.sleep(0.5)                                   # save_checkpoint renames into place: the file is whole
        shutil.copy2(run / "checkpoints" / "last.pt", run / "snapshots" / f"ckpt-{k}.pt")

    watchers = [threading.Thread(target=_watch, args=(run / "metrics.jsonl", stop, new_lines), daemon=True)]
    if snapshots:
        watchers.append(threading.Thread(target=_watch, args=(run / "checkpoints" / "last.pt", stop, snapshot),
                                         daemon=True))
    for w in watchers:
        w.start()
    try:
        subprocess.run(cmd, check=True)
    finally:
        time.sleep(1.0)
        stop.set()
        for w in watchers:
            w.join()
    return time.perf_counter() - t0, lines


def cmd_pretrain(args: argparse.Namespace) -> None:
    manifest = args.manifest or args.work / "tiles" / "manifest-dev.parquet"
    RESULTS.mkdir(parents=True, exist_ok=True)
    plan_f, run = RESULTS / "plan.json", args.work / "runs" / args.arm
    if not plan_f.is_file() and args.steps:      # the step count given: no timing run
        s, k = args.steps, args.snapshots
        plan = {"timing": None, "budget_s": None, "steps": s, "extra_sets": args.set,
                "sets": [f"train.steps={s}", f"train.warmup_steps={s // 10}", f"train.checkpoint_every={s // k}",
                         *args.set]}
        plan_f.write_text(json.dumps(plan, indent=1))
    if not plan_f.is_file():
        t_steps = args.timing_steps
        wall, lines = _train(args.work / "runs" / f"{args.arm}-timing", [f"train.steps={t_steps}", "train.warmup_steps=4",
                             "train.checkpoint_every=100000"], False, manifest, False, args.recipe)
        (t_a, a), (t_b, b) = lines[0], lines[-1]
        rate = (b["step"] - a["step"]) / (t_b - t_a)                 # steps/s between the first and last log line
        startup = wall - t_steps / rate
        steps = args.steps or int((args.budget_s - startup) * rate // 40 * 40)
        plan = {"timing": {"steps": t_steps, "wall_s": wall, "steps_per_s": rate, "tiles_per_s": rate * 64,
                           "startup_and_export_s": startup, "lines": [(t, m["step"]) for t, m in lines]},
                "budget_s": args.budget_s, "steps": steps,
                "sets": [f"train.steps={steps}", f"train.warmup_steps={steps // 10}",
                         f"train.checkpoint_every={steps // args.snapshots}", *args.set]}
        plan_f.write_text(json.dumps(plan, indent=1))
        log(f"timing: {rate * 64:.1f} tiles/s, start-up {startup:.0f}s -> {steps} steps in {args.budget_s}s")
    plan = json.loads(plan_f.read_text())
    if (run / "encoder" / "config.json").is_file():
        log(f"{run} is finished")
        return
    resume = (run / "checkpoints" / "last.pt").is_file()
    wall, lines = _train(run, plan["sets"], resume, manifest, True, args.recipe)
    steps = [m for _, m in lines if "loss" in m]
    info = {"wall_s": wall, "resumed": resume, "steps": steps[-1]["step"], "sets": plan["sets"],
            "pretrained_on": f"the {len(__import__('pandas').read_parquet(manifest))} tiles of " + (
                "the development folds 0-2 (not fold 3)" if args.manifest is None else str(manifest)) + ", no labels",
            "manifest": str(manifest.relative_to(ROOT) if manifest.is_relative_to(ROOT) else manifest),
            "first_loss": steps[0]["loss"], "final_loss": steps[-1]["loss"],
            "data_wait": float(np.mean([m["data_wait"] for m in steps[1:]])),
            "curve": [{k: m[k] for k in ("step", "loss", "teacher_entropy", "pair_top1", "lr", "dino", "koleo", "ibot",
                                         "ibot_teacher_entropy", "masked_share") if k in m}
                      for m in steps]}            # DINO: teacher entropy (+ KoLeo/iBOT terms), SimCLR pair_top1
    if resume and (RESULTS / "pretrain.json").is_file():
        info["wall_s_before"] = json.loads((RESULTS / "pretrain.json").read_text())["wall_s"]
    (RESULTS / "pretrain.json").write_text(json.dumps(info, indent=1))
    log(f"pretrained {info['steps']} steps in {wall:.0f}s, loss {info['first_loss']:.3f} -> {info['final_loss']:.3f}")


def snapshot_encoders(work: Path, arm: str = ARM, teacher: bool = True) -> dict[str, Path]:
    """{name: encoder dir}: the student of every kept snapshot (s<step>) and the EMA teacher of the last (t<step>)."""
    from sslkit.core.checkpoint import load_checkpoint
    from sslkit.core.export import build_encoder, export_encoder
    from sslkit.domains.pathology.method import PathologyRecipe, tile_meta

    run = work / "runs" / arm
    recipe = PathologyRecipe.model_validate(__import__("yaml").safe_load((run / "recipe.yaml").read_text()))
    out: dict[str, Path] = {}
    states = {}
    for f in sorted((run / "snapshots").glob("ckpt-*.pt")):
        state = load_checkpoint(f)
        states[int(state["step"])] = (f, state)
    last = max(states)
    for step, (_, state) in sorted(states.items()):
        for who, prefix in (("s", "encoder."), ("t", "teacher.encoder.")):
            if who == "t" and (step != last or not teacher):
                continue
            d = run / "snapshot-encoders" / f"{who}{step}"
            if not (d / "config.json").is_file():
                spec = json.loads(state["encoder_spec"])
                enc = build_encoder(spec)
                w = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
                enc.load_state_dict(w, strict=True)
                export_encoder(enc, spec, d, extra={**tile_meta(recipe), "step": step, "weights": who})
            out[f"{who}{step}"] = d
    return out


def read_suffix(mpp: float | None) -> str:
    """The encoder-name suffix of a read: '' = the native tile resized to 112 px (1.24 um/px on GlaS), '-mpp1' = 112 px
    read at 1.0 um/px around the same centre (as pretraining and `sslkit pathology embed` read it)."""
    return "" if mpp is None else f"-mpp{mpp:g}"


def cmd_embed(args: argparse.Namespace) -> None:
    import torch

    import sslkit
    from pathology_readout import reinhard_targets
    from sslkit.domains.pathology.data import TileDataset
    from sslkit.domains.pathology.model import random_twin, tile_batches
    from sslkit.domains.pathology.readout import block_tokens, reinhard

    rows = __import__("pandas").read_parquet(args.work / "tiles" / "manifest.parquet")
    fold = np.load(args.work / "embeddings" / "labels.npy")[1]
    mpps = None if args.read_mpp is None else [args.read_mpp]      # None: the default read, unchanged
    suffix = read_suffix(args.read_mpp)
    times_f = RESULTS / "embed_times.json"
    times = json.loads(times_f.read_text()) if times_f.is_file() else {}
    stats = None
    encoders = snapshot_encoders(args.work, args.arm, not args.no_teacher)
    jobs = [(f"{prefix(args.arm)}{name}{suffix}", d) for name, d in encoders.items()
            if not args.only or name in args.only.split(",")]
    if args.random:              # the random-weight twin (seed 0) of the arm's ViT, read and read out alike
        jobs.append((f"random{suffix}", None))
    for key, d in jobs:
        f = args.work / "readout" / f"{key}-{TAG}.npy"
        if f.is_file():
            continue
        t0 = time.perf_counter()
        if stats is None:
            stats, ref = reinhard_targets(rows, 112, fold, mpps)
        enc = (sslkit.load_encoder(d) if d is not None
               else random_twin(sslkit.load_encoder(next(iter(encoders.values())))))
        batches = (torch.from_numpy(reinhard(t.numpy(), stats[i * 32: i * 32 + len(t)], ref))
                   for i, t in enumerate(tile_batches(TileDataset(rows, 112, mpps=mpps), 32)))
        with torch.inference_mode():
            z = torch.cat([block_tokens(enc, t, 8) for t in batches])
        np.save(f, z.float().numpy())
        times[key] = time.perf_counter() - t0
        times_f.write_text(json.dumps(times, indent=1))
        log(f"{f.name}: {tuple(z.shape)} in {times[key]:.1f}s")
    f = args.work / "embeddings" / f"handcrafted{suffix}.npy"
    if args.handcrafted and not f.is_file():       # HED colour + LBP/GLCM texture of the same 112-px tiles
        from sslkit.domains.pathology.features import handcrafted_features

        t0 = time.perf_counter()
        ds = TileDataset(rows, 112, mpps=mpps)
        np.save(f, handcrafted_features([ds.read(i) for i in range(len(ds))]).astype(np.float32))
        times[f"handcrafted{suffix}"] = time.perf_counter() - t0
        times_f.write_text(json.dumps(times, indent=1))
        log(f"{f.name} in {times[f'handcrafted{suffix}']:.1f}s")


def _chosen(work: Path) -> tuple[dict, dict, float]:
    c = json.loads((work / "readout" / "chosen.json").read_text())
    assert c["tile"].split(" | ")[1:3] == ["px112", "tta8-reinhard"], c
    return parse_spec(f"x | {c['tile']}"), c["abmil"], float(c["mean_c"])


def _names(work: Path, arm: str) -> list[str]:
    pre = prefix(arm)
    names = [p.name[len(pre): -len(f"-{TAG}.npy")] for p in (work / "readout").glob(f"{pre}*-{TAG}.npy")]
    names = [n for n in names if re.fullmatch(r"[st]\d+(-mpp[\d.]+)?", n)]   # not another arm's files
    return sorted(names, key=lambda n: (n[0] == "t", int(n[1:].split("-")[0]), n))


def cmd_trend(args: argparse.Namespace) -> None:
    """Development folds only: tile probe and MIL AUC per snapshot."""
    y, fold = np.load(args.work / "embeddings" / "labels.npy")
    cv, _ = dev_and_holdout(fold)
    assert all(HOLDOUT not in set(fold[np.concatenate(s)].tolist()) for s in cv)
    spec, head, c = _chosen(args.work)
    out = RESULTS / "trend.json"
    res = json.loads(out.read_text()) if out.is_file() else {}
    for name in _names(args.work, args.arm):
        if name in res:
            continue
        t0 = time.perf_counter()
        x = features(args.work, f"{prefix(args.arm)}{name}", {**spec, "tag": "-reinhard"})
        bags, yb, fb = image_bags(args.work, x)
        res[name] = {"tile linear dev": linear_probe(x, y, cv),
                     "abmil chosen dev": mil_scores(bags, yb, fb, head, args.seeds, "dev"),
                     f"mean pooling C={c} dev": mil_scores(bags, yb, fb, c, args.seeds, "dev"),
                     "seconds": time.perf_counter() - t0}
        out.write_text(json.dumps(res, indent=1))
        r = res[name]
        log(f"{name}: tile dev {r['tile linear dev'][0]:.3f}, ABMIL dev {r['abmil chosen dev']['auc'][0]:.3f}, "
            f"mean pool dev {r[f'mean pooling C={c} dev']['auc'][0]:.3f} ({r['seconds']:.0f}s)")


def _score(args: argparse.Namespace, name: str, cv: list, held: list, y: np.ndarray, with_c1: bool) -> dict:
    """One encoder of the arm with the chosen readout: tile probe and the image heads, dev and held-out fold 3."""
    spec, head, c = _chosen(args.work)
    t0 = time.perf_counter()
    key = name if name.startswith(("random", "handcrafted")) else f"{prefix(args.arm)}{name}"   # baselines: no arm
    x = features(args.work, key, {**spec, "tag": "-reinhard"})
    r: dict = {"encoder": name, "spec": spec,
               "tile linear": {"dev": linear_probe(x, y, cv), "holdout": linear_probe(x, y, held)}}
    bags, yb, fb = image_bags(args.work, x)
    heads = {"abmil shipped": SHIPPED_MIL, "abmil chosen": head, **({"mean pooling C=1": 1.0} if with_c1 else {}),
             f"mean pooling C={c}": c}
    for hname, h in heads.items():
        r[hname] = {part: mil_scores(bags, yb, fb, h, args.seeds, part) for part in ("dev", "holdout")}
    r["seconds"] = time.perf_counter() - t0
    return r


def cmd_final(args: argparse.Namespace) -> None:
    """The final encoder (rule: student unless the teacher's dev tile probe is higher), dev + held-out fold 3."""
    y, fold = np.load(args.work / "embeddings" / "labels.npy")
    cv, held = dev_and_holdout(fold)
    trend = json.loads((RESULTS / "trend.json").read_text())
    last = max(int(n[1:]) for n in trend)
    s, t = f"s{last}", f"t{last}"
    name = t if t in trend and trend[t]["tile linear dev"][0] > trend[s]["tile linear dev"][0] else s
    out = RESULTS / "final.json"
    if out.is_file():
        log(f"{out} exists: the held-out fold was scored already — not again")
        return
    r = {"rule": "student unless the EMA teacher's dev tile balanced accuracy is higher",
         **_score(args, name, cv, held, y, with_c1=True)}
    out.write_text(json.dumps(r, indent=1))
    cmd_report(args)


def cmd_heldout(args: argparse.Namespace) -> None:
    """One more encoder of the arm (`--name`, e.g. the EMA teacher t540 after `final` chose the student), scored
    like `final` — dev and held-out fold 3, once — into RESULTS/heldout-<name>.json. Chooses nothing."""
    y, fold = np.load(args.work / "embeddings" / "labels.npy")
    cv, held = dev_and_holdout(fold)
    out = RESULTS / f"heldout-{args.name}.json"
    if out.is_file():
        log(f"{out} exists: the held-out fold was scored already for {args.name} — not again")
        return
    r = _score(args, args.name, cv, held, y, with_c1=False)
    out.write_text(json.dumps(r, indent=1))
    log(f"{args.name}: tile {r['tile linear']['dev'][0]:.3f} / {r['tile linear']['holdout'][0]:.3f} (dev / held-out); "
        + "; ".join(f"{h} AUC {r[h]['dev']['auc'][0]:.3f} / {r[h]['holdout']['auc'][0]:.3f}"
                    for h in r if h.startswith(("abmil", "mean"))) + f" ({r['seconds']:.0f}s)")


def cmd_report(args: argparse.Namespace) -> None:
    trend = json.loads((RESULTS / "trend.json").read_text()) if (RESULTS / "trend.json").is_file() else {}
    c = _chosen(args.work)[2]
    print(f"{'encoder':10s} {'tile BA dev':>13s} {'ABMIL AUC dev':>14s} {'mean-pool AUC dev':>18s}")
    for n, r in trend.items():
        print(f"{n:10s} {r['tile linear dev'][0]:.3f} ± {r['tile linear dev'][1]:.3f} "
              f"{r['abmil chosen dev']['auc'][0]:14.3f} {r[f'mean pooling C={c} dev']['auc'][0]:18.3f}")
    if (RESULTS / "final.json").is_file():
        r = json.loads((RESULTS / "final.json").read_text())
        t = r["tile linear"]
        print(f"final {r['encoder']}: tile {t['dev'][0]:.3f} / {t['holdout'][0]:.3f} (dev / held-out); " + "; ".join(
            f"{h} AUC {r[h]['dev']['auc'][0]:.3f} / {r[h]['holdout']['auc'][0]:.3f}"
            for h in r if h.startswith(("abmil", "mean"))))


def main() -> None:
    global RESULTS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("step", choices=["pretrain", "embed", "trend", "final", "heldout", "report"])
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-pathology-v2")
    ap.add_argument("--budget-s", type=float, default=1340.0, help="wall seconds of the long run, start-up included")
    ap.add_argument("--timing-steps", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--recipe", default="dino-tiny", help="smoke runs: tiny")
    ap.add_argument("--steps", type=int, default=0, help="smoke runs: the long run's steps instead of the budget's")
    ap.add_argument("--results", type=Path, default=RESULTS, help="another arm or a smoke run: its results folder")
    ap.add_argument("--arm", default=ARM, help="the run's name under WORK/runs (another arm: another name)")
    ap.add_argument("--set", action="append", default=[], help="extra recipe overrides of this arm (repeatable)")
    ap.add_argument("--snapshots", type=int, default=4, help="checkpoints kept: every steps/N steps")
    ap.add_argument("--no-teacher", action="store_true", help="embed: not the last snapshot's EMA teacher (time)")
    ap.add_argument("--name", default="", help="heldout: the encoder to score (e.g. t540, the last EMA teacher; "
                    "t540-mpp1 read at 1.0 um/px; random-mpp1 / handcrafted-mpp1: the baselines, read alike)")
    ap.add_argument("--manifest", type=Path, default=None,
                    help="pretrain: the tiles to pretrain on (default WORK/tiles/manifest-dev.parquet, folds 0-2)")
    ap.add_argument("--only", default="", help="embed: only these encoders, e.g. t540 (comma-separated)")
    ap.add_argument("--read-mpp", type=float, default=None,
                    help="embed: read the 112-px tiles at this um/px around the tile centres (1.0 = as dino-tiny "
                         "pretrains and as `sslkit pathology embed` reads; files get '-mpp1' after the encoder name; "
                         "default: the native 224-px tile resized to 112 px, 1.24 um/px on GlaS)")
    ap.add_argument("--random", action="store_true", help="embed: also the random-weight twin, read alike")
    ap.add_argument("--handcrafted", action="store_true",
                    help="embed: also handcrafted features of the same tiles (WORK/embeddings/handcrafted[-mppM].npy)")
    args = ap.parse_args()
    RESULTS = args.results
    {"pretrain": cmd_pretrain, "embed": cmd_embed, "trend": cmd_trend, "final": cmd_final,
     "heldout": cmd_heldout, "report": cmd_report}[args.step](args)


if __name__ == "__main__":
    main()
