"""Whole-slide readers behind one small interface: OpenSlide, tifffile pyramids, and plain images.

`open_slide(path, mpp)` picks the reader from the file:
- OpenSlide (`openslide-python` + `openslide-bin`) for the vendor formats (svs, ndpi, mrxs, scn, bif, vms, ...)
  and for TIFFs that OpenSlide recognises as a vendor format;
- tifffile for generic and OME pyramidal TIFF: the pyramid is the series' levels (reduced pages or SubIFDs), and
  a region read decodes only the tiles (or strips) it touches, through a small cache of decoded tiles;
- Pillow for PNG/JPEG/BMP, as single-level slides held in memory.

Every reader returns RGB uint8 (h, w, 3), with white where the slide has no data. Coordinates follow OpenSlide:
`xy` is the top-left in level-0 pixels, `size` is (w, h) at the requested level.
"""
from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from sslkit.core.errors import UserError

OPENSLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide")
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf2", ".tf8")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
SLIDE_SUFFIXES = OPENSLIDE_SUFFIXES + TIFF_SUFFIXES + IMAGE_SUFFIXES
READS = ("OpenSlide formats (.svs .ndpi .mrxs .scn .bif .vms .vmu .svslide and vendor TIFFs), generic and OME "
         "pyramidal TIFF (.tif .tiff), and PNG/JPEG/BMP images as single-level slides")
SLIDE_MPP_FLAG = "--slide-mpp"   # the CLI option that overrides a slide's resolution (--mpp is the tiles' resolution)
MPP_RANGE = (0.01, 100.0)   # µm/px a microscope image can have; 72-dpi style resolutions fall outside and are ignored


def is_slide_path(path: Path) -> bool:
    """Whether the file name has a suffix one of the readers handles."""
    return path.suffix.lower() in SLIDE_SUFFIXES


def _plausible(mpp: float | None) -> float | None:
    if mpp is None or not math.isfinite(mpp) or not MPP_RANGE[0] <= mpp <= MPP_RANGE[1]:
        return None
    return float(mpp)


def _mpp_from_resolution(res: float | None, unit: int | str | None) -> float | None:
    """µm/px from a TIFF/PNG resolution (pixels per unit); unit 2/'inch' or 3/'centimeter'; None when unitless."""
    if not res:
        return None
    unit = str(unit).lower()
    per_um = {"2": 25400.0, "inch": 25400.0, "3": 10000.0, "centimeter": 10000.0, "4": 1000.0, "5": 1.0}
    for key, um in per_um.items():
        if unit == key or unit.endswith("." + key):
            return _plausible(um / float(res))
    return None


class Slide:
    """A readable slide. Subclasses fill `dimensions`, `level_dims`, `level_downsamples` and `_read`."""

    path: Path
    dimensions: tuple[int, int]          # (W, H) at level 0
    level_dims: list[tuple[int, int]]    # (W, H) per level
    level_downsamples: list[float]
    mpp: float                           # µm/px at level 0
    reader: str

    @property
    def level_count(self) -> int:
        return len(self.level_dims)

    def read_region(self, xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 (h, w, 3) of `size`=(w, h) pixels at `level`, top-left `xy` in level-0 pixels."""
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise ValueError(f"region size must be positive, got {size}")
        try:
            return self._read((int(xy[0]), int(xy[1])), int(level), (w, h))
        except UserError:
            raise
        except Exception as exc:  # a decoder or I/O error deep in a library: the slide is damaged
            raise UserError(f"{self.path}: reading a region at level {level} failed ({type(exc).__name__}: "
                            f"{exc}) — the file may be truncated or corrupt") from None

    def _read(self, xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        raise NotImplementedError

    def best_level(self, downsample: float) -> int:
        """The finest level whose downsample does not exceed `downsample` (level 0 when none is coarser)."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * (1 + 1e-6) and d >= self.level_downsamples[best]:
                best = i
        return best

    def thumbnail(self, max_px: int) -> np.ndarray:
        """RGB uint8 of the whole slide with its longer side at most `max_px`, from the coarsest level that serves,
        or from the thumbnail the scanner stored (SVS) when the levels would mean decoding a much larger image."""
        from PIL import Image

        scale = max(max(self.dimensions) / max_px, 1.0)
        tw = max(1, round(self.dimensions[0] / scale))
        th = max(1, round(self.dimensions[1] / scale))
        level = self.best_level(scale)
        lw, lh = self.level_dims[level]
        region = None
        if max(lw, lh) > 2 * max_px:
            stored = self._stored_thumbnail()
            if stored is not None and max(stored.shape[:2]) >= 0.75 * max(tw, th) and \
                    abs(stored.shape[1] / stored.shape[0] - self.dimensions[0] / self.dimensions[1]) < 0.01:
                region = stored
        if region is None and lw * lh > self.BAND_PX:     # no small level (an unpyramided scan): shrink band by band
            return self._banded_thumbnail(level, tw, th)
        if region is None:
            region = self.read_region((0, 0), level, (lw, lh))
        if region.shape[:2] == (th, tw):
            return region
        if max(region.shape[:2]) < max(tw, th):          # a stored thumbnail a little smaller: keep its size
            return region
        return np.asarray(Image.fromarray(region).resize((tw, th), Image.Resampling.BILINEAR))

    BAND_PX = 64_000_000    # a level larger than this is read for a thumbnail in bands of rows

    def _banded_thumbnail(self, level: int, tw: int, th: int) -> np.ndarray:
        """The whole `level` shrunk to (th, tw, 3), read in bands so memory stays at one band."""
        from PIL import Image

        lw, lh = self.level_dims[level]
        ds = self.level_downsamples[level]
        band = max(1, self.BAND_PX // (4 * lw))
        out = np.empty((th, tw, 3), np.uint8)
        for y0 in range(0, lh, band):
            y1 = min(lh, y0 + band)
            o0, o1 = round(y0 * th / lh), round(y1 * th / lh)
            if o1 > o0:
                part = self.read_region((0, int(y0 * ds)), level, (lw, y1 - y0))
                out[o0:o1] = np.asarray(Image.fromarray(part).resize((tw, o1 - o0), Image.Resampling.BILINEAR))
        return out

    def _stored_thumbnail(self) -> np.ndarray | None:
        """RGB uint8 of a thumbnail image stored in the file, if any."""
        return None

    def close(self) -> None:
        pass

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.path)!r}, {self.dimensions[0]}x{self.dimensions[1]}, "
                f"{self.level_count} levels, {self.mpp:.3f} µm/px)")


