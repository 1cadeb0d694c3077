"""LA2018 few-label left-atrium segmentation: pretraining and semi-supervised fine-tuning against from-scratch training.

The standard split of the data's datalist: 80 `training` volumes, 20 `test` volumes (never seen before scoring).
1. Pretrain (`sslkit medical3d pretrain DATALIST`) on the images of the 80 training volumes, no labels — `alice`
   and `swinunetr-ssl` (the run's manifest must count 80 volumes, else the benchmark stops: test images leaked).
2. Fine-tune (`sslkit medical3d finetune RUN DATALIST --labelled N`) on the first N training volumes of the
   datalist (fixed, listed in each result) and score the 20 test volumes with sliding-window inference:
   Dice, Jaccard, HD95, ASD. Arms:
     scratch            --from-scratch (the conv encoder of the alice run: same architecture as `alice`)
     alice, swin        from that pretraining
     alice+unl, ...     plus `--unlabelled DATALIST` (the other training images, mean teacher / UA-MT)
     scratch+unl        UA-MT alone, no pretraining
     full               --from-scratch with all 80 labelled (the upper bound; `--labels` need not list 80;
                        its own step count with --full-steps)
   for every N in --labels and every seed (finetune.seed; the pretraining is shared by the seeds).
3. `--trend 0,300,1000,...`: Dice against alice pretraining steps — each count fine-tuned with --trend-labelled
   volumes (default 8), seed 0; 0 is the from-scratch arm. Alice pretraining runs form one chain: the main run
   (--pre-steps, `runs/pretrain-alice`) is a run of its own; every other count N (`runs/pretrain-alice-N`) continues
   a copy of the next shorter count of the chain with --resume (the shortest starts fresh). A continuation gets a new
   cosine schedule over N steps, so its learning rate and the teacher's EMA momentum restart where the copy stopped
   (warm restart) and anneal again by step N: every point of the trend is an annealed run.
4. `--alice-steps N`: the alice pretraining that the alice arms fine-tune from (default: the scale's); arms from a
   run other than the main one are named `alice-pN-...`, so the trend's seed-0 arm of N is also the table's.

Every arm's result is written to OUT/<arm>.json as soon as it finishes (run folders under OUT/runs/, ignored by git);
a rerun skips finished arms whose settings match and resumes an interrupted run from its checkpoint. OUT/table.md
and OUT/summary.json hold the table: mean ± std over seeds, every seed, pretrained minus scratch per seed, the
published V-Net figures of the data's README beside it, per-arm wall time and data-wait (share of step time spent
waiting for crops); OUT/trend.png the Dice against pretraining steps. OUT: benchmarks/results/medical3d_la2018 at
the cpu scale, medical3d_la2018_gpu / _quick at the others.

    .venv/bin/python benchmarks/medical3d_la2018.py --scale gpu --device cuda           # the full benchmark, trend too
    .venv/bin/python benchmarks/medical3d_la2018.py --scale cpu --labels 8 --arms scratch,alice   # CPU: 8 labelled,
        # 3 seeds, trend 0/300/1,000/3,000 pretraining steps, alice arms from the 3,000-step run (~37 CPU-min)
    .venv/bin/python benchmarks/medical3d_la2018.py --scale cpu --labels 4,16 --seeds 1 --arms scratch,alice --trend none
    .venv/bin/python benchmarks/medical3d_la2018.py --scale cpu --arms full --seeds 1 --full-steps 2500 \\
        --keep-steps 900,1800     # the 80-label upper bound alone (~40 CPU-min; no pretraining, no trend)
    .venv/bin/python benchmarks/medical3d_la2018.py --scale quick                       # minutes: does it run
    .venv/bin/python benchmarks/medical3d_la2018.py --table                             # the table only
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from medical3d_checkpoints import KeepCheckpoints, score_checkpoint, test_scores  # noqa: E402
from medical3d_la2018_table import table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "medical3d" / "la2018"
OUT = ROOT / "benchmarks" / "results" / "medical3d_la2018"
# per scale: resolution (mm; None = the data's 0.625), recipes (alice, swinunetr-ssl), and what the benchmark sets on
# top of them (None: the recipe's own): crop side, pretraining/fine-tuning steps and batch, teacher passes for the
# uncertainty mask, the trend's pretraining counts and the alice arms' pretraining. `la2018` is the CPU-sized recipe
# (1.25 mm, 48³ crops, tiny conv encoder; at the gpu scale its encoder is made card-sized); the swin arm needs a crop
# side that is a multiple of 32 (--roi 64 for every arm when it is included at the cpu scale). The cpu scale is what
# was measured on 2 cores: 300 main pretraining steps, 200 fine-tuning steps.
SCALES = {
    "gpu": dict(spacing=None, roi=96, pre_steps=10000, pre_batch=8, ft_steps=6000, ft_batch=4, passes=8,
                recipes={"alice": "la2018", "swin": "swinunetr-ssl"}, trend=(0, 1000, 3000, 10000), alice_steps=10000,
                pre_set=["model.size=base", "model.blocks=2", "train.warmup_steps=500"]),   # la2018 at card size
    "cpu": dict(spacing=1.25, roi=None, pre_steps=300, pre_batch=None, ft_steps=200, ft_batch=None, passes=2,
                recipes={"alice": "la2018", "swin": "tiny-swin"}, trend=(0, 300, 1000, 3000), alice_steps=3000),
    "quick": dict(spacing=1.25, roi=None, pre_steps=20, pre_batch=2, ft_steps=20, ft_batch=2, passes=2,
                  recipes={"alice": "la2018", "swin": "tiny-swin"}, trend=(0, 10, 20, 40), alice_steps=40),
}
INITS = {"scratch": None, "alice": "alice", "swin": "swin"}


def given(settings: dict[str, object]) -> list[str]:
    """key=value overrides for the settings that are not None."""
    return [f"{k}={v}" for k, v in settings.items() if v is not None]


def sslkit(args: list[str], log: Path) -> float:
    """Run `sslkit medical3d ARGS` as a user would; its output goes to `log`; returns the wall time in seconds."""
    cmd = [sys.executable, "-m", "sslkit", "medical3d", *map(str, args)]
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        fh.write("$ sslkit medical3d " + " ".join(map(str, args)) + "\n")
        fh.flush()
        res = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    if res.returncode:
        tail = log.read_text()[-3000:]
        sys.exit(f"failed ({res.returncode}): sslkit medical3d {' '.join(map(str, args))}\n{tail}")
    return time.perf_counter() - t0


def data_wait(run: Path) -> float | None:
    """Mean share of step time spent waiting for the data loader, over the run's logged steps."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return None
    waits = [r["data_wait"] for r in map(json.loads, path.read_text().splitlines()) if "data_wait" in r]
    return float(np.mean(waits)) if waits else None


