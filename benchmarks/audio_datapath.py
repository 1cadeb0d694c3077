"""Audio data path: decoding versus the decoded-fbank cache, and the data-wait share of a training step.

Target (issue 23): a second epoch read from the cache runs at ≥ 10× the clips/s of the first (which decodes:
soundfile + resample + Kaldi fbank), and data-wait is < 10% of step time in the realistic recipe on CPU.

    .venv/bin/python benchmarks/audio_datapath.py [--data DIR] [--out benchmarks/results/audio_datapath]
        [--recipe ssamba] [--wait-recipe ssamba-fsdd] [--steps 4] [--batch-size 32]

Data: FSDD (../shared/data/audio/fsdd, 3,000 clips at 8 kHz) when present, else `sslkit audio sample-data`.
Measured, all in this process on the same clips and the same windows:
  1. first epoch, decoding: the `data.cache: false` dataset through a DataLoader (each window decoded when read);
  2. the cache build (`build_cache`, the pass `pretrain` makes once: decode + statistics + write);
  3. second epoch, from the cache: the same DataLoader over the memory-mapped cache.
  4. data-wait: `sslkit audio pretrain` with --wait-recipe (default ssamba-fsdd, the CPU recipe for this data) for
     --steps steps at batch --batch-size; the mean `data_wait` of metrics.jsonl after the first step.
Rates are given per wall-clock second and per CPU-second of this process: on a machine shared with other jobs the
wall-clock ratio moves with their load, the CPU-time ratio much less.
Each part's result is written to OUT/*.json as it finishes; a rerun skips parts already measured (--fresh redoes).
"""
from __future__ import annotations

import argparse
import atexit
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT.parent / "shared" / "data" / "audio" / "fsdd" / "recordings"


def epoch_rate(dataset, n_clips: int, batch_size: int = 32, passes: int = 1) -> dict:  # noqa: ANN001
    """Passes of a DataLoader (main process, as fit() with num_workers=0): windows/s and clips/s of the median pass.

    A cached pass over FSDD takes ~0.2 s, so one pass moved ±30 % between runs; the cache is timed over 7 passes."""
    import statistics

    from torch.utils.data import DataLoader

    walls, cpus = [], []
    for _ in range(passes):
        t0, c0 = time.perf_counter(), time.process_time()
        n = 0
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=True):
            n += len(batch["fbank"])
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    dt, cpu = statistics.median(walls), statistics.median(cpus)
    return {"seconds": dt, "cpu_seconds": cpu, "passes": passes, "pass_seconds": walls, "windows": n,
            "windows_per_s": n / dt, "clips_per_s": n_clips / dt, "clips_per_cpu_s": n_clips / cpu}


