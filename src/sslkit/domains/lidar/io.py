"""Frame readers: KITTI `.bin` (x, y, z, intensity float32), `.npy`, and `.pcd`/`.ply` via Open3D."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sslkit.core.errors import UserError

FORMATS = (".bin", ".npy", ".pcd", ".ply")


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
    return files


def read_frame(path: Path) -> np.ndarray:
    """(N, 4) float32 x, y, z, intensity (intensity 0 when the file has none). May contain NaN/inf."""
    ext = path.suffix.lower()
    if ext == ".bin":
        size = path.stat().st_size
        if size % 16:
            raise UserError(f"{path}: {size} bytes is not a multiple of 16 — a KITTI .bin frame holds float32 "
                            "x, y, z, intensity per point; re-export it in that layout")
        return np.fromfile(path, dtype=np.float32).reshape(-1, 4)
    if ext == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise UserError(f"{path} is not a readable .npy file ({exc}) — save frames with numpy.save") from None
        if a.ndim != 2 or a.shape[1] not in (3, 4) or not np.issubdtype(a.dtype, np.number):
            raise UserError(f"{path}: array of shape {a.shape} and dtype {a.dtype}; expected numeric (N, 3) or (N, 4)")
        a = a.astype(np.float32)
        return a if a.shape[1] == 4 else np.concatenate([a, np.zeros((len(a), 1), np.float32)], 1)
    import open3d as o3d

    pcd = o3d.t.io.read_point_cloud(str(path))
    if "positions" not in pcd.point:
        if path.stat().st_size > 0 and not _looks_like_cloud(path):
            raise UserError(f"{path} could not be read as a point cloud — check that it is a valid {ext} file")
        return np.zeros((0, 4), np.float32)
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


def clean_frame(points: np.ndarray) -> tuple[np.ndarray, int]:
    """Drop points with NaN/inf coordinates; returns (points, how many were dropped)."""
    ok = np.isfinite(points).all(1)
    return (points, 0) if ok.all() else (points[ok], int((~ok).sum()))


def write_bin(path: Path, points: np.ndarray) -> None:
    from sslkit.core.files import atomic_write_bytes

    atomic_write_bytes(path, np.ascontiguousarray(points[:, :4], dtype=np.float32).tobytes())
