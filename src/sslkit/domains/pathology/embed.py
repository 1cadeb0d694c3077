"""`pathology embed`: tile embeddings streamed to Parquet, and per-slide mean-pooled vectors.

Memory stays flat in the number of tiles: tiles are read by DataLoader workers a batch at a time, each batch's
vectors go straight into a Parquet row group of a temp file beside --out, and only a running sum per slide is
kept (slides × D). The file is renamed into place when the last batch is written, so a failure leaves nothing.

tiles.parquet: id ("<slide>@<x>,<y>", or the image path for tile images), the manifest columns (slide, x, y,
level, read_px, out_px, mpp, tissue, slide_mpp) and `embedding` (fixed_size_list<float32>[D]) — readable with
`sslkit.core.embeddings.read_embeddings`. slides.parquet: slide, tiles (count), embedding (mean of its tiles).
The readout (readout.py: token, dihedral TTA, Reinhard stain normalisation) is recorded in both files' metadata.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sslkit.core.errors import UserError
from sslkit.domains.pathology.readout import Readout


@dataclass
class EmbedResult:
    tiles: int
    slides: int
    dim: int
    seconds: float


def tile_geometry(encoder: Any, tile_px: int | None, mpp: float | None, run_dir: Path) -> tuple[int, float | None,
                                                                                             float | None]:
    """(tile_px, mpp, tile_um) for embedding: the options when given, else what the encoder was trained on
    (its export's extra, else the run's recipe `data` section)."""
    extra = dict(getattr(encoder, "sslkit_config", {}).get("extra") or {})
    if not extra:
        recipe = run_dir / "recipe.yaml"
        if recipe.is_file():
            import yaml

            data = (yaml.safe_load(recipe.read_text()) or {}).get("data") or {}
            extra = {"tile_px": data.get("tile_px"), "mpp": data.get("mpp"), "tile_um": data.get("tile_um")}
    run_mpp = extra.get("mpp")
    if isinstance(run_mpp, (list, tuple)):
        run_mpp = run_mpp[0] if run_mpp else None
    px = tile_px or extra.get("tile_px") or 224
    if mpp is None and tile_px is None and extra.get("tile_um") and not run_mpp:
        return int(px), None, float(extra["tile_um"])
    return int(px), (mpp if mpp is not None else run_mpp), None


def _arrow_batch(rows: Any, vectors: np.ndarray):  # noqa: ANN202 - a pyarrow RecordBatch
    import pyarrow as pa

    from sslkit.domains.pathology.slides import IMAGE_SUFFIXES

    slides = rows["slide"].astype(str).tolist()
    xs, ys = rows["x"].to_numpy(np.int64), rows["y"].to_numpy(np.int64)
    ids = [s if (x == 0 and y == 0 and Path(s).suffix.lower() in IMAGE_SUFFIXES) else f"{s}@{x},{y}"
           for s, x, y in zip(slides, xs, ys)]
    cols = {"id": pa.array(ids, pa.string()), "slide": pa.array(slides, pa.string()), "x": pa.array(xs, pa.int64()),
            "y": pa.array(ys, pa.int64()), "level": pa.array(rows["level"].to_numpy(np.int32)),
            "read_px": pa.array(rows["read_px"].to_numpy(np.int32)),
            "out_px": pa.array(rows["out_px"].to_numpy(np.int32)),
            "mpp": pa.array(rows["mpp"].to_numpy(np.float64)), "tissue": pa.array(rows["tissue"].to_numpy(np.float32)),
            "slide_mpp": pa.array(rows["slide_mpp"].to_numpy(np.float64)),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])}
    return pa.RecordBatch.from_pydict(cols)


def embed_tiles(run: Path, inputs: Sequence[Path], out: Path, *, slides_out: Path | None = None,
                tile_px: int | None = None, mpp: float | None = None, min_tissue: float = 0.5,
                slide_mpp: float | None = None, batch_size: int = 64, num_workers: int = 2, device: str = "auto",
                overwrite: bool = False, readout: Readout | None = None) -> EmbedResult:
    """Embed every tile of `inputs` with the run's encoder, read out as `readout` (default: the encoder's own
    pooling, one view, raw colours — readout.py); see the module docstring for the files."""
    import time

    import pyarrow.parquet as pq
    import torch
    from torch.utils.data import DataLoader

    from sslkit.core.console import info
    from sslkit.core.distributed import select_device
    from sslkit.core.embeddings import FORMAT, check_embeddings_out, write_embeddings
    from sslkit.core.export import load_encoder
    from sslkit.core.files import temp_beside
    from sslkit.domains.pathology.data import TileDataset, at_resolution, collate_tiles, resolve_inputs
    from sslkit.domains.pathology.model import tile_batches
    from sslkit.domains.pathology.readout import TileReader, check_encoder

    out = check_embeddings_out(out, overwrite)
    if slides_out is not None:
        slides_out = check_embeddings_out(slides_out, overwrite)
        if slides_out.absolute() == out.absolute():
            raise UserError("--slides-out is the same file as --out — give the slide vectors their own file")
    if batch_size < 1 or num_workers < 0:
        raise UserError("--batch-size must be ≥ 1 and --workers ≥ 0")
    readout = readout or Readout()
    encoder = load_encoder(run)
    check_encoder(encoder, readout)
    px, tile_mpp, tile_um = tile_geometry(encoder, tile_px, mpp, Path(run))
    patch = getattr(encoder, "patch_size", None)
    if patch and px < patch:
        raise UserError(f"tile size {px} px is smaller than the encoder's {patch}-px patch — use --tile-px ≥ {patch}")
    rows = resolve_inputs(list(inputs), tile_px=px, mpp=tile_mpp, tile_um=tile_um, min_tissue=min_tissue,
                          slide_mpp=slide_mpp)
    if tile_mpp is not None:
        rows = at_resolution(rows, px, float(tile_mpp))
    dev = select_device(device)
    encoder = encoder.to(dev)
    reader = TileReader(readout)
    if readout.stain_norm != "none":
        first = TileDataset(rows, px)
        try:
            reader.prepare(tile_batches(first, batch_size, num_workers), rows["slide"])
        finally:
            first.close()
    dataset = TileDataset(rows, px)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_tiles,
                        pin_memory=dev.type == "cuda", persistent_workers=False,
                        prefetch_factor=2 if num_workers else None)
    meta = {"run": str(run), "tile_px": px, "mpp": tile_mpp, "tile_um": tile_um, "tiles": len(rows),
            "readout": readout.record(getattr(encoder, "pool", None))}
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    fd, tmp = temp_beside(out)
    os.close(fd)
    writer = None
    start, done = time.perf_counter(), 0
    try:
        for batch in loader:
            with torch.inference_mode():
                vectors = reader(encoder, batch, dev, start=done).numpy()     # as evaluate and mil embed tiles
            if not np.isfinite(vectors).all():
                raise UserError(f"the encoder produced NaN/inf for tiles {done}..{done + len(vectors) - 1} — "
                                "nothing was written; check the run")
            part = rows.iloc[done:done + len(vectors)]
            record = _arrow_batch(part, vectors)
            if writer is None:
                schema = record.schema.with_metadata({
                    "sslkit.format": FORMAT, "sslkit.dim": str(vectors.shape[1]), "sslkit.id_column": "id",
                    "sslkit.metadata": json.dumps(meta, sort_keys=True)})
                writer = pq.ParquetWriter(tmp, schema)
            writer.write_batch(record.replace_schema_metadata(writer.schema.metadata), row_group_size=len(vectors))
            for slide, idx in part.groupby("slide", sort=False).indices.items():
                acc = vectors[idx].astype(np.float64).sum(axis=0)
                sums[slide] = sums.get(slide, 0.0) + acc
                counts[slide] = counts.get(slide, 0) + len(idx)
            done += len(vectors)
        if writer is None:
            raise UserError("no tiles to embed — check the inputs")
        writer.close()
        writer = None
        if slides_out is not None:
            names = list(sums)
            means = np.stack([sums[s] / counts[s] for s in names])
            write_embeddings(slides_out, names, means, id_name="slide", extra={"tiles": [counts[s] for s in names]},
                             overwrite=overwrite, metadata=meta)
        os.replace(tmp, out)
    except BaseException:
        if writer is not None:
            writer.close()
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        dataset.close()
    seconds = time.perf_counter() - start
    info(f"embedded {done} tiles from {len(sums)} slide(s)/image(s) in {seconds:.1f}s "
         f"({done / max(seconds, 1e-9):.0f} tiles/s) at {px} px"
         + (f", {tile_mpp:g} µm/px" if tile_mpp and math.isfinite(tile_mpp) else ""))
    return EmbedResult(done, len(sums), int(vectors.shape[1]), seconds)
