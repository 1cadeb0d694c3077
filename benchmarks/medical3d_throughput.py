"""Pretraining throughput (crops/s) and peak memory: sslkit's cached, memory-mapped, bf16 pipeline vs a
straightforward MONAI pipeline (LoadImaged -> Orientationd -> Spacingd -> ScaleIntensityRanged ->
RandSpatialCropSamplesd) feeding the same Alice model, fp32. Each arm runs in its own process (separate peaks).

    .venv/bin/python benchmarks/medical3d_throughput.py [--data DIR] [--steps 8] [--roi 32]
DIR defaults to a fresh `sslkit medical3d sample-data --resolution 1` (MNI152 T1 1 mm + warped copies).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def model(roi: int):  # noqa: ANN201
    from sslkit.core.recipes import load_recipe
    from sslkit.domains.medical3d.method import Alice
    from sslkit.domains.medical3d.recipe import Medical3DRecipe

    cfg = load_recipe(Medical3DRecipe, "medical3d", "mri-demo", [f"data.roi={roi}"])
    return Alice(cfg), cfg


def step(m, opt, batch, bf16: bool) -> None:  # noqa: ANN001
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss, _ = m(batch)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def arm_sslkit(files: list[Path], steps: int, roi: int, batch: int) -> float:
    import torch

    from sslkit.core.loop import use_bf16
    from sslkit.domains.medical3d.datasets import CrossVolumePairs
    from sslkit.domains.medical3d.finetune import settings_from
    from sslkit.domains.medical3d.io import find_volumes
    from sslkit.domains.medical3d.preprocess import VolumeCache, prepare

    m, cfg = model(roi)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], 1e-4)
    cache = VolumeCache(Path(os.environ["BENCH_CACHE"]), settings_from(cfg.data))
    t0, n = time.perf_counter(), 0                                           # timing includes preprocessing
    entries, _ = prepare(find_volumes(files), cache, strict=True)           # a cold cache is filled here, once
    ds = CrossVolumePairs(entries, roi, 1000, cfg.data.pair_jitter)
    bf16 = use_bf16("auto", torch.device("cpu"))
    for s in range(steps + 1):
        items = [ds[(s * batch + i) % len(ds)] for i in range(batch)]
        b = {k: torch.stack([it[k] for it in items]) for k in ("query", "anchor")}
        step(m, opt, b, bf16)
        n += 2 * batch
    return n / (time.perf_counter() - t0)


def arm_monai(files: list[Path], steps: int, roi: int, batch: int) -> float:
    import torch
    from monai import transforms as T

    m, cfg = model(roi)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], 1e-4)
    paths = sorted(str(f) for d in files for f in Path(d).rglob("*.nii.gz"))
    pipe = T.Compose([T.LoadImaged(["image"]), T.EnsureChannelFirstd(["image"]), T.Orientationd(["image"], "RAS"),
                      T.Spacingd(["image"], pixdim=(2.0, 2.0, 2.0)),
                      T.ScaleIntensityRanged(["image"], a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True),
                      T.RandSpatialCropSamplesd(["image"], (roi,) * 3, num_samples=2, random_size=False)])
    t0, n = time.perf_counter(), 0
    for s in range(steps + 1):
        qs, ks = [], []
        for i in range(batch):
            crops = pipe({"image": paths[(s * batch + i) % len(paths)]})
            qs.append(torch.as_tensor(crops[0]["image"]).float())
            ks.append(torch.as_tensor(crops[1]["image"]).float())
        step(m, opt, {"query": torch.stack(qs), "anchor": torch.stack(ks)}, False)
        n += 2 * batch
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--roi", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--arm")
    a = ap.parse_args()
    if a.arm:
        files = [a.data / "mri" / "images", a.data / "mri" / "unlabelled"]
        rate = {"sslkit": arm_sslkit, "monai": arm_monai}[a.arm](files, a.steps, a.roi, a.batch)
        print(json.dumps({"rate": rate, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return
    tmp = Path(tempfile.mkdtemp(prefix="m3d-bench-"))
    data = a.data
    if data is None:
        data = tmp / "data"
        subprocess.run([sys.executable, "-m", "sslkit", "medical3d", "sample-data", str(data), "--resolution", "1",
                        "--subjects", "4", "--synthetic", "0"], check=True)
    env = {**os.environ, "BENCH_CACHE": str(tmp / "cache")}
    rows = {}
    for arm in ("monai", "sslkit", "sslkit"):  # sslkit twice: the second run finds the cache filled
        out = subprocess.run([sys.executable, __file__, "--arm", arm, "--data", str(data), "--steps", str(a.steps),
                              "--roi", str(a.roi), "--batch", str(a.batch)], capture_output=True, text=True, env=env)
        if out.returncode:
            sys.exit(out.stderr)
        rows[arm if arm not in rows else "sslkit (cache warm)"] = json.loads(out.stdout.strip().splitlines()[-1])
    base = rows["monai"]["rate"]
    print(f"{'pipeline':<22}{'crops/s':>10}{'x MONAI':>10}{'peak MB':>10}   (roi {a.roi}, batch {a.batch} pairs, "
          f"{a.steps + 1} steps timed from the first read, 2 shared CPU cores under load)")
    for name, r in rows.items():
        print(f"{name:<22}{r['rate']:>10.2f}{r['rate'] / base:>10.2f}{r['peak_mb']:>10.0f}")


if __name__ == "__main__":
    main()
