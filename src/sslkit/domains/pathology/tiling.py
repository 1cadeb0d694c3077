"""A tile grid in microns over each slide's tissue, the manifest that records it, and the thumbnail that shows it.

A tile of `out_px` pixels at `mpp` µm/px covers `out_px * mpp` µm. On a slide scanned at `slide.mpp`, that is
`size0 = out_px * mpp / slide.mpp` level-0 pixels; it is read at the finest pyramid level whose downsample does
not exceed `mpp / slide.mpp` (`read_px = size0 / downsample` pixels there) and resized to `out_px` — so a
0.5 µm/px tile on a 0.25 µm/px slide with a 2× level is read from that level, not from level 0.

Manifest (Parquet, one row per kept tile): slide (path as given), x, y (level-0 top-left), level, read_px, out_px,
mpp (output µm/px), tissue (0..1), slide_mpp (the level-0 µm/px used, so a reader needs no --slide-mpp again).
"""
from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sslkit.core.errors import UserError
from sslkit.domains.pathology.slides import READS, Slide, is_slide_path
from sslkit.domains.pathology.tissue import TissueMask, tile_fractions, tissue_mask

MANIFEST_FORMAT = "pathology-tiles/1"
MANIFEST_COLUMNS = ("slide", "x", "y", "level", "read_px", "out_px", "mpp", "tissue", "slide_mpp")
MASK_UM = 4.0             # µm per mask pixel: stains read as tissue, not as single nuclei, and the mask is cheap
MASK_PX = (256, 2048)     # bounds on the mask's longer side (2048 without a resolution)
DISPLAY_PX = 1024         # longer side of the thumbnail PNG
DEFAULT_TILE_PX = 224
DEFAULT_MPP = 0.5


@dataclass(frozen=True)
class TileSpec:
    """Output tiles: `out_px` square pixels at `mpp` µm/px (NaN: the slide's own resolution, level 0)."""

    out_px: int
    mpp: float

    @property
    def tile_um(self) -> float:
        return self.out_px * self.mpp