class Bench:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a, self.s = a, dict(SCALES[a.scale])
        for key in ("roi", "pre_steps", "ft_steps", "passes", "trend", "alice_steps"):
            if getattr(a, key) is not None:
                self.s[key] = getattr(a, key)
        if a.trend is None and "alice" not in {x.split("+")[0] for x in a.arms.split(",")}:
            self.s["trend"] = ()    # the scale's trend comes with the alice arms (`--arms full` alone runs no trend)
        if a.spacing is not None:
            self.s["spacing"] = None if a.spacing <= 0 else a.spacing
        self.out, self.runs = a.out, a.out / "runs"
        self.datalist = a.data / "datalist.json"
        self.training = json.loads(self.datalist.read_text())["training"]
        self.chain = chain(self.s["pre_steps"], [*self.s["trend"], self.s["alice_steps"]])
        self.started = time.perf_counter()

    def out_of_time(self) -> bool:
        return self.a.max_minutes is not None and time.perf_counter() - self.started > 60 * self.a.max_minutes

    def device_set(self) -> list[str]:
        return [] if self.a.device == "auto" else ["--set", f"train.device={self.a.device}"]

    def pre_sets(self, steps: int) -> list[str]:
        """The --set values of a pretraining run of `steps` steps at this scale."""
        s = self.s      # checkpoint_every is inherited by fine-tuning from the run (a 1-step run must not say 1)
        return [f"train.steps={steps}", "data.modality=mri", "train.checkpoint_every=100",
                "data.spacing=" + ("null" if s["spacing"] is None else f"[{s['spacing']}, {s['spacing']}, {s['spacing']}]"),
                *given({"train.batch_size": s["pre_batch"], "data.roi": s["roi"]}), *s.get("pre_set", []), *self.a.set]

    def finished(self, run: Path, method: str, steps: int) -> bool:
        """Whether `run` finished with this scale's settings for `steps` steps (its record says so)."""
        record = self.out / f"{run.name}.json"
        done = json.loads(record.read_text()) if record.is_file() else {}
        return (run / "encoder").is_dir() and done.get("settings") == self.pre_sets(steps) \
            and done.get("recipe") == self.s["recipes"][method]

    def alice_run(self, steps: int) -> Path:
        """The alice pretraining run of `steps` steps: the main one (`runs/pretrain-alice`), else
        `runs/pretrain-alice-N`, continued from the next shorter run of the chain (built first when missing)."""
        if steps == self.s["pre_steps"]:
            return self.pretrain("alice", steps)
        run = self.runs / f"pretrain-alice-{steps}"
        if self.finished(run, "alice", steps):
            return run
        source = self.chain.get(steps)
        return self.pretrain("alice", steps, run.name, self.alice_run(source) if source else None)

    def pretrain(self, method: str, steps: int, name: str | None = None, resume_from: Path | None = None) -> Path:
        """A pretraining run on the training images (rerun: kept when finished with the same settings, resumed when
        interrupted, run again when the settings differ, e.g. another --scale into the same --out). `resume_from`:
        start as a copy of that (shorter) run and continue it with --resume."""
        run = self.runs / (name or f"pretrain-{method}")
        record, marker = self.out / f"{run.name}.json", run / "continued-from.json"
        if self.finished(run, method, steps):
            return run
        sets = self.pre_sets(steps)
        args = ["pretrain", self.datalist, "--recipe", self.s["recipes"][method], "--out", run]
        source = {"run": resume_from.name, "steps": json.loads((self.out / f"{resume_from.name}.json").read_text())
                  ["steps"]} if resume_from is not None else None
        interrupted = (run / "checkpoints" / "last.pt").is_file() and not record.is_file() \
            and (source is None or (marker.is_file() and json.loads(marker.read_text()) == source))
        if source is not None and not interrupted:      # a fresh copy of the shorter run, then continue it
            shutil.rmtree(run, ignore_errors=True)
            shutil.copytree(resume_from, run)
            marker.write_text(json.dumps(source))
        record.unlink(missing_ok=True)
        args += ["--resume"] if source is not None or interrupted else ["--overwrite"]
        for x in sets:
            args += ["--set", x]
        wall = sslkit(args + self.device_set(), self.runs / "logs" / f"{run.name}.log")
        volumes = json.loads((run / "manifest.json").read_text()).get("medical3d", {}).get("volumes")
        if volumes != len(self.training):
            sys.exit(f"{run}: pretraining read {volumes} volumes, the datalist has {len(self.training)} training "
                     "volumes — the test images must stay out of pretraining")
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"method": method, "recipe": self.s["recipes"][method], "steps": steps,
                                      "volumes": volumes, "wall_s": wall, "data_wait": data_wait(run),
                                      "continued_from": source, "settings": sets}, indent=2))
        return run

    def arm_name(self, arm: str, pre_steps: int) -> str:
        """`alice`, `alice+unl` from the main pretraining run; `alice-pN`, `alice+unl-pN` from the N-step one."""
        return arm if arm.startswith(("scratch", "swin")) or pre_steps == self.s["pre_steps"] else f"{arm}-p{pre_steps}"

    def finetune(self, arm: str, init: str, labelled: int, seed: int, unlabelled: bool, pre: Path,
                 steps: int | None = None, keep: tuple[int, ...] | list[int] = ()) -> dict | None:
        """One fine-tuning arm (`steps`: fine-tuning steps, default the scale's); its result JSON (skipped when
        already there with the same settings). `keep`: steps whose checkpoints are kept while it trains
        (runs/<arm>-kept/) and scored on the test volumes afterwards, once each (`checkpoints` in the JSON)."""
        s = self.s
        sets = [*given({"finetune.steps": steps or s["ft_steps"]}), f"finetune.seed={seed}",
                *given({"finetune.batch_size": s["ft_batch"], "finetune.roi": s["roi"]}), *self.a.ft_set]
        if unlabelled:
            sets += [f"finetune.semisup.passes={s['passes']}"] if s["passes"] > 0 else ["finetune.semisup.uncertainty=false"]
        record = self.out / f"{arm}.json"
        settings = {"init": init, "labelled": labelled, "seed": seed, "unlabelled": unlabelled, "pretrained": str(pre),
                    "pretrain_steps": json.loads((self.out / f"{pre.name}.json").read_text())["steps"],
                    "sets": sets, "spacing": s["spacing"]}
        if record.is_file() and same_settings(json.loads(record.read_text()).get("settings") or {}, settings):
            return self.score_kept(arm, keep)
        if self.out_of_time():
            print(f"skipped {arm}: --max-minutes {self.a.max_minutes} reached", file=sys.stderr)
            return None
        run = self.runs / arm
        args = ["finetune", pre, self.datalist, "--labelled", labelled, "--out", run]
        args += ["--from-scratch"] if init == "scratch" else []
        args += ["--unlabelled", self.datalist] if unlabelled else []
        args += ["--resume"] if (run / "checkpoints" / "last.pt").is_file() and not (run / "evaluation.json").is_file() \
            else ["--overwrite"]
        for x in sets:
            args += ["--set", x]
        print(f"{arm} ...", file=sys.stderr, flush=True)
        kept = self.runs / f"{arm}-kept"
        if "--overwrite" in args:           # copies from an earlier run of this arm are not this run's
            shutil.rmtree(kept, ignore_errors=True)
        keeper = KeepCheckpoints(run, sorted(keep), kept) if keep else None
        if keeper is not None:
            keeper.start()
        attempts = self.runs / f"{arm}.attempts.json"       # the wall time of every try of a run that resumes
        tries = json.loads(attempts.read_text()) if "--resume" in args and attempts.is_file() else []
        for t in tries:         # an interrupted try ended with the checkpoint it wrote when stopped
            t["end"] = t["end"] or (run / "checkpoints" / "last.pt").stat().st_mtime
        tries.append({"start": time.time(), "end": None})
        attempts.write_text(json.dumps(tries))
        wall = sslkit(args + self.device_set(), self.runs / "logs" / f"{arm}.log")
        tries[-1]["end"] = time.time()
        attempts.write_text(json.dumps(tries))
        earlier = sum(t["end"] - t["start"] for t in tries[:-1])
        if keeper is not None:
            keeper.done.set()
        evaluation = json.loads((run / "evaluation.json").read_text())
        scores = test_scores(evaluation)
        manifest = json.loads((run / "manifest.json").read_text()).get("medical3d", {})
        result = {"arm": arm, "settings": settings, "wall_s": wall + earlier, "tries": len(tries),
                  "data_wait": data_wait(run),
                  "train_ids": manifest.get("train"), "test_ids": manifest.get("held_out"),
                  "mean": {m: float(np.nanmean(list(v.values()))) for m, v in scores.items()},
                  "per_volume": scores, "command": "sslkit medical3d " + " ".join(map(str, args))}
        record.write_text(json.dumps(result, indent=2))
        print(f"{arm}: Dice {result['mean'].get('dice', float('nan')):.2f} in {(wall + earlier) / 60:.1f} min",
              file=sys.stderr)
        return self.score_kept(arm, keep)

    def score_kept(self, arm: str, keep: tuple[int, ...] | list[int]) -> dict:
        """The arm's record, with the test scores of its kept checkpoints (steps in `keep`) added to `checkpoints`
        — each scored once, the record written after each."""
        record = self.out / f"{arm}.json"
        result = json.loads(record.read_text())
        done = result.setdefault("checkpoints", {})
        for step in sorted(keep):
            path = self.runs / f"{arm}-kept" / f"step-{step}.pt"
            if str(step) in done or not path.is_file():
                continue
            t0 = time.perf_counter()
            scores = score_checkpoint(self.runs / arm, path, self.datalist,
                                      self.runs / f"{arm}-kept" / f"scored-{step}", self.a.device)
            done[str(step)] = {**scores, "wall_s": time.perf_counter() - t0}
            record.write_text(json.dumps(result, indent=2))
            print(f"{arm} at step {step}: Dice {scores.get('dice', float('nan')):.2f}", file=sys.stderr)
        return result

    def run(self) -> None:
        a, s = self.a, self.s
        arms = a.arms.split(",")
        pre: dict[str, Path] = {}
        if any(x.startswith("swin") for x in arms):
            pre["swin"] = self.pretrain("swin", s["pre_steps"])
        if any(x.startswith("alice") for x in arms):
            pre["alice"] = self.alice_run(s["alice_steps"])
        if "alice" not in pre:      # from-scratch arms only: a run of the recipe carries it (its encoder unused)
            pre["alice"] = self.alice_run(s["pre_steps"]) if any(s["trend"]) \
                else self.pretrain("alice", 1, "pretrain-recipe")
        n = a.trend_labelled
        for steps in s["trend"]:    # Dice against pretraining steps first: seed 0 at n labelled, shared with the table
            if self.out_of_time():
                break
            if steps == 0:
                self.finetune(f"scratch-L{n}-s0", "scratch", n, 0, False, pre["alice"])
            else:
                self.finetune(f"{self.arm_name('alice', steps)}-L{n}-s0", "alice", n, 0, False, self.alice_run(steps))
        for seed in range(a.seeds):
            for n in a.labels:
                for arm in arms:
                    if arm == "full":
                        continue
                    init, unl = arm.split("+")[0], arm.endswith("+unl")
                    name = self.arm_name(arm, s["alice_steps"]) if init == "alice" else arm
                    self.finetune(f"{name}-L{n}-s{seed}", init, n, seed, unl, pre[INITS[init] or "alice"])
            if "full" in arms:
                self.finetune(f"full-L{len(self.training)}-s{seed}", "scratch", len(self.training), seed, False,
                              pre["alice"], a.full_steps, a.keep_steps)


