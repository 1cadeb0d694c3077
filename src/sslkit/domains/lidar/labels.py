"""Label files: KITTI `label_2`-style text and OpenPCDet's custom `x y z dx dy dz heading class` text.

KITTI lines here are in the LiDAR (sensor) frame, since roadside data has no camera:
`type trunc occ alpha x1 y1 x2 y2 h w l x y z_bottom yaw [score]` with (x, y, z_bottom) the bottom
centre of the box in the sensor frame and yaw about +z. OpenPCDet lines use the box centre.
"""
from __future__ import annotations

import math
from pathlib import Path

from sslkit.core.errors import UserError
from sslkit.domains.lidar.boxes import CLASSES, Box

KNOWN = set(CLASSES) | {"DontCare", "Van", "Truck", "Person_sitting", "Misc", "Tram"}


def kitti_line(b: Box, with_score: bool = True) -> str:
    alpha = -math.atan2(b.y, b.x) + b.yaw
    line = (f"{b.cls} 0.00 0 {alpha:.2f} 0.00 0.00 0.00 0.00 {b.h:.3f} {b.w:.3f} {b.l:.3f} "
            f"{b.x:.3f} {b.y:.3f} {b.z - b.h / 2:.3f} {b.yaw:.4f}")
    return line + (f" {b.score:.4f}" if with_score else "")


def pcdet_line(b: Box) -> str:
    return f"{b.x:.3f} {b.y:.3f} {b.z:.3f} {b.l:.3f} {b.w:.3f} {b.h:.3f} {b.yaw:.4f} {b.cls}"


def write_kitti(path: Path, boxes: list[Box], with_score: bool = True) -> None:
    from sslkit.core.files import atomic_write_text

    atomic_write_text(path, "".join(kitti_line(b, with_score) + "\n" for b in boxes))


def write_pcdet(path: Path, boxes: list[Box]) -> None:
    from sslkit.core.files import atomic_write_text

    atomic_write_text(path, "".join(pcdet_line(b) + "\n" for b in boxes if b.cls != "DontCare"))


def read_labels(path: Path) -> list[Box]:
    """Boxes from one KITTI-style (15/16 fields) or OpenPCDet (8 fields) text file; score 1.0 where none is given."""
    return read_labels_scored(path)[0]


def read_labels_scored(path: Path) -> tuple[list[Box], bool]:
    """`read_labels` plus whether every box carried a score (16-field KITTI lines): without scores, AP
    has no ranking to sweep."""
    boxes, scored = [], True
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        f = raw.split()
        if not f:
            continue
        try:
            if len(f) in (15, 16):
                h, w, l, x, y, zb, yaw = map(float, f[8:15])
                score = float(f[15]) if len(f) == 16 else 1.0
                scored &= len(f) == 16
                box = Box(x, y, zb + h / 2, l, w, h, yaw, f[0], score)
            elif len(f) == 8:
                x, y, z, l, w, h, yaw = map(float, f[:7])
                box = Box(x, y, z, l, w, h, yaw, f[7], 1.0)
                scored = False
            else:
                raise ValueError(f"{len(f)} fields")
        except ValueError as exc:
            raise UserError(f"{path}:{n}: not a KITTI (15/16 fields) or OpenPCDet (8 fields) label line ({exc}) — "
                            "fix or remove that line") from None
        if not all(math.isfinite(v) for v in box.array()):
            raise UserError(f"{path}:{n}: NaN/inf in a label — fix that line")
        boxes.append(box)
    return boxes, scored


def label_files(folder: Path) -> dict[str, Path]:
    """Frame name -> label file; accepts a folder of .txt files or one holding `label_2/`."""
    if not folder.exists():
        raise UserError(f"label folder {folder} does not exist — check the path")
    if folder.is_file():
        raise UserError(f"{folder} is a file — pass the folder that holds one .txt label file per frame")
    if (folder / "label_2").is_dir() and not any(folder.glob("*.txt")):
        folder = folder / "label_2"
    files = {p.stem: p for p in sorted(folder.glob("*.txt"))}
    if not files:
        raise UserError(f"no .txt label files in {folder} — pass a label_2/ or combined/ folder")
    return files
