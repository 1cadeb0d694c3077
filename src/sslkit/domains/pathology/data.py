"""Tile inputs for pretrain, embed and evaluate: resolve what the user pointed at into rows, and read tiles lazily.

INPUT may be
- slides (files, or folders holding .svs/.ndpi/.tif/...): tiled on the fly with the same grid and tissue mask as
  `sslkit pathology tile` (nothing is extracted to disk);
- a manifest .parquet written by `tile`;
- folders of tile images (PNG/JPEG/BMP, searched recursively, e.g. ROOT/<class>/*.png): each image is one tile
  (slide = the image's path, x = y = 0, level 0, read_px = its shorter side, mpp NaN).

`TileDataset` reads each tile in the DataLoader worker that asks for it, with one slide handle per slide per worker
process, opened on first use and reused (never shared across a fork); at most MAX_OPEN stay open.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from sslkit.core.errors import UserError
from sslkit.domains.pathology.slides import IMAGE_SUFFIXES, SLIDE_SUFFIXES, open_slide
from sslkit.domains.pathology.tiling import MANIFEST_COLUMNS, MANIFEST_FORMAT, plan_slide, read_geometry, tile_spec

REQUIRED = ("slide", "x", "y", "level", "read_px", "out_px", "mpp")


def _mpp_list(mpp: float | Sequence[float] | None) -> list[float]:
    if mpp is None:
        return []
    values = [float(mpp)] if isinstance(mpp, (int, float)) else [float(m) for m in mpp]
    for m in values:
        if not (math.isfinite(m) and m > 0):
            raise UserError(f"mpp {m}: tile resolutions must be positive µm per pixel, e.g. 0.5")
    return values


def read_manifest(path: Path):  # noqa: ANN201 - a pandas DataFrame
    """Rows of a manifest written by `tile` (or any Parquet with the required columns)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{path}: not a readable Parquet manifest ({' '.join(str(exc).split())[:120]}) — give the "
                        "manifest.parquet written by `sslkit pathology tile`") from None
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        fmt = (table.schema.metadata or {}).get(b"sslkit.format", b"").decode()
        hint = "an embeddings file, not a manifest — " if fmt.startswith("embeddings") else ""
        raise UserError(f"{path}: {hint}missing manifest column(s) {missing} (has {table.column_names}) — give the "
                        "manifest.parquet written by `sslkit pathology tile`")
    df = table.to_pandas()
    if "tissue" not in df:
        df["tissue"] = np.nan
    if "slide_mpp" not in df:
        df["slide_mpp"] = np.nan
    return df[list(MANIFEST_COLUMNS)]


def _image_rows(folder: Path, out_px: int) -> list[dict[str, Any]]:
    from PIL import Image

    files = sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                   and not f.name.startswith("."))
    rows = []
    for f in files:
        try:
            with Image.open(f) as img:
                w, h = img.size
        except Exception as exc:  # noqa: BLE001 - Pillow raises several types for unreadable images
            raise UserError(f"{f}: not a readable image ({type(exc).__name__}) — remove it or replace it") from None
        rows.append({"slide": str(f), "x": 0, "y": 0, "level": 0, "read_px": min(w, h), "out_px": out_px,
                     "mpp": float("nan"), "tissue": float("nan"), "slide_mpp": float("nan")})
    return rows