def tile_spec(tile_um: float | None = None, tile_px: int | None = None, mpp: float | None = None,
              native: bool = False) -> TileSpec:
    """From --tile-um / --tile-px / --mpp: `--tile-um 112` → 224 px at 0.5 µm/px (tile_px default 224);
    `--tile-px 224 --mpp 0.5` → the same; `native` → tile_px pixels at each slide's own resolution."""
    out_px = DEFAULT_TILE_PX if tile_px is None else int(tile_px)
    if out_px < 8:
        raise UserError(f"--tile-px {out_px}: tiles must be at least 8 pixels — e.g. --tile-px 224")
    for name, value in (("--tile-um", tile_um), ("--mpp", mpp)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UserError(f"{name} {value}: give a positive number (µm for --tile-um, µm per pixel for --mpp)")
    if native:
        if tile_um is not None or mpp is not None:
            raise UserError("--native reads tiles at each slide's own resolution — drop --tile-um/--mpp, or drop "
                            "--native")
        return TileSpec(out_px, float("nan"))
    if tile_um is not None and mpp is not None:
        if abs(tile_um - out_px * mpp) > 1e-6 * tile_um:
            raise UserError(f"--tile-um {tile_um} disagrees with --tile-px {out_px} × --mpp {mpp} = "
                            f"{out_px * mpp:g} µm — give two of the three")
        return TileSpec(out_px, float(mpp))
    if tile_um is not None:
        return TileSpec(out_px, float(tile_um) / out_px)
    return TileSpec(out_px, float(DEFAULT_MPP if mpp is None else mpp))


@dataclass
class TilePlan:
    """Where one slide's tiles are: candidate grid, tissue fractions, and the read geometry."""

    slide: str                      # the path as given
    slide_mpp: float
    level: int
    read_px: int
    out_px: int
    mpp: float
    size0: float                    # tile side in level-0 pixels
    xs: np.ndarray                  # level-0 top-left of every candidate
    ys: np.ndarray
    tissue: np.ndarray              # fraction per candidate
    keep: np.ndarray                # bool per candidate
    mask: TissueMask | None = None
    thumb: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_kept(self) -> int:
        return int(self.keep.sum())

    def rows(self) -> dict[str, list]:
        """Manifest columns (MANIFEST_COLUMNS) for the kept tiles."""
        k = self.keep
        n = int(k.sum())
        return {"slide": [self.slide] * n, "x": self.xs[k].astype(np.int64).tolist(),
                "y": self.ys[k].astype(np.int64).tolist(), "level": [self.level] * n, "read_px": [self.read_px] * n,
                "out_px": [self.out_px] * n, "mpp": [self.mpp] * n, "tissue": self.tissue[k].round(4).tolist(),
                "slide_mpp": [self.slide_mpp] * n}


def read_geometry(slide: Slide, out_px: int, mpp: float) -> tuple[float, int, int]:
    """(size0 level-0 px, level, read_px at that level) of an `out_px` tile at `mpp` µm/px (NaN: native)."""
    factor = 1.0 if not math.isfinite(mpp) else mpp / slide.mpp
    size0 = out_px * factor
    level = slide.best_level(factor)
    read_px = max(1, int(round(size0 / slide.level_downsamples[level])))
    return size0, level, read_px


def plan_slide(slide: Slide, label: str, spec: TileSpec, overlap: float = 0.0, min_tissue: float = 0.5,
               keep_thumb: bool = False) -> TilePlan:
    """The tile grid over `slide` (full tiles only), each tile's tissue fraction, and which reach `min_tissue`."""
    if not 0 <= overlap < 1:
        raise UserError(f"--overlap {overlap}: give the share of a tile that neighbours overlap, in [0, 1)")
    if not 0 <= min_tissue <= 1:
        raise UserError(f"--min-tissue {min_tissue}: give a tissue fraction in [0, 1]")
    size0, level, read_px = read_geometry(slide, spec.out_px, spec.mpp)
    W, H = slide.dimensions
    stride = size0 * (1 - overlap)
    xs0 = np.floor(np.arange(0, W - size0 + 1e-6, stride)).astype(np.int64) if W >= size0 else np.zeros(0, np.int64)
    ys0 = np.floor(np.arange(0, H - size0 + 1e-6, stride)).astype(np.int64) if H >= size0 else np.zeros(0, np.int64)
    gx, gy = np.meshgrid(xs0, ys0)
    xs, ys = gx.ravel(), gy.ravel()
    mask = tissue_mask(slide.thumbnail(mask_px(slide)), slide.dimensions,
                       slide.mpp if math.isfinite(slide.mpp) else None)
    tissue = tile_fractions(mask, xs, ys, size0) if len(xs) else np.zeros(0, np.float32)
    keep = tissue >= min_tissue if min_tissue > 0 else np.ones(len(xs), bool)
    out_mpp = slide.mpp if not math.isfinite(spec.mpp) else spec.mpp
    return TilePlan(slide=label, slide_mpp=float(slide.mpp), level=level, read_px=read_px, out_px=spec.out_px,
                    mpp=float(out_mpp), size0=size0, xs=xs, ys=ys, tissue=tissue, keep=keep, mask=mask,
                    thumb=slide.thumbnail(DISPLAY_PX) if keep_thumb else None)


def mask_px(slide: Slide) -> int:
    """Longer side of the thumbnail the tissue mask is computed on: MASK_UM µm/px, within MASK_PX."""
    if not math.isfinite(slide.mpp):
        return MASK_PX[1]
    return int(np.clip(max(slide.dimensions) * slide.mpp / MASK_UM, *MASK_PX))


def read_tile(slide: Slide, x: int, y: int, level: int, read_px: int, out_px: int) -> np.ndarray:
    """RGB uint8 (out_px, out_px, 3): `read_px` pixels at `level` from level-0 (x, y), resized when they differ."""
    region = slide.read_region((x, y), level, (read_px, read_px))
    if read_px == out_px:
        return region
    from PIL import Image

    return np.array(Image.fromarray(region).resize((out_px, out_px), Image.Resampling.BILINEAR))  # writable


def draw_thumbnail(plan: TilePlan, path: Path) -> None:
    """PNG of the slide thumbnail: the tissue mask's outline in green, outside the mask lightly greyed, kept tiles
    outlined in blue."""
    from PIL import Image, ImageDraw
    from scipy.ndimage import binary_dilation

    assert plan.thumb is not None and plan.mask is not None
    img = plan.thumb.astype(np.float32)
    h, w = img.shape[:2]
    m = np.asarray(Image.fromarray(plan.mask.mask).resize((w, h), Image.Resampling.NEAREST))
    img[~m] = 0.6 * img[~m] + 0.4 * 200.0
    edge = binary_dilation(m, iterations=2) & ~m
    img[edge] = (20, 170, 40)
    out = Image.fromarray(img.astype(np.uint8))
    draw = ImageDraw.Draw(out)
    W, H = (plan.mask.scale[0] * plan.mask.mask.shape[1], plan.mask.scale[1] * plan.mask.mask.shape[0])
    sx, sy = W / w, H / h                     # level-0 pixels per thumbnail pixel
    for x, y in zip(plan.xs[plan.keep], plan.ys[plan.keep]):
        draw.rectangle([x / sx, y / sy, (x + plan.size0) / sx, (y + plan.size0) / sy], outline=(30, 60, 220))
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path)


def manifest_table(columns: dict[str, list], spec: TileSpec, extra_meta: dict | None = None):  # noqa: ANN201
    """A pyarrow Table with MANIFEST_COLUMNS, typed, and the tile spec in its metadata."""
    import json

    import pyarrow as pa

    types = {"slide": pa.string(), "x": pa.int64(), "y": pa.int64(), "level": pa.int32(), "read_px": pa.int32(),
             "out_px": pa.int32(), "mpp": pa.float64(), "tissue": pa.float32(), "slide_mpp": pa.float64()}
    table = pa.table({c: pa.array(columns[c], type=types[c]) for c in MANIFEST_COLUMNS})
    meta = {"out_px": spec.out_px, "mpp": spec.mpp if math.isfinite(spec.mpp) else None, **(extra_meta or {})}
    return table.replace_schema_metadata({"sslkit.format": MANIFEST_FORMAT, "sslkit.tiles": json.dumps(meta)})


