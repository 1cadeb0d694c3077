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
3. `--trend 0,100,...`: Dice against pretraining steps — for each step count an alice pretraining run (fewer steps
   than --pre-steps: a run of its own, with its own schedule; more: a copy of the main run continued with --resume),
   fine-tuned with the first of --labels, seed 0; 0 is the from-scratch arm.

Every arm's result is written to OUT/<arm>.json as soon as it finishes (run folders under OUT/runs/, ignored by git);
a rerun skips finished arms whose settings match and resumes an interrupted run from its checkpoint. OUT/table.md
and OUT/summary.json hold the table: mean ± std over seeds, every seed, the published V-Net figures of the data's
README beside it, and per-arm wall time and data-wait (share of step time spent waiting for crops).

    .venv/bin/python benchmarks/medical3d_la2018.py --scale gpu --device cuda           # the full benchmark
    .venv/bin/python benchmarks/medical3d_la2018.py --scale cpu --labels 8 --seeds 1 \\
        --arms scratch,alice,alice+unl --max-minutes 30                                 # a CPU-sized subset
    .venv/bin/python benchmarks/medical3d_la2018.py --scale cpu --arms full --seeds 1 --full-steps 2500 \\
        --keep-steps 900,1800         # the 80-label upper bound alone (~40 CPU-min; no pretraining), with its trend
    .venv/bin/python benchmarks/medical3d_la2018.py --scale quick                       # minutes: does it run
    .venv/bin/python benchmarks/medical3d_la2018.py --table                             # the table only
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from medical3d_checkpoints import PERCENT, KeepCheckpoints, score_checkpoint, test_scores  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "medical3d" / "la2018"
OUT = ROOT / "benchmarks" / "results" / "medical3d_la2018"
METRICS = ("dice", "jaccard", "hd95", "asd")
# per scale: resolution (mm; None = the data's 0.625), recipes (alice, swinunetr-ssl), and what the benchmark sets on
# top of them (None: the recipe's own): crop side, pretraining/fine-tuning steps and batch, teacher passes for the
# uncertainty mask. `la2018` is the CPU-sized recipe (1.25 mm, 48³ crops, tiny conv encoder; at the gpu scale its
# encoder is made card-sized); the swin arm needs a crop side that is a multiple of 32 (--roi 64 for every arm when
# it is included at the cpu scale).
SCALES = {
    "gpu": dict(spacing=None, roi=96, pre_steps=10000, pre_batch=8, ft_steps=6000, ft_batch=4, passes=8,
                recipes={"alice": "la2018", "swin": "swinunetr-ssl"},
                pre_set=["model.size=base", "model.blocks=2", "train.warmup_steps=500"]),   # la2018 at card size
    "cpu": dict(spacing=1.25, roi=None, pre_steps=2000, pre_batch=None, ft_steps=None, ft_batch=None, passes=2,
                recipes={"alice": "la2018", "swin": "tiny-swin"}),
    "quick": dict(spacing=1.25, roi=None, pre_steps=20, pre_batch=2, ft_steps=20, ft_batch=2, passes=2,
                  recipes={"alice": "la2018", "swin": "tiny-swin"}),
}
INITS = {"scratch": None, "alice": "alice", "swin": "swin"}


