"""Pretraining throughput (crops/s) and peak memory over a multi-epoch run: sslkit's on-disk cache,
memory-mapped float16 crops and bf16 autocast vs a straightforward MONAI pipeline (LoadImaged ->
EnsureChannelFirstd -> Orientationd -> Spacingd -> ScaleIntensityRanged -> RandSpatialCropSamplesd, 2 crops
per load as in SwinUNETR/Pretrain) feeding the same Alice model in fp32.

Both arms resample to the same spacing (default 2 mm) and train on the same number of crops per epoch
(volumes x pairs-per-volume x 2). A pretraining run passes over the same volumes many times; sslkit fills its
cache during the first (cold) epoch, MONAI decodes and resamples every volume again in every epoch. The table
gives the cold epoch, the later (steady-state) epochs and the whole run, each as crops/s and as a ratio to
MONAI. Each arm runs in its own process, so peak resident memory (ru_maxrss) is per arm.

    .venv/bin/python benchmarks/medical3d_throughput.py [--data DIR] [--epochs 3] [--pairs-per-volume 8]
DIR defaults to a fresh `sslkit medical3d sample-data --resolution 1` (MNI152 T1 1 mm + 4 warped copies).
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def model(roi: int, spacing: float):  # noqa: ANN201
    from sslkit.core.recipes import load_recipe
    from sslkit.domains.medical3d.method import Alice
    from sslkit.domains.medical3d.recipe import Medical3DRecipe

    cfg = load_recipe(Medical3DRecipe, "medical3d", "mri-demo", [f"data.roi={roi}", f"data.spacing=[{spacing},{spacing},{spacing}]"])
    return Alice(cfg), cfg


def step(m, opt, batch, bf16: bool) -> None:  # noqa: ANN001
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss, _ = m(batch)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def volume_paths(data: Path) -> list[Path]:
    return sorted(p for d in ("images", "unlabelled") for p in (data / "mri" / d).glob("*.nii.gz"))


def arm_sslkit(paths: list[Path], a: argparse.Namespace) -> list[float]:
    """Seconds per epoch; epoch 0 includes filling the cache (decode, RAS, resample, scale, foreground crop)."""
    import torch

    from sslkit.core.loop import use_bf16
    from sslkit.domains.medical3d.datasets import CrossVolumePairs
    from sslkit.domains.medical3d.preprocess import settings_from
    from sslkit.domains.medical3d.discover import find_volumes
    from sslkit.domains.medical3d.preprocess import VolumeCache, prepare

    torch.manual_seed(0)
    m, cfg = model(a.roi, a.spacing)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], 1e-4)
    cache = VolumeCache(Path(os.environ["BENCH_CACHE"]), settings_from(cfg.data))
    bf16 = use_bf16("auto", torch.device("cpu"))
    times, ds = [], None
    for _ in range(a.epochs):
        t0 = time.perf_counter()
        if ds is None:                                                         # what `pretrain` does once per run
            entries, _ = prepare(find_volumes(paths), cache, strict=True)
            ds = CrossVolumePairs(entries, a.roi, a.pairs_per_volume, cfg.data.pair_jitter)
        order = torch.randperm(len(ds)).tolist()
        for s in range(0, len(order), a.batch):
            items = [ds[i] for i in order[s:s + a.batch]]
            step(m, opt, {k: torch.stack([it[k] for it in items]) for k in ("query", "anchor")}, bf16)
        times.append(time.perf_counter() - t0)
    return times


def arm_monai(paths: list[Path], a: argparse.Namespace) -> list[float]:
    """Seconds per epoch; every pair of crops is one load -> orient -> resample -> scale -> 2 random crops."""
    import numpy as np
    import torch
    from monai import transforms as T

    torch.manual_seed(0)
    m, _ = model(a.roi, a.spacing)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], 1e-4)
    hi = float(os.environ["BENCH_AMAX"])
    pipe = T.Compose([T.LoadImaged(["image"]), T.EnsureChannelFirstd(["image"]), T.Orientationd(["image"], "RAS"),
                      T.Spacingd(["image"], pixdim=(a.spacing,) * 3),
                      T.ScaleIntensityRanged(["image"], a_min=0.0, a_max=hi, b_min=0.0, b_max=1.0, clip=True),
                      T.RandSpatialCropSamplesd(["image"], (a.roi,) * 3, num_samples=2, random_size=False)])
    items = [str(p) for p in paths for _ in range(a.pairs_per_volume)]
    times = []
    for _ in range(a.epochs):
        t0 = time.perf_counter()
        order = np.random.permutation(len(items))
        for s in range(0, len(order), a.batch):
            qs, ks = [], []
            for i in order[s:s + a.batch]:
                crops = pipe({"image": items[i]})
                qs.append(torch.as_tensor(crops[0]["image"]).float())
                ks.append(torch.as_tensor(crops[1]["image"]).float())
            step(m, opt, {"query": torch.stack(qs), "anchor": torch.stack(ks)}, False)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--pairs-per-volume", type=int, default=8)
    ap.add_argument("--roi", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4, help="pairs per step (2 crops each)")
    ap.add_argument("--spacing", type=float, default=2.0, help="target spacing (mm) of both pipelines")
    ap.add_argument("--arm")
    a = ap.parse_args()
    if a.arm:
        paths = volume_paths(a.data)
        times = {"sslkit": arm_sslkit, "monai": arm_monai}[a.arm](paths, a)
        print(json.dumps({"times": times, "crops_per_epoch": 2 * len(paths) * a.pairs_per_volume,
                          "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return
    tmp = Path(tempfile.mkdtemp(prefix="m3d-bench-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # runs and caches are GBs: never left behind
    data = a.data
    if data is None:
        data = tmp / "data"
        subprocess.run([sys.executable, "-m", "sslkit", "medical3d", "sample-data", str(data), "--resolution", "1",
                        "--subjects", "4", "--synthetic", "0", "--lesions", "0"], check=True, capture_output=True)
    import nibabel as nib
    import numpy as np

    t1 = np.asarray(nib.load(str(volume_paths(data)[0])).dataobj, dtype=np.float32)
    amax = float(np.percentile(t1[t1 != 0], 99.5))        # a fixed MRI intensity window for ScaleIntensityRanged
    env = {**os.environ, "BENCH_CACHE": str(tmp / "cache"), "BENCH_AMAX": str(amax)}
    rows = {}
    for arm in ("monai", "sslkit"):
        out = subprocess.run([sys.executable, __file__, "--arm", arm, "--data", str(data), "--epochs", str(a.epochs),
                              "--pairs-per-volume", str(a.pairs_per_volume), "--roi", str(a.roi), "--batch", str(a.batch),
                              "--spacing", str(a.spacing)], capture_output=True, text=True, env=env)
        if out.returncode:
            sys.exit(out.stderr)
        rows[arm] = json.loads(out.stdout.strip().splitlines()[-1])
    n = rows["monai"]["crops_per_epoch"]

    def rates(r: dict) -> tuple[float, float, float]:
        t = r["times"]
        steady = n * (len(t) - 1) / sum(t[1:]) if len(t) > 1 else float("nan")
        return n / t[0], steady, n * len(t) / sum(t)

    base = rates(rows["monai"])
    print(f"{len(volume_paths(data))} volumes, {a.epochs} epochs x {n} crops (roi {a.roi}, {a.spacing:g} mm, "
          f"{2 * a.batch} crops/step), load average {os.getloadavg()[0]:.2f}")
    print(f"{'pipeline':<10}{'cold epoch':>12}{'steady':>10}{'whole run':>11}{'cold x':>8}{'steady x':>10}{'run x':>7}"
          f"{'peak MB':>9}   (crops/s; x = ratio to MONAI)")
    for name, r in rows.items():
        c, s, w = rates(r)
        print(f"{name:<10}{c:>12.2f}{s:>10.2f}{w:>11.2f}{c / base[0]:>8.2f}{s / base[1]:>10.2f}{w / base[2]:>7.2f}"
              f"{r['peak_mb']:>9.0f}")


if __name__ == "__main__":
    main()
