"""Generated slides for the pathology tests: a small pyramidal TIFF with a known tissue rectangle, and tile sets."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import cli_in_process

TISSUE_BOX = (0.25, 0.20, 0.75, 0.60)   # x0, y0, x1, y1 as fractions of the slide: 20% of its area


def run_cli(*args: object):  # noqa: ANN201
    """`sslkit pathology ARGS` in this process."""
    return cli_in_process("pathology", *args)


def he_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """H&E-like RGB uint8: pink eosin with purple nuclei-like speckle."""
    from scipy.ndimage import gaussian_filter

    blend = gaussian_filter(rng.random((h, w)).astype(np.float32), 2)
    blend = (blend - blend.min()) / (np.ptp(blend) + 1e-6)
    eosin, haem = np.array([225, 140, 185], np.float32), np.array([110, 70, 160], np.float32)
    img = eosin * (1 - blend[..., None]) + haem * blend[..., None] + rng.normal(0, 5, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def synthetic_slide(width: int, height: int, seed: int = 0, pen: bool = True) -> np.ndarray:
    """White glass with light noise, tissue in TISSUE_BOX, and (pen=True) a blue ink stroke outside the tissue."""
    rng = np.random.default_rng(seed)
    img = np.clip(242 + rng.normal(0, 3, (height, width, 3)), 0, 255).astype(np.uint8)
    x0, y0, x1, y1 = (int(TISSUE_BOX[0] * width), int(TISSUE_BOX[1] * height), int(TISSUE_BOX[2] * width),
                      int(TISSUE_BOX[3] * height))
    img[y0:y1, x0:x1] = he_texture(rng, y1 - y0, x1 - x0)
    if pen:
        py = int(0.8 * height)
        img[py:py + max(4, height // 60), int(0.1 * width):int(0.9 * width)] = (30, 60, 170)
    return img


def write_pyramid(path: Path, img: np.ndarray, mpp: float | None, downsamples=(1, 2, 4, 8), tile: int = 128,
                  ome: bool = False) -> Path:
    """A tiled JPEG pyramid with tifffile: level 0 then reduced pages (separate top-level pages, as OpenSlide
    reads them), resolution tags from `mpp` (None: no resolution recorded)."""
    import tifffile
    from PIL import Image

    with tifffile.TiffWriter(path, ome=ome) as tw:
        for i, d in enumerate(downsamples):
            level = img if d == 1 else np.asarray(Image.fromarray(img).resize(
                (img.shape[1] // d, img.shape[0] // d), Image.Resampling.BILINEAR))
            if ome:      # OME: the resolution is PhysicalSizeX in the XML; levels as SubIFDs would need subifds=
                extra = {"metadata": {"PhysicalSizeX": mpp, "PhysicalSizeY": mpp}} if i == 0 and mpp else {}
            else:
                extra = {} if mpp is None else {"resolution": (1e4 / (mpp * d), 1e4 / (mpp * d)),
                                                "resolutionunit": "CENTIMETER"}
            tw.write(level, tile=(tile, tile), compression="jpeg", photometric="rgb",
                     subfiletype=0 if i == 0 else 1, **extra)
    return path


@pytest.fixture(scope="session")
def slide_tif(tmp_path_factory) -> Path:
    """2048×1536 px at 0.25 µm/px (512×384 µm), levels ÷1 ÷2 ÷4 ÷8, tissue in TISSUE_BOX, a blue pen line."""
    folder = tmp_path_factory.mktemp("slides")
    return write_pyramid(folder / "synthetic.tif", synthetic_slide(2048, 1536), mpp=0.25)


@pytest.fixture(scope="session")
def slide_no_mpp(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("nompp")
    return write_pyramid(folder / "nompp.tif", synthetic_slide(512, 384, seed=1, pen=False), mpp=None,
                         downsamples=(1, 2))


@pytest.fixture(scope="session")
def tile_folder(tmp_path_factory) -> Path:
    """folder/<class>/*.png: 12 generated 64-px tiles per class (two textures)."""
    from sslkit.domains.pathology.samples import write_tile_set

    folder = tmp_path_factory.mktemp("tiles")
    write_tile_set(folder, per_class=12, px=64)
    return folder