class OpenSlideSlide(Slide):
    """A slide read with OpenSlide; transparent (no-data) pixels become white."""

    reader = "openslide"

    def __init__(self, path: Path, mpp: float | None, require_mpp: bool = True) -> None:
        import openslide

        self.path = path
        self._os = openslide.OpenSlide(str(path))
        self.dimensions = tuple(self._os.dimensions)  # type: ignore[assignment]
        self.level_dims = [tuple(d) for d in self._os.level_dimensions]  # type: ignore[misc]
        self.level_downsamples = [float(d) for d in self._os.level_downsamples]
        props = self._os.properties
        found = _plausible(float(props["openslide.mpp-x"])) if "openslide.mpp-x" in props else None
        if found is None and "tiff.XResolution" in props:
            found = _mpp_from_resolution(float(props["tiff.XResolution"]), props.get("tiff.ResolutionUnit"))
        self.mpp = _need_mpp(path, mpp, found, require_mpp)

    def _read(self, xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        from PIL import Image

        region = self._os.read_region(xy, level, size)
        alpha = region.getchannel("A")
        if alpha.getextrema()[0] == 255:              # the usual case: all data, one C-level conversion
            return np.array(region.convert("RGB"))
        white = Image.new("RGB", region.size, (255, 255, 255))
        white.paste(region, mask=alpha)               # no-data (transparent) pixels become white glass
        return np.array(white)

    def _stored_thumbnail(self) -> np.ndarray | None:
        thumb = self._os.associated_images.get("thumbnail")
        return None if thumb is None else np.array(thumb.convert("RGB"))

    def close(self) -> None:
        self._os.close()


class TiffSlide(Slide):
    """A generic or OME pyramidal TIFF read with tifffile, decoding only the tiles or strips a region touches."""

    reader = "tifffile"
    CACHE_BYTES = 48 << 20   # decoded tiles kept per open slide (~250 of 256×256×3): neighbouring reads share them

    def __init__(self, path: Path, mpp: float | None, require_mpp: bool = True) -> None:
        import tifffile

        self.path = path
        self._tf = tifffile.TiffFile(str(path))
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        series = self._tf.series[0]
        self._pages = []
        for lvl in series.levels:
            page = lvl.keyframe
            axes = lvl.axes
            if axes not in ("YX", "YXS") or (axes == "YXS" and page.samplesperpixel not in (3, 4)):
                raise UserError(f"{path}: a TIFF with axes {axes!r} and {page.samplesperpixel} samples is not an RGB "
                                f"or grey slide — sslkit reads {READS}")
            if page.samplesperpixel > 1 and page.planarconfig != 1:
                raise UserError(f"{path}: planar (separate-channel) TIFF is not read — save it with contiguous RGB")
            self._pages.append(lvl.pages[0] if lvl.pages else page)
        self.level_dims = [(p.imagewidth, p.imagelength) for p in self._pages]
        self.dimensions = self.level_dims[0]
        self.level_downsamples = [self.dimensions[0] / w for w, _ in self.level_dims]
        size = path.stat().st_size
        for page in self._pages:
            ends = np.asarray(page.dataoffsets, dtype=np.int64) + np.asarray(page.databytecounts, dtype=np.int64)
            if len(ends) and int(ends.max()) > size:
                raise UserError(f"{path}: the file is truncated (image data runs past its end at {size} bytes) — "
                                "copy the slide again")
        self.mpp = _need_mpp(path, mpp, self._tiff_mpp(), require_mpp)

    def _stored_thumbnail(self) -> np.ndarray | None:
        for series in self._tf.series[1:]:
            if series.name.lower() == "thumbnail" and series.axes == "YXS":
                return _to_rgb(series.asarray())
        return None

    def _tiff_mpp(self) -> float | None:
        if self._tf.is_svs:                      # Aperio: "... |MPP = 0.4990|..." in the ImageDescription
            m = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", self._pages[0].description or "")
            if m:
                return _plausible(float(m.group(1)))
        if self._tf.is_ome and self._tf.ome_metadata:
            m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', self._tf.ome_metadata)
            unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', self._tf.ome_metadata)
            if m:
                factor = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3}.get(unit.group(1) if unit else "µm")
                if factor is not None:
                    found = _plausible(float(m.group(1)) * factor)
                    if found:
                        return found
        page = self._pages[0]
        if "XResolution" not in page.tags:
            return None
        num, den = page.tags["XResolution"].value
        unit = page.tags["ResolutionUnit"].value if "ResolutionUnit" in page.tags else 2
        return _mpp_from_resolution(num / den if den else None, int(unit))

    def _chunk(self, level: int, index: int) -> np.ndarray:
        """Decoded tile/strip `index` of a level as (h, w, S); cached (LRU)."""
        key = (level, index)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
            page = self._pages[level]
            fh = self._tf.filehandle
            fh.seek(page.dataoffsets[index])
            data = fh.read(page.databytecounts[index])
        seg, _, shape = page.decode(data, index, jpegtables=page.jpegtables)
        if seg is None:
            raise ValueError(f"tile {index} has no data")
        arr = np.asarray(seg).reshape(seg.shape[-3:] if seg.ndim >= 3 else seg.shape)
        if arr.ndim == 2:
            arr = arr[..., None]
        with self._lock:
            if key not in self._cache:
                self._cache[key] = arr
                self._cached_bytes += arr.nbytes
            while self._cached_bytes > self.CACHE_BYTES and len(self._cache) > 1:
                self._cached_bytes -= self._cache.popitem(last=False)[1].nbytes
        return arr

    def _read(self, xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        page = self._pages[level]
        ds = self.level_downsamples[level]
        x0, y0 = int(math.floor(xy[0] / ds + 1e-9)), int(math.floor(xy[1] / ds + 1e-9))   # as OpenSlide
        w, h = size
        W, H = self.level_dims[level]
        if page.is_tiled:
            cw, ch = page.tilewidth, page.tilelength
        else:
            cw, ch = W, min(page.rowsperstrip or H, H)
        across = -(-W // cw)
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H)
        for ty in range(ya // ch, (yb - 1) // ch + 1) if yb > ya and xb > xa else ():
            for tx in range(xa // cw, (xb - 1) // cw + 1):
                tile = self._chunk(level, ty * across + tx)
                tx0, ty0 = tx * cw, ty * ch
                sx, sy = max(xa, tx0), max(ya, ty0)
                ex, ey = min(xb, tx0 + cw, tx0 + tile.shape[1]), min(yb, ty0 + ch, ty0 + tile.shape[0])
                if ex <= sx or ey <= sy:
                    continue
                part = tile[sy - ty0:ey - ty0, sx - tx0:ex - tx0]
                out[sy - y0:ey - y0, sx - x0:ex - x0] = _to_rgb(part)
        return out

    def close(self) -> None:
        self._tf.close()


class ImageSlide(Slide):
    """A PNG/JPEG/BMP image as a single-level slide, held in memory."""

    reader = "pillow"

    def __init__(self, path: Path, mpp: float | None, require_mpp: bool = True) -> None:
        from PIL import Image

        self.path = path
        with Image.open(path) as img:
            img.load()
            dpi = img.info.get("dpi")
            self._arr = np.asarray(img.convert("RGB"))
        h, w = self._arr.shape[:2]
        self.dimensions = (w, h)
        self.level_dims = [(w, h)]
        self.level_downsamples = [1.0]
        found = _mpp_from_resolution(float(dpi[0]), 2) if dpi and dpi[0] else None
        self.mpp = _need_mpp(path, mpp, found, require_mpp)

    def _read(self, xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        w, h = size
        H, W = self._arr.shape[:2]
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        x0, y0 = xy
        xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H)
        if xb > xa and yb > ya:
            out[ya - y0:yb - y0, xa - x0:xb - x0] = self._arr[ya:yb, xa:xb]
        return out


def _to_rgb(part: np.ndarray) -> np.ndarray:
    """(h, w, S) uint8/uint16 with S in 1, 3, 4 → (h, w, 3) uint8."""
    if part.dtype != np.uint8:
        part = (part.astype(np.float32) / max(float(np.iinfo(part.dtype).max), 1.0) * 255).astype(np.uint8) \
            if part.dtype.kind in "ui" else np.clip(part * 255, 0, 255).astype(np.uint8)
    if part.shape[-1] == 1:
        return np.repeat(part, 3, axis=-1)
    return part[..., :3]


def _need_mpp(path: Path, given: float | None, found: float | None, required: bool = True) -> float:
    """--slide-mpp wins when given; else the slide's own; else a UserError that says to pass --slide-mpp
    (or NaN when not `required`: tiles at the slide's own pixels need no resolution)."""
    if given is not None:
        if not (math.isfinite(given) and given > 0):
            raise UserError(f"{SLIDE_MPP_FLAG} {given}: give the slide's resolution in µm per pixel, e.g. "
                            f"{SLIDE_MPP_FLAG} 0.5")
        return float(given)
    if found is None:
        if not required:
            return float("nan")
        raise UserError(f"{path}: the slide does not record its resolution (µm per pixel) — pass {SLIDE_MPP_FLAG}, "
                        f"e.g. {SLIDE_MPP_FLAG} 0.25 for a 40x scan or 0.5 for 20x")
    return found


def _openslide_vendor(path: Path) -> str | None:
    import openslide

    try:
        return openslide.OpenSlide.detect_format(str(path))
    except Exception:  # noqa: BLE001 - detection is a probe; the real open reports the problem
        return None


TIFFFILE_SVS_COMPRESSION = (1, 5, 7, 8)   # none, LZW, JPEG, deflate: Aperio JPEG 2000 stays with OpenSlide


def _tifffile_reads_svs(path: Path) -> bool:
    """Whether an Aperio SVS is a plain tiled TIFF pyramid that tifffile's tile-aware reader serves (pixel-identical
    to OpenSlide on CMU-1, ~3x faster per tile); anything unusual stays with OpenSlide."""
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tf:
            if not tf.is_svs:
                return False
            levels = tf.series[0].levels
            return all(lvl.keyframe.is_tiled and int(lvl.keyframe.compression) in TIFFFILE_SVS_COMPRESSION
                       and lvl.axes == "YXS" and lvl.keyframe.planarconfig == 1 for lvl in levels)
    except Exception:  # noqa: BLE001 - a probe: OpenSlide then opens (or reports) the file
        return False


def open_slide(path: Path, mpp: float | None = None, require_mpp: bool = True) -> Slide:
    """Open `path` with the reader its format needs; `mpp` (µm/px at level 0) overrides the slide's metadata;
    without either, a UserError — or `slide.mpp` NaN when not `require_mpp`.

    Raises UserError (one line naming the file) for a missing, unsupported, corrupt or truncated file, and for a
    slide with no resolution when `mpp` is not given.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file — give a slide path" if not path.exists()
                        else f"{path}: is a folder, not a slide file")
    suffix = path.suffix.lower()
    if suffix not in SLIDE_SUFFIXES:
        raise UserError(f"{path}: unsupported format {suffix or '(no suffix)'} — sslkit reads {READS}")
    try:
        if suffix == ".svs" and _tifffile_reads_svs(path):
            return TiffSlide(path, mpp, require_mpp)
        if suffix in OPENSLIDE_SUFFIXES:
            return OpenSlideSlide(path, mpp, require_mpp)
        if suffix in TIFF_SUFFIXES:
            vendor = _openslide_vendor(path)
            if vendor not in (None, "generic-tiff") and not path.name.lower().endswith((".ome.tif", ".ome.tiff")):
                return OpenSlideSlide(path, mpp, require_mpp)
            return TiffSlide(path, mpp, require_mpp)
        return ImageSlide(path, mpp, require_mpp)
    except UserError:
        raise
    except Exception as exc:  # each library has its own error types; all mean "cannot read this file"
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise UserError(f"{path}: cannot be read as a slide ({reason}) — the file may be truncated or corrupt; "
                        f"sslkit reads {READS}") from None