def resolve_inputs(inputs: Sequence[Path], *, tile_px: int = 224, mpp: float | Sequence[float] | None = None,
                   tile_um: float | None = None, min_tissue: float = 0.5, overlap: float = 0.0,
                   slide_mpp: float | None = None, quiet: bool = False):  # noqa: ANN201 - a pandas DataFrame
    """A DataFrame with MANIFEST_COLUMNS, one row per tile, from slides / manifests / folders of tile images.

    Slides are gridded at `mpp[0]` (tile side `tile_um`, default tile_px × mpp[0]); `slide_mpp` overrides the
    slides' own resolution (--slide-mpp). A slide with no tissue at `min_tissue` is warned about and left out;
    no tile at all is a UserError.
    """
    import pandas as pd

    from sslkit.core.console import info, warn

    mpps = _mpp_list(mpp)
    if tile_um is not None:       # the grid's tile side in µm; items may still be read at other mpps
        spec = tile_spec(tile_um=tile_um, tile_px=tile_px)
    else:
        spec = tile_spec(tile_px=tile_px, mpp=mpps[0] if mpps else None)
    if not inputs:
        raise UserError("no input given — pass slides, a manifest .parquet from `tile`, or folders of tile images")
    frames, slides, skipped = [], [], []
    for p in map(Path, inputs):
        if not p.exists():
            raise UserError(f"{p}: no such file or folder — check the path")
        if p.is_file() and p.suffix.lower() in (".parquet", ".pq"):
            frames.append(read_manifest(p))
        elif p.is_file():
            if p.suffix.lower() not in SLIDE_SUFFIXES:
                raise UserError(f"{p}: unsupported input {p.suffix or '(no suffix)'} — give slides, a manifest "
                                ".parquet, or folders of tile images")
            slides.append(p)
        else:
            found = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
            whole = [f for f in found if f.suffix.lower() in SLIDE_SUFFIXES and f.suffix.lower() not in IMAGE_SUFFIXES]
            images = _image_rows(p, spec.out_px)
            if not whole and not images:
                raise UserError(f"{p}: no slides or tile images in this folder — give slides (.svs .ndpi .tif ...), a "
                                "manifest .parquet, or folders of PNG/JPEG tiles")
            slides.extend(whole)
            if images:
                frames.append(pd.DataFrame(images, columns=list(MANIFEST_COLUMNS)))
    for p in slides:                                     # all readable and with a resolution before any gridding
        open_slide(p, slide_mpp).close()
    for p in slides:
        with open_slide(p, slide_mpp) as slide:
            plan = plan_slide(slide, str(p), spec, overlap, min_tissue)
        if plan.n_kept == 0:
            warn(f"{p}: skipped — no tile with tissue ≥ {min_tissue}")
            skipped.append(str(p))
            continue
        frames.append(pd.DataFrame(plan.rows(), columns=list(MANIFEST_COLUMNS)))
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(MANIFEST_COLUMNS))
    if len(rows) == 0:
        raise UserError(f"no tiles from {', '.join(map(str, inputs))}"
                        + (f" ({len(skipped)} slide(s) without tissue at {min_tissue})" if skipped else "")
                        + " — check the inputs or lower min_tissue")
    if not quiet:
        info(f"tiles: {len(rows)} from {rows['slide'].nunique()} slide(s)/image(s)"
             + (f"; {len(skipped)} slide(s) skipped without tissue" if skipped else ""))
    return rows


def at_resolution(rows: Any, out_px: int, mpp: float) -> Any:
    """Rows re-aimed at `out_px` tiles of `mpp` µm/px around the same centres (level and read size recomputed):
    a manifest tiled for another size or resolution, read the way an encoder was trained. Image rows stay."""
    from sslkit.core.console import warn

    mpps = rows["mpp"].to_numpy(dtype=np.float64)
    redo = np.isfinite(mpps) & ~(np.isclose(mpps, mpp) & (rows["out_px"].to_numpy() == out_px))
    if not redo.any():
        return rows
    rows = rows.copy()
    warn(f"{int(redo.sum())} tile(s) tiled at another size/resolution are read as {out_px} px at {mpp:g} µm/px "
         "around the same centres, as the encoder was trained")
    for path, idx in rows[redo].groupby("slide", sort=False).indices.items():
        where = np.flatnonzero(redo)[idx]
        sm = float(rows["slide_mpp"].iloc[where[0]])
        with open_slide(Path(path), sm if math.isfinite(sm) else None) as slide:
            old0 = rows["read_px"].to_numpy()[where] * np.asarray(slide.level_downsamples)[
                rows["level"].to_numpy()[where]]
            size0, level, read_px = read_geometry(slide, out_px, mpp)
            cols = {"x": np.round(rows["x"].to_numpy()[where] + old0 / 2 - size0 / 2).astype(np.int64),
                    "y": np.round(rows["y"].to_numpy()[where] + old0 / 2 - size0 / 2).astype(np.int64),
                    "level": level, "read_px": read_px, "out_px": out_px, "mpp": mpp, "slide_mpp": slide.mpp}
        for name, value in cols.items():
            rows.iloc[where, rows.columns.get_loc(name)] = value
    return rows


