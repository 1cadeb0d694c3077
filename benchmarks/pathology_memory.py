"""Memory of `sslkit pathology embed`: peak RSS must not grow with the number of tiles.

`embed` runs as a user runs it (a subprocess, `--workers 0` so every byte is in the one process whose peak RSS
the kernel reports through wait4) on slides with ~40, ~5,000 and ~50,000 tiles of 224 px at 0.5 µm/px:
- the CMU-1-Small-Region SVS (real, 2220×2967 px);
- generated pyramidal TIFFs at 0.5 µm/px filled with tissue, written tile by tile with tifffile (JPEG tiles via
  imagecodecs; levels as separate top-level pages, as OpenSlide reads them): 71×71 and 224×224 tiles of 224 px,
  and the same counts of 32-px tiles (a 50k-tile slide that embeds in about a minute on 2 cores).
The encoder is a stand-in (a 1-block ViT, patch 32, width 32, random weights, exported like a pretrain
run's): the memory that could grow with the tile count is the rows, the writer and the per-slide sums, not the
network. Pass --run RUN to use a real run's encoder instead.

Results go to benchmarks/results/pathology_memory.json per slide as each finishes; a rerun skips those done.
The generated slides are kept in --cache (default /tmp/sslkit-path-bench) between runs. Run:
    flock /tmp/sslkit-heavy.lock .venv/bin/python benchmarks/pathology_memory.py
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "pathology_memory.json"


def stand_in_encoder(folder: Path) -> Path:
    import torch

    from sslkit.core.export import encoder_spec, export_encoder
    from sslkit.domains.pathology.model import ViTEncoder

    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(0)
    kwargs = dict(arch="vit_tiny_patch16_224", img_size=224, patch_size=32, embed_dim=32, depth=1, num_heads=2)
    export_encoder(ViTEncoder(**kwargs), encoder_spec("pathology", "vit", **kwargs), folder,
                   extra={"tile_px": 224, "mpp": [0.5]})
    return folder


def peak_rss_mb(cmd: list[str]) -> tuple[float, float, str]:
    """(peak RSS MB of the child process, wall seconds, stderr tail) — ru_maxrss from wait4 on that child."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env={**os.environ,
                                                                                 "OMP_NUM_THREADS": "2"})
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read().decode(errors="replace")[-600:]
    if proc.returncode != 0:
        raise SystemExit(f"embed failed ({proc.returncode}): {tail}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t0, tail


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/sslkit-path-bench"))
    ap.add_argument("--run", type=Path, default=None, help="a pretrain run or export to embed with")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--only", default=None, help="comma-separated subset: cmu_svs,generated_5k,generated_50k")
    args = ap.parse_args()

    import pyarrow.parquet as pq

    from sslkit.core.console import print_table
    from sslkit.domains.pathology.samples import installed_cmu, write_synthetic_pyramid

    args.cache.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    encoder = args.run or stand_in_encoder(args.cache / "encoder")
    slides: list[tuple[str, Path | None, int, int]] = []      # name, path, tiles per side, tile px
    cmu = installed_cmu()
    if cmu is not None:
        slides.append(("cmu_svs", Path(cmu), 0, 224))
    slides += [("generated_5k", None, 71, 224), ("generated_50k", None, 224, 224),
               ("generated_5k_32px", None, 71, 32), ("generated_50k_32px", None, 224, 32)]
    for name, path, side, px in slides:
        if name in results or (args.only and name not in args.only.split(",")):
            continue
        if path is None:
            path = args.cache / f"{name}.tif"
            if not path.is_file():
                t0 = time.perf_counter()
                write_synthetic_pyramid(path, side * px, side * px, mpp=0.5, levels=6 if px > 32 else 4,
                                        tissue=1.0)
                print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.0f}s",
                      flush=True)
        out = args.cache / f"{name}.parquet"
        cmd = [sys.executable, "-m", "sslkit", "pathology", "embed", str(encoder), str(path), "--out", str(out),
               "--slides-out", str(args.cache / f"{name}-slides.parquet"), "--workers", "0", "--batch-size",
               str(args.batch_size), "--device", "cpu", "--mpp", "0.5", "--tile-px", str(px), "--overwrite"]
        rss, secs, tail = peak_rss_mb(cmd)
        meta = pq.ParquetFile(out).metadata
        results[name] = {"tile_px": px, "tiles": meta.num_rows, "row_groups": meta.num_row_groups, "peak_rss_mb": round(rss, 1),
                         "seconds": round(secs, 1), "tiles_per_s": round(meta.num_rows / secs, 1),
                         "slide": str(path), "file_mb": round(path.stat().st_size / 1e6, 1)}
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=1, sort_keys=True))
        print(f"{name}: {results[name]}", flush=True)
    rows = [[k, v.get("tile_px", 224), v["tiles"], v["row_groups"], f"{v['peak_rss_mb']:.0f}", f"{v['seconds']:.0f}",
             f"{v['tiles_per_s']:.0f}"] for k, v in results.items()]
    print_table("sslkit pathology embed: peak RSS vs tiles (--workers 0, batch 64, CPU)",
                ["slide", "tile px", "tiles", "row groups", "peak RSS MB", "seconds", "tiles/s"], rows)


if __name__ == "__main__":
    main()