def published(readme: Path) -> dict[int, tuple[str, str]]:
    """{labelled volumes: (supervised V-Net Dice, best semi-supervised)} from the table in the data's README."""
    out = {}
    text = readme.read_text() if readme.is_file() else ""
    for m in re.finditer(r"^\|\s*(\d+)\s*\(\d+%\)\s*\|\s*([^|]+)\|\s*([^|]+)\|", text, re.M):
        out[int(m.group(1))] = (m.group(2).strip(), m.group(3).strip())
    return out


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
        for key in ("roi", "pre_steps", "ft_steps", "passes"):
            if getattr(a, key) is not None:
                self.s[key] = getattr(a, key)
        if a.spacing is not None:
            self.s["spacing"] = None if a.spacing <= 0 else a.spacing
        self.out, self.runs = a.out, a.out / "runs"
        self.datalist = a.data / "datalist.json"
        self.training = json.loads(self.datalist.read_text())["training"]
        self.started = time.perf_counter()

    def out_of_time(self) -> bool:
        return self.a.max_minutes is not None and time.perf_counter() - self.started > 60 * self.a.max_minutes

    def device_set(self) -> list[str]:
        return [] if self.a.device == "auto" else ["--set", f"train.device={self.a.device}"]

    def pretrain(self, method: str, steps: int, name: str | None = None, resume_from: Path | None = None) -> Path:
        """A pretraining run on the training images (rerun: kept when finished with the same settings, resumed when
        interrupted, run again when the settings differ, e.g. another --scale into the same --out)."""
        run = self.runs / (name or f"pretrain-{method}")
        record = self.out / f"{run.name}.json"
        s = self.s      # checkpoint_every is inherited by fine-tuning from the run (a 1-step run must not say 1)
        sets = [f"train.steps={steps}", "data.modality=mri", "train.checkpoint_every=100",
                "data.spacing=" + ("null" if s["spacing"] is None else f"[{s['spacing']}, {s['spacing']}, {s['spacing']}]"),
                *given({"train.batch_size": s["pre_batch"], "data.roi": s["roi"]}), *s.get("pre_set", []), *self.a.set]
        done = json.loads(record.read_text()) if record.is_file() else None
        if done is not None and (run / "encoder").is_dir() and done.get("settings") == sets \
                and done.get("recipe") == s["recipes"][method]:
            return run
        args = ["pretrain", self.datalist, "--recipe", s["recipes"][method], "--out", run]
        if resume_from is not None and resume_from != run:          # trend: continue a copy of the shorter run
            shutil.rmtree(run, ignore_errors=True)
            shutil.copytree(resume_from, run)
        resume = (run / "checkpoints" / "last.pt").is_file() and (done is None or resume_from is not None)
        args += ["--resume"] if resume else ["--overwrite"]
        for x in sets:
            args += ["--set", x]
        wall = sslkit(args + self.device_set(), self.runs / "logs" / f"{run.name}.log")
        volumes = json.loads((run / "manifest.json").read_text()).get("medical3d", {}).get("volumes")
        if volumes != len(self.training):
            sys.exit(f"{run}: pretraining read {volumes} volumes, the datalist has {len(self.training)} training "
                     "volumes — the test images must stay out of pretraining")
        prev = json.loads(record.read_text()) if record.is_file() and resume else {}
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"method": method, "recipe": s["recipes"][method], "steps": steps,
                                      "volumes": volumes, "wall_s": wall + prev.get("wall_s", 0.0),
                                      "data_wait": data_wait(run), "settings": sets}, indent=2))
        return run

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
        methods = sorted({x.split("+")[0] for x in arms if x.split("+")[0] in ("alice", "swin")}
                         | ({"alice"} if a.trend else set()))
        pre = {m: self.pretrain(m, s["pre_steps"]) for m in methods}
        if "alice" not in pre:      # from-scratch arms only: a 1-step run carries their recipe (its encoder unused)
            pre["alice"] = self.pretrain("alice", 1, "pretrain-recipe")
        for seed in range(a.seeds):
            for n in a.labels:
                for arm in arms:
                    if arm == "full":
                        continue
                    init, unl = arm.split("+")[0], arm.endswith("+unl")
                    self.finetune(f"{arm}-L{n}-s{seed}", init, n, seed, unl, pre[INITS[init] or "alice"])
            if "full" in arms:
                self.finetune(f"full-L{len(self.training)}-s{seed}", "scratch", len(self.training), seed, False,
                              pre["alice"], a.full_steps, a.keep_steps)
        n = a.labels[0]
        for steps in a.trend:       # shorter: a run of its own; the main run; longer: the main run continued
            if self.out_of_time():
                break
            if steps == 0:                 # the from-scratch arm (shared with the table when it has run)
                self.finetune(f"scratch-L{n}-s0", "scratch", n, 0, False, pre["alice"])
            elif steps == s["pre_steps"]:
                self.finetune(f"alice-L{n}-s0", "alice", n, 0, False, pre["alice"])
            else:
                run = self.pretrain("alice", steps, f"pretrain-trend-{steps}",
                                    resume_from=pre["alice"] if steps > s["pre_steps"] else None)
                self.finetune(f"trend-p{steps}-L{n}-s0", "alice", n, 0, False, run)


def same_settings(old: dict, new: dict) -> bool:
    """Whether a recorded arm ran with `new`'s settings; a from-scratch arm does not depend on which pretraining run
    carried its recipe, so that run's path and steps are not compared."""
    drop = ("pretrained", "pretrain_steps") if new.get("init") == "scratch" else ()
    return {k: v for k, v in old.items() if k not in drop} == {k: v for k, v in new.items() if k not in drop}


def fmt(values: list[float], metric: str) -> str:
    if not values:
        return "—"
    d = 1 if metric in PERCENT else 2
    return f"{np.mean(values):.{d}f}" + (f" ± {np.std(values, ddof=1):.{d}f}" if len(values) > 1 else "")