def unique_stems(paths: list[Path]) -> list[str]:
    """A file-name stem per slide, suffixed -2, -3... where two slides share one."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        stem = p.name.split(".")[0] or p.stem
        seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return out


def replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished folder `tmp` to `out`, replacing an old `out` only once the new one is complete."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def expand_slides(paths: list[Path]) -> list[Path]:
    """Slide files from files and folders (folders searched recursively for slide suffixes), in a stable order.

    A file given by name must have a slide suffix (UserError listing what is read); a folder must hold one.
    """
    out: list[Path] = []
    if not paths:
        raise UserError("no slides given — pass slide files or folders that hold them")
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and is_slide_path(f) and not f.name.startswith("."))
            if not found:
                raise UserError(f"{p}: no slide files in this folder — sslkit reads {READS}")
            out.extend(found)
        elif not p.exists():
            raise UserError(f"{p}: no such file or folder — check the path")
        elif not is_slide_path(p):
            raise UserError(f"{p}: unsupported format {p.suffix or '(no suffix)'} — sslkit reads {READS}")
        else:
            out.append(p)
    return out


@dataclass
class TileSummary:
    manifest: Path
    slides: int
    tiles: int
    skipped: list[str]


def tile_slides(paths: list[Path], out: Path, spec: TileSpec, *, overlap: float = 0.0, min_tissue: float = 0.5,
                slide_mpp: float | None = None, save_tiles: bool = False, overwrite: bool = False) -> TileSummary:
    """`sslkit pathology tile`: OUT/manifest.parquet, OUT/thumbnails/<slide>.png and, with save_tiles,
    OUT/tiles/<slide>/<slide>_x<X>_y<Y>.png. Everything is written in a hidden folder beside OUT and moved into
    place at the end, so a failure leaves no half-tiled OUT (and an old OUT stays until the new one is complete)."""
    from sslkit.core.console import info, print_table, warn
    from sslkit.core.files import check_dir_out, temp_dir_beside
    from sslkit.domains.pathology.slides import open_slide

    slides = expand_slides(paths)
    check_dir_out(out, overwrite)
    native = not math.isfinite(spec.mpp)
    for p in slides:                                   # every slide readable, with a resolution, before any work
        open_slide(p, slide_mpp, require_mpp=not native).close()
    stems = unique_stems(slides)
    tmp = temp_dir_beside(out)
    columns: dict[str, list] = {c: [] for c in MANIFEST_COLUMNS}
    rows, skipped = [], []
    try:
        for path, stem in zip(slides, stems):
            with open_slide(path, slide_mpp, require_mpp=not native) as slide:
                plan = plan_slide(slide, str(path), spec, overlap, min_tissue, keep_thumb=True)
                draw_thumbnail(plan, tmp / "thumbnails" / f"{stem}.png")
                if plan.n_kept == 0:
                    why = "smaller than one tile" if len(plan.xs) == 0 else f"no tile reaches --min-tissue {min_tissue}"
                    warn(f"{path}: skipped — {why} (tissue {plan.mask.fraction:.0%} of the thumbnail)")
                    skipped.append(str(path))
                    continue
                for k, v in plan.rows().items():
                    columns[k].extend(v)
                if save_tiles:
                    _save_tiles(slide, plan, tmp / "tiles" / stem, stem)
                rows.append([stem, slide.reader, f"{slide.mpp:.3f}", f"{plan.level} (÷{slide.level_downsamples[plan.level]:g})",
                             f"{plan.read_px}→{plan.out_px}", f"{plan.n_kept}/{len(plan.xs)}",
                             f"{plan.mask.fraction:.0%}"])
        if not columns["slide"]:
            raise UserError(f"no tiles: none of the {len(slides)} slide(s) has a tile with tissue ≥ --min-tissue "
                            f"{min_tissue} — lower --min-tissue or check the thumbnails")
        import pyarrow.parquet as pq

        meta = {"overlap": overlap, "min_tissue": min_tissue, "skipped": skipped}
        pq.write_table(manifest_table(columns, spec, meta), tmp / "manifest.parquet")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print_table("tiles", ["slide", "reader", "µm/px", "level", "read→out px", "kept/grid", "tissue"], rows)
    info(f"{len(columns['slide'])} tiles of {spec.out_px} px at "
         f"{'native resolution' if native else f'{spec.mpp:g} µm/px ({spec.tile_um:g} µm)'} from "
         f"{len(slides) - len(skipped)} slide(s); {len(skipped)} skipped without tissue; thumbnails in {out / 'thumbnails'}")
    return TileSummary(out / "manifest.parquet", len(slides) - len(skipped), len(columns["slide"]), skipped)


def _save_tiles(slide: Slide, plan: TilePlan, folder: Path, stem: str) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for x, y in zip(plan.xs[plan.keep], plan.ys[plan.keep]):
        tile = read_tile(slide, int(x), int(y), plan.level, plan.read_px, plan.out_px)
        Image.fromarray(tile).save(folder / f"{stem}_x{x}_y{y}.png", compress_level=1)