def part(out: Path, name: str, fresh: bool, fn) -> dict:  # noqa: ANN001
    path = out / f"{name}.json"
    if path.is_file() and not fresh:
        result = json.loads(path.read_text())
        print(f"{name}: already measured ({path})", file=sys.stderr)
        return result
    result = fn()
    path.write_text(json.dumps(result, indent=2))
    print(f"{name}: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "audio_datapath")
    ap.add_argument("--recipe", default="ssamba", help="recipe whose data settings parts 1-3 use")
    ap.add_argument("--wait-recipe", default="ssamba-fsdd", help="recipe trained in part 4 (data-wait)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--set", action="append", default=[], help="recipe override for every part, e.g. "
                    "data.clip_frames=128 (FSDD's clips are 0.14–2.3 s)")
    ap.add_argument("--fresh", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(2)
    from sslkit.core.console import print_table
    from sslkit.core.recipes import load_recipe
    from sslkit.domains.audio.data import Windows, build_cache, read_index
    from sslkit.domains.audio.io import find_audio

    data = args.data or (FSDD if FSDD.is_dir() else None)
    work = Path(tempfile.mkdtemp(prefix="audio-datapath-"))
    atexit.register(shutil.rmtree, work, True)            # its cache and run: ~100 MB
    if data is None:
        data = work / "kw"
        subprocess.run([sys.executable, "-m", "sslkit", "audio", "sample-data", str(data)], check=True)
    try:
        from sslkit.domains.audio.method import RECIPE_SCHEMA

        cfg = load_recipe(RECIPE_SCHEMA, "audio", args.recipe, args.set).data
    except ImportError:
        from sslkit.domains.audio.features import AudioData

        cfg = AudioData(**{k.split(".", 1)[1]: int(v) for k, v in (s.split("=") for s in args.set)})
    sources = find_audio([data])
    n = len(sources)
    print(f"{n} clips from {data}; recipe {args.recipe}: {cfg.n_mels} mel bins, windows of {cfg.clip_frames} frames",
          file=sys.stderr)

    def build() -> dict:
        t0, c0 = time.perf_counter(), time.process_time()
        build_cache(sources, cfg, work / "cache", strict=False, min_frames=16)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        return {"seconds": dt, "cpu_seconds": cpu, "clips_per_s": n / dt, "clips_per_cpu_s": n / cpu}

    names = ("cache_build", "epoch1_decoding", "epoch2_cache")
    if args.fresh or not all((args.out / f"{k}.json").is_file() for k in names):
        cache_build = part(args.out, "cache_build", True, build)          # the epochs below need the cache
        index = read_index(work / "cache")
        first = part(args.out, "epoch1_decoding", True, lambda: epoch_rate(
            Windows(work / "cache", {**index, "cached": False}, cfg, index["mean"], index["std"]), n))
        second = part(args.out, "epoch2_cache", True, lambda: epoch_rate(
            Windows(work / "cache", index, cfg, index["mean"], index["std"]), n, passes=7))
    else:
        cache_build, first, second = (part(args.out, k, False, dict) for k in names)

    def wait() -> dict:
        run = work / "run"
        cmd = [sys.executable, "-m", "sslkit", "audio", "pretrain", str(data), "--recipe", args.wait_recipe, "--out", str(run),
               "--set", f"train.steps={args.steps}", "--set", f"train.batch_size={args.batch_size}",
               "--set", "train.log_every=1", "--set", "train.device=cpu", *(x for s in args.set for x in ("--set", s))]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"}
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][1:]
        return {"recipe": args.wait_recipe, "batch_size": args.batch_size, "steps_measured": len(rows),
                "data_wait": sum(r["data_wait"] for r in rows) / len(rows),
                "step_seconds": sum(args.batch_size / r["samples_per_s"] for r in rows) / len(rows)}

    waits = part(args.out, f"data_wait_{args.wait_recipe}", args.fresh, wait)
    def row(name: str, r: dict) -> list[str]:
        return [name, f"{r['clips_per_s']:.0f}", f"{r['clips_per_s'] / first['clips_per_s']:.1f}×",
                f"{r['clips_per_cpu_s']:.0f}", f"{r['clips_per_cpu_s'] / first['clips_per_cpu_s']:.1f}×"]

    rows = [row("1st epoch: decode each window (data.cache: false)", first),
            row("2nd epoch: memory-mapped cache (median of 7 passes)", second)]
    rows.insert(1, row("cache build (once per run: decode + mean/std + write)", cache_build))
    print_table(f"audio data path, {n} clips ({data.name}), windows of {cfg.clip_frames} frames, batch 32, 1 process",
                ["pass", "clips/s (wall)", "vs 1st", "clips per CPU-s", "vs 1st"], rows)
    if "data_wait" in waits:
        print(f"data-wait in `{args.wait_recipe}` (batch {args.batch_size}, CPU): {100 * waits['data_wait']:.2f}% of a "
              f"{waits['step_seconds']:.2f} s step", file=sys.stderr)
    else:
        print(f"data-wait not measured: {waits.get('error')}", file=sys.stderr)
    (args.out / "summary.json").write_text(json.dumps({"clips": n, "data": str(data), "epoch1": first,
                                                       "epoch2": second, "cache_build": cache_build,
                                                       "ratio": second["clips_per_s"] / first["clips_per_s"],
                                                       "ratio_cpu": second["clips_per_cpu_s"] / first["clips_per_cpu_s"],
                                                       "data_wait": waits}, indent=2))


if __name__ == "__main__":
    main()
