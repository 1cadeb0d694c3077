"""The GPU check, part 2: a short bf16 pretraining of each domain's realistic recipe, one table.

For each domain: make its sample data, run `sslkit <domain> pretrain` with the realistic recipe for a fixed number
of steps on CUDA in bf16 (as a user would, in a subprocess), then read the run's metrics.jsonl: samples/s and
data-wait (median over the logged steps after the first, which holds start-up) and the peak GPU memory fit()
records. Prints the table, writes it as JSON to $OUT/gpu-check.json when OUT is set, exits 1 if any domain failed.

    python scripts/gpu_check.py [--device cuda] [--steps-scale 1.0] [--only graph,audio] [--work DIR]
`--device cpu --steps-scale 0.1` checks the script itself on a machine without a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

# domain → (commands that make the data, the pretrain arguments, steps). {d} is the domain's scratch folder.
# Step counts keep the whole script (with part 1, the CUDA tests) within 8 minutes on one GPU.
PLAN: dict[str, tuple[list[list[str]], list[str], int]] = {
    "medical3d": ([["medical3d", "sample-data", "{d}/data", "--resolution", "2", "--subjects", "2", "--synthetic", "16",
                    "--lesions", "0"]],
                  ["medical3d", "pretrain", "{d}/data/synthetic/images", "-r", "alice"], 40),
    "pathology": ([["pathology", "sample-data", "{d}/data"]],
                  ["pathology", "pretrain", "{d}/data", "-r", "dino"], 40),
    "audio": ([["audio", "sample-data", "{d}/data"]],
              ["audio", "pretrain", "{d}/data", "-r", "ssamba"], 40),
    "graph": ([["graph", "sample-data", "{d}/data"]],
              ["graph", "pretrain", "{d}/data/sbm", "-r", "scgc-star", "--clusters", "4"], 100),
    "lidar": ([["lidar", "simulate", "{d}/seq", "--frames", "24", "--beams", "32"],
               ["lidar", "pseudo-label", "{d}/seq", "--out", "{d}/pl"]],
              ["lidar", "train-student", "{d}/seq", "{d}/pl", "-r", "dinostar"], 40),
    "tabular": ([["tabular", "sample-data", "{d}/data"]],
                ["tabular", "pretrain", "{d}/data/adult.csv", "--target", "income", "--id", "id", "-r", "t-jepa"], 60),
}


def _sslkit(args: list[str], env: dict[str, str], log) -> tuple[int, float]:  # noqa: ANN001
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "sslkit", *args], stdout=log, stderr=subprocess.STDOUT, env=env)
    return res.returncode, time.perf_counter() - t0


def check(domain: str, work: Path, device: str, scale: float) -> dict:
    prep, pretrain, steps = PLAN[domain]
    d = work / domain
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    env = {**os.environ}
    steps = max(2, round(steps * scale))
    row: dict = {"domain": domain, "recipe": pretrain[pretrain.index("-r") + 1], "steps": steps, "ok": False}
    with open(d / "log.txt", "w") as log:
        for cmd in prep:
            code, _ = _sslkit([a.format(d=d) for a in cmd], env, log)
            if code:
                row["error"] = f"data step `{' '.join(cmd[:2])}` exited {code} (see {d / 'log.txt'})"
                return row
        args = [a.format(d=d) for a in pretrain] + [
            "--out", str(d / "run"), "--set", f"train.steps={steps}", "--set", f"train.device={device}",
            "--set", "train.precision=auto", "--set", "train.log_every=5", "--set", f"train.checkpoint_every={steps}"]
        code, seconds = _sslkit(args, env, log)
    row["seconds"] = round(seconds, 1)
    metrics = d / "run" / "metrics.jsonl"
    records = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
    records = [r for r in records if "samples_per_s" in r]
    if code or not records:
        row["error"] = f"pretrain exited {code} (see {d / 'log.txt'})"
        return row
    steady = records[1:] or records
    row.update(ok=True, samples_per_s=round(statistics.median(r["samples_per_s"] for r in steady), 1),
               data_wait=round(statistics.median(r["data_wait"] for r in steady), 3),
               gpu_peak_mb=round(max((r.get("gpu_peak_mb", 0.0) for r in records)), 1),
               final_loss=round(records[-1]["loss"], 4))
    manifest = d / "run" / "manifest.json"
    if manifest.exists():
        row["device"] = json.loads(manifest.read_text()).get("device", "")
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps-scale", type=float, default=1.0)
    ap.add_argument("--only", default="", help="comma-separated domains (default: all six)")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("GPU_CHECK_DIR", ".gpu-check")))
    args = ap.parse_args()
    domains = [x for x in args.only.split(",") if x] or list(PLAN)
    rows = []
    for domain in domains:
        row = check(domain, args.work, args.device, args.steps_scale)
        rows.append(row)
        print(f"{domain}: {'ok' if row['ok'] else 'FAILED — ' + row['error']}", file=sys.stderr, flush=True)
    cols = ["domain", "recipe", "steps", "seconds", "samples_per_s", "data_wait", "gpu_peak_mb", "final_loss", "ok"]
    print("\n" + " | ".join(cols))
    for r in rows:
        print(" | ".join(str(r.get(c, "–")) for c in cols))
    if os.environ.get("OUT"):
        out = Path(os.environ["OUT"]) / "gpu-check.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=2))
        print(f"table: {out}", file=sys.stderr)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