def chain(main: int, counts: list[int]) -> dict[int, int | None]:
    """{pretraining steps: the count its run continues, None for a fresh run}: the main count and the shortest are
    fresh; every other count continues the next shorter one (main included). 0 (no pretraining) is left out."""
    steps = sorted({main, *counts} - {0})
    return {n: (None if n == main or i == 0 else steps[i - 1]) for i, n in enumerate(steps)}


def same_settings(old: dict, new: dict) -> bool:
    """Whether a recorded arm ran with `new`'s settings; a from-scratch arm does not depend on which pretraining run
    carried its recipe, so that run's path and steps are not compared."""
    drop = ("pretrained", "pretrain_steps") if new.get("init") == "scratch" else ()
    return {k: v for k, v in old.items() if k not in drop} == {k: v for k, v in new.items() if k not in drop}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help="the LA2018 folder (datalist.json, README.md)")
    ap.add_argument("--out", type=Path, default=None, help="results folder; default: benchmarks/results/"
                    "medical3d_la2018 for --scale cpu, medical3d_la2018_<scale> for the others (scales never mix)")
    ap.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda (train.device of every run)")
    ap.add_argument("--labels", default="4,8,16", help="labelled training volumes, comma-separated")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--arms", default="scratch,alice,swin,alice+unl,swin+unl,scratch+unl,full")
    ap.add_argument("--spacing", type=float, default=None, help="mm (0: the data's own 0.625); default: the scale's")
    ap.add_argument("--roi", type=int, default=None)
    ap.add_argument("--pre-steps", type=int, default=None)
    ap.add_argument("--ft-steps", type=int, default=None)
    ap.add_argument("--full-steps", type=int, default=None,
                    help="fine-tuning steps of the all-labelled arm (default: --ft-steps, else the scale's)")
    ap.add_argument("--keep-steps", default="", help="the all-labelled arm: also score its checkpoints at these "
                    "steps on the test volumes (multiples of 100, e.g. 900,1800; a trend within the run, not a choice)")
    ap.add_argument("--passes", type=int, default=None, help="teacher passes for the uncertainty mask (0: none)")
    ap.add_argument("--trend", default=None, help="alice pretraining step counts for Dice against pretraining steps, "
                    "e.g. 0,300,1000 (0: from scratch); none: no trend; default: the scale's when --arms has alice arms")
    ap.add_argument("--trend-labelled", type=int, default=8, help="labelled volumes of the trend's arms")
    ap.add_argument("--alice-steps", type=int, default=None,
                    help="the alice pretraining (steps) the alice arms fine-tune from; default: the scale's")
    ap.add_argument("--set", action="append", default=[], help="pretraining recipe override")
    ap.add_argument("--ft-set", action="append", default=[], help="fine-tuning override (every arm)")
    ap.add_argument("--max-minutes", type=float, default=None, help="start no new arm after this long")
    ap.add_argument("--table", action="store_true", help="only write the table from the results there")
    a = ap.parse_args()
    a.labels = [int(x) for x in a.labels.split(",") if x]
    a.trend = None if a.trend is None else tuple(sorted(int(x) for x in a.trend.split(",") if x not in ("", "none")))
    a.keep_steps = sorted(int(x) for x in a.keep_steps.split(",") if x)
    if not (a.data / "datalist.json").is_file():
        sys.exit(f"{a.data}/datalist.json not found — give the LA2018 folder with --data")
    a.out = a.out or (OUT if a.scale == "cpu" else OUT.with_name(f"{OUT.name}_{a.scale}"))
    a.out.mkdir(parents=True, exist_ok=True)
    if not a.table:
        bad = [x for x in a.arms.split(",") if x not in ("scratch", "alice", "swin", "alice+unl", "swin+unl",
                                                           "scratch+unl", "full")]
        if bad:
            sys.exit(f"--arms: unknown {bad}")
        Bench(a).run()
    print(table(a.out, a.data, a.trend_labelled))


if __name__ == "__main__":
    main()