class TileDataset(torch.utils.data.Dataset):
    """torch Dataset of tiles: item i → transform(uint8 tensor (3, out_px, out_px)) (the tensor when no transform).

    rows: the DataFrame from resolve_inputs (or a list of row dicts). mpps: output µm/px values; with several,
    each item draws one (numpy's global RNG, which fit() seeds per item) and reads the same tile centre at that
    resolution. A region reaching past the slide edge is filled white.
    """

    MAX_OPEN = 8     # slide handles kept open per process (each holds up to TiffSlide.CACHE_BYTES of tiles)

    def __init__(self, rows: Any, out_px: int, transform: Callable | None = None,
                 mpps: Sequence[float] | None = None) -> None:
        import pandas as pd

        df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
        missing = [c for c in REQUIRED if c not in df]
        if missing:
            raise UserError(f"tile rows lack column(s) {missing} — build them with resolve_inputs")
        self.slides = df["slide"].astype(str).tolist()
        cols = {c: df[c].to_numpy() for c in ("x", "y", "level", "read_px")}
        self.x, self.y = cols["x"].astype(np.int64), cols["y"].astype(np.int64)
        self.level, self.read_px = cols["level"].astype(np.int64), cols["read_px"].astype(np.int64)
        self.mpp = df["mpp"].to_numpy(dtype=np.float64)
        self.slide_mpp = (df["slide_mpp"] if "slide_mpp" in df else pd.Series(np.nan, index=df.index)).to_numpy(
            dtype=np.float64)
        self.out_px = int(out_px)
        self.transform = transform
        self.mpps = _mpp_list(mpps)
        self._handles: dict[str, Any] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.slides)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}         # open files do not travel to spawned workers; each opens its own
        return state

    def _slide(self, i: int) -> Any:
        if os.getpid() != self._pid:   # a forked worker: the parent's handles share file offsets, open new ones
            self._handles, self._pid = {}, os.getpid()
        path = self.slides[i]
        slide = self._handles.pop(path, None)
        if slide is None:
            sm = self.slide_mpp[i]
            slide = open_slide(Path(path), None if not math.isfinite(sm) else float(sm),
                               require_mpp=bool(math.isfinite(self.mpp[i])))   # NaN: `tile --native` rows
            while len(self._handles) >= self.MAX_OPEN:     # close the least recently used
                self._handles.pop(next(iter(self._handles))).close()
        self._handles[path] = slide                        # (re)inserted last: most recently used
        return slide

    def read(self, i: int) -> np.ndarray:
        """RGB uint8 (out_px, out_px, 3) of row i."""
        from sslkit.domains.pathology.tiling import read_tile

        if not math.isfinite(self.mpp[i]) and self.level[i] == 0 and self.x[i] == 0 and self.y[i] == 0 \
                and Path(self.slides[i]).suffix.lower() in IMAGE_SUFFIXES:
            return self._read_image(self.slides[i])
        slide = self._slide(i)
        x, y, level, read_px = int(self.x[i]), int(self.y[i]), int(self.level[i]), int(self.read_px[i])
        if len(self.mpps) > 1 or (self.mpps and not np.isclose(self.mpps[0], self.mpp[i])):
            m = self.mpps[np.random.randint(len(self.mpps))] if len(self.mpps) > 1 else self.mpps[0]
            size0 = read_px * slide.level_downsamples[level]
            cx, cy = x + size0 / 2, y + size0 / 2
            new0, level, read_px = read_geometry(slide, self.out_px, m)
            x, y = int(round(cx - new0 / 2)), int(round(cy - new0 / 2))
        return read_tile(slide, x, y, level, read_px, self.out_px)

    def _read_image(self, path: str) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                w, h = img.size
                s = min(w, h)
                left, top = (w - s) // 2, (h - s) // 2
                img = img.crop((left, top, left + s, top + s))
                if s != self.out_px:
                    img = img.resize((self.out_px, self.out_px), Image.Resampling.BILINEAR)
                return np.array(img)
        except OSError as exc:
            raise UserError(f"{path}: cannot read this tile image ({exc}) — remove or replace it") from None

    def __getitem__(self, i: int) -> Any:
        tile = torch.from_numpy(np.ascontiguousarray(self.read(int(i)).transpose(2, 0, 1)))  # numpy: torch uint8 permute copies are slow
        return tile if self.transform is None else self.transform(tile)

    def close(self) -> None:
        for slide in self._handles.values():
            slide.close()
        self._handles = {}


def collate_tiles(batch: list) -> Any:
    """Stack uint8 tile tensors (3, H, W) into (B, 3, H, W) with numpy; anything else goes to torch's default.

    torch.stack on uint8 runs through the intra-op thread pool, which on a busy 2-core machine took ~200 ms for 32
    tiles (numpy: ~2 ms); in the main process (num_workers=0) that dominated reading."""
    if batch and all(isinstance(b, torch.Tensor) and b.dtype == torch.uint8 for b in batch):
        return torch.from_numpy(np.stack([b.numpy() for b in batch]))
    return torch.utils.data.default_collate(batch)
