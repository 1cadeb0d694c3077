"""Frame readers: KITTI `.bin` (x, y, z, intensity float32), `.npy`, and `.pcd`/`.ply` via Open3D."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sslkit.core.errors import UserError

FORMATS = (".bin", ".npy", ".pcd", ".ply")
MAX_COORD = 1000.0      # m: beyond any LiDAR's range; larger |x|, |y|, |z| are bytes of something else
MAX_INTENSITY = 1e5     # sensors report 0-1, 0-255 or 0-65535


def list_frames(path: Path) -> list[Path]:
    """Frame files of one format, sorted by name; a folder holding `velodyne/` is read from there."""
    if not path.exists():
        raise UserError(f"frames path {path} does not exist — check the spelling or the current folder")
    if path.is_file():
        if path.suffix.lower() not in FORMATS:
            raise UserError(f"{path}: unsupported frame format — use one of {', '.join(FORMATS)}")
        return [path]
    if (path / "velodyne").is_dir():
        path = path / "velodyne"
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FORMATS)
    if not files:
        raise UserError(f"no frames ({', '.join(FORMATS)}) in {path} — point at the folder of frame files")
    kinds = sorted({p.suffix.lower() for p in files})
    if len(kinds) > 1:
        counts = ", ".join(f"{sum(p.suffix.lower() == k for p in files)} {k}" for k in kinds)
        raise UserError(f"{path} mixes frame formats ({counts}) — keep one format per folder")
    for f in files:  # a truncated .bin is refused before any work, not after the frames before it
        _check_bin_size(f)
    return files


def _check_bin_size(path: Path) -> None:
    size = path.stat().st_size if path.suffix.lower() == ".bin" else 0
    if size % 16:
        raise UserError(f"{path}: {size} bytes is not a multiple of 16 — a KITTI .bin frame holds float32 "
                        "x, y, z, intensity per point; re-export it in that layout")


def read_frame(path: Path) -> np.ndarray:
    """(N, 4) float32 x, y, z, intensity (intensity 0 when the file has none). May contain NaN/inf."""
    ext = path.suffix.lower()
    if ext == ".bin":
        _check_bin_size(path)
        return np.fromfile(path, dtype=np.float32).reshape(-1, 4)
    if ext == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise UserError(f"{path} is not a readable .npy file ({exc}) — save frames with numpy.save") from None
        if a.ndim != 2 or a.shape[1] not in (3, 4) or not np.issubdtype(a.dtype, np.number):
            raise UserError(f"{path}: array of shape {a.shape} and dtype {a.dtype}; expected numeric (N, 3) or (N, 4)")
        with np.errstate(over="ignore", invalid="ignore"):  # beyond float32 becomes inf: dropped by clean_frame
            a = a.astype(np.float32)
        return a if a.shape[1] == 4 else np.concatenate([a, np.zeros((len(a), 1), np.float32)], 1)
    import open3d as o3d

    pcd = o3d.t.io.read_point_cloud(str(path))
    if "positions" not in pcd.point:
        if path.stat().st_size > 0 and not _looks_like_cloud(path):
            raise UserError(f"{path} could not be read as a point cloud — check that it is a valid {ext} file")
        return np.zeros((0, 4), np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        xyz = pcd.point.positions.numpy().astype(np.float32)
        inten = np.zeros((len(xyz), 1), np.float32)
        for key in ("intensity", "intensities", "reflectance"):
            if key in pcd.point:
                inten = pcd.point[key].numpy().astype(np.float32).reshape(-1, 1)
                break
    return np.concatenate([xyz, inten], 1)


def _looks_like_cloud(path: Path) -> bool:
    head = path.open("rb").read(64)
    return head.startswith(b"ply") or head.lstrip().startswith((b"#", b"VERSION", b"FIELDS"))


def clean_frame(points: np.ndarray, path: Path | None = None) -> tuple[np.ndarray, int, int]:
    """Drop invalid points; returns (points, NaN/inf points dropped, out-of-range points dropped).

    NaN/inf are dropped silently (organised clouds mark missing returns with NaN, so they may be most of a
    frame). Finite points beyond ±MAX_COORD m or with |intensity| > MAX_INTENSITY are not measurements; a frame
    where they are most of the finite points is not a point cloud at all (random bytes, float64, another
    layout) and is refused rather than fed to the teachers and the detector.
    """
    finite = np.isfinite(points).all(1)
    with np.errstate(invalid="ignore"):
        far = finite & ((np.abs(points[:, :3]) > MAX_COORD).any(1) | (np.abs(points[:, 3]) > MAX_INTENSITY))
    n_far, n_bad = int(far.sum()), int((~finite).sum())
    if n_far and 2 * n_far > int(finite.sum()):
        kind = ("a KITTI float32 x, y, z, intensity frame" if path is None or path.suffix.lower() == ".bin"
                else "a point cloud in metres")
        raise UserError(f"{path or 'frame'}: {n_far} of {int(finite.sum())} points lie beyond ±{MAX_COORD:g} m or "
                        f"have absurd intensity — it does not look like {kind}; re-export it or remove it")
    ok = finite & ~far
    return (points, 0, 0) if ok.all() else (points[ok], n_bad, n_far)


def write_bin(path: Path, points: np.ndarray) -> None:
    from sslkit.core.files import atomic_write_bytes

    atomic_write_bytes(path, np.ascontiguousarray(points[:, :4], dtype=np.float32).tobytes())