def table(out: Path, data: Path) -> str:
    """table.md / summary.json from every arm's JSON under `out`."""
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))
               if not p.name.startswith(("pretrain-", "summary"))]
    pre = {p.stem: json.loads(p.read_text()) for p in out.glob("pretrain-*.json")}
    ref = published(data / "README.md")
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in results:
        if r["arm"].startswith("trend-"):
            continue
        name = r["arm"].rsplit("-L", 1)[0]
        groups.setdefault((name, r["settings"]["labelled"]), []).append(r)
    lines = ["| labelled | arm | seeds | Dice % | Jaccard % | HD95 mm | ASD mm | Dice per seed | V-Net (published) "
             "| best semi-sup. (published) | wall min / seed | data-wait |", "|" + "---|" * 12]
    summary = []
    for (name, n), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rs = sorted(rs, key=lambda r: r["settings"]["seed"])
        cells = {m: [r["mean"][m] for r in rs if m in r["mean"]] for m in METRICS}
        waits = [r["data_wait"] for r in rs if r.get("data_wait") is not None]
        sup, semi = ref.get(n, ("—", "—"))
        wall = np.mean([r["wall_s"] for r in rs]) / 60
        lines.append(f"| {n} | {name} | {len(rs)} | " + " | ".join(fmt(cells[m], m) for m in METRICS)
                     + f" | {', '.join(f'{d:.1f}' for d in cells['dice'])} | {sup} | {semi} | {wall:.1f} | "
                     + (f"{100 * np.mean(waits):.0f}%" if waits else "—") + " |")
        summary.append({"arm": name, "labelled": n, "seeds": [r["settings"]["seed"] for r in rs],
                        **{m: cells[m] for m in METRICS}, "wall_s": [r["wall_s"] for r in rs],
                        "data_wait": waits, "published_vnet": sup, "published_semisup": semi})
    for r in results:           # the test scores of an arm's kept checkpoints, and of its last
        if not r.get("checkpoints"):
            continue
        last = next((int(x.split("=")[1]) for x in r["settings"]["sets"] if x.startswith("finetune.steps=")), None)
        lines += ["", f"{r['arm']}: test scores of its checkpoints (one run of {last} steps; the earlier ones are "
                  "readings before its learning rate annealed, not runs of that length):", "",
                  "| step | Dice % | Jaccard % | HD95 mm | ASD mm |", "|---|---|---|---|---|"]
        rows = sorted(((int(k), v) for k, v in r["checkpoints"].items()), key=lambda kv: kv[0]) + [(last, r["mean"])]
        for step, m in rows:
            lines.append(f"| {step} | " + " | ".join(f"{m[k]:.{1 if k in PERCENT else 2}f}" if k in m else "—"
                                                      for k in METRICS) + " |")
    trend = [r for r in results if r["arm"].startswith("trend-")]
    if trend:      # with the from-scratch (step 0) and alice arms of the same labelled volumes and seed
        n = trend[0]["settings"]["labelled"]
        trend += [r for r in results if r["arm"] in (f"scratch-L{n}-s0", f"alice-L{n}-s0")]
        trend.sort(key=lambda r: r["settings"]["pretrain_steps"] if r["settings"]["init"] != "scratch" else 0)
    if trend:
        lines += ["", f"Dice against alice pretraining steps ({trend[0]['settings']['labelled']} labelled, seed 0):", "",
                  "| pretraining steps | Dice % | HD95 mm | fine-tuning wall min |", "|---|---|---|---|"]
        for r in trend:
            steps = 0 if r["settings"]["init"] == "scratch" else r["settings"]["pretrain_steps"]
            lines.append(f"| {steps} | {r['mean'].get('dice', float('nan')):.1f} | "
                         f"{r['mean'].get('hd95', float('nan')):.2f} | {r['wall_s'] / 60:.1f} |")
    if pre:
        lines += ["", "| pretraining run | recipe | steps | volumes | wall min | data-wait |", "|---|---|---|---|---|---|"]
        for k, p in sorted(pre.items()):
            w = p.get("data_wait")
            lines.append(f"| {k} | {p['recipe']} | {p['steps']} | {p['volumes']} | {p['wall_s'] / 60:.1f} | "
                         + (f"{100 * w:.0f}%" if w is not None else "—") + " |")
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    (out / "summary.json").write_text(json.dumps({"arms": summary, "trend": [
        {"arm": r["arm"], "dice": r["mean"].get("dice"), "settings": r["settings"]} for r in trend],
        "pretraining": pre}, indent=2))
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help="the LA2018 folder (datalist.json, README.md)")
    ap.add_argument("--out", type=Path, default=OUT)
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
    ap.add_argument("--trend", default="", help="pretraining step counts for the Dice-against-steps trend, e.g. 0,100,300")
    ap.add_argument("--set", action="append", default=[], help="pretraining recipe override")
    ap.add_argument("--ft-set", action="append", default=[], help="fine-tuning override (every arm)")
    ap.add_argument("--max-minutes", type=float, default=None, help="start no new arm after this long")
    ap.add_argument("--table", action="store_true", help="only write the table from the results there")
    a = ap.parse_args()
    a.labels = [int(x) for x in a.labels.split(",") if x]
    a.trend = sorted(int(x) for x in a.trend.split(",") if x)
    a.keep_steps = sorted(int(x) for x in a.keep_steps.split(",") if x)
    if not (a.data / "datalist.json").is_file():
        sys.exit(f"{a.data}/datalist.json not found — give the LA2018 folder with --data")
    a.out.mkdir(parents=True, exist_ok=True)
    if not a.table:
        bad = [x for x in a.arms.split(",") if x not in ("scratch", "alice", "swin", "alice+unl", "swin+unl",
                                                           "scratch+unl", "full")]
        if bad:
            sys.exit(f"--arms: unknown {bad}")
        Bench(a).run()
    print(table(a.out, a.data))


if __name__ == "__main__":
    main()
