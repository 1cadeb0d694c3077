"""A pole-mounted multi-beam LiDAR over a street scene, cast with Open3D's RaycastingScene.

Coordinates are the sensor frame (metres, x along the road, z up, sensor at the origin, ground
about `height` below it). Each frame holds (N, 4) float32 points (x, y, z, intensity) and the true
boxes of the moving road users, the KITTI-style ground truth the teachers are scored against.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sslkit.domains.lidar.boxes import Box

# Elevation patterns of real units (degrees): HDL-32E is linear from -30.67 to +10.67 in 1.33 deg steps;
# HDL-64E spans -24.9 to +2.0 (upper block 1/3 deg, lower block 1/2 deg). Azimuth step at 10 Hz.
SENSORS = {
    32: {"model": "HDL-32E-like", "elevation": list(np.linspace(-30.67, 10.67, 32).round(3)), "azimuth_step": 0.16},
    64: {"model": "HDL-64E-like",
         "elevation": list(np.concatenate([np.linspace(-24.9, -8.87, 32), np.linspace(-8.53, 2.0, 32)]).round(3)),
         "azimuth_step": 0.1728},
}
# Realistic size ranges (length, width, height in metres) of the moving classes.
SIZES = {"Car": ((3.9, 5.0), (1.65, 1.95), (1.4, 1.75)),
         "Pedestrian": ((0.45, 0.75), (0.45, 0.7), (1.55, 1.9)),
         "Cyclist": ((1.6, 1.9), (0.55, 0.75), (1.6, 1.85))}


@dataclass
class SensorSpec:
    """What `simulate` writes to sensor.json (and what the teachers may use)."""

    beams: int
    model: str
    elevation_deg: list[float]
    azimuth_step_deg: float
    height_m: float = 5.5
    max_range_m: float = 100.0
    range_noise_m: float = 0.02
    dropout: float = 0.03
    rate_hz: float = 10.0
    extra: dict = field(default_factory=dict)


@dataclass
class Actor:
    cls: str
    size: tuple[float, float, float]
    start: tuple[float, float]
    velocity: tuple[float, float]


def _box_mesh(o3d, center: np.ndarray, size: tuple[float, float, float], yaw: float = 0.0):  # noqa: ANN001, ANN202
    mesh = o3d.geometry.TriangleMesh.create_box(*size)
    mesh.translate(-np.asarray(size) / 2)
    if yaw:
        mesh.rotate(mesh.get_rotation_matrix_from_xyz((0, 0, yaw)), center=(0, 0, 0))
    mesh.translate(center)
    return mesh


def _ground_z(x: np.ndarray | float, y: np.ndarray | float, height: float, slope: float) -> np.ndarray | float:
    return -height + slope * np.asarray(x)


def static_scene(rng: np.random.Generator, spec: SensorSpec, slope: float) -> list[tuple[object, int]]:
    """(mesh, material id) of ground, kerbs, sidewalks, buildings, poles and trees."""
    import open3d as o3d

    h, parts = spec.height_m, []
    L = 180.0
    ground = o3d.geometry.TriangleMesh()
    ground.vertices = o3d.utility.Vector3dVector(np.array(
        [[-L / 2, -60, _ground_z(-L / 2, 0, h, slope)], [L / 2, -60, _ground_z(L / 2, 0, h, slope)],
         [L / 2, 60, _ground_z(L / 2, 0, h, slope)], [-L / 2, 60, _ground_z(-L / 2, 0, h, slope)]]))
    ground.triangles = o3d.utility.Vector3iVector(np.array([[0, 1, 2], [0, 2, 3]]))
    parts.append((ground, 0))
    # road spans y in [1, 15]; kerbs + sidewalks on both sides, buildings behind them.
    for y0, y1 in ((-4.0, 1.0), (15.0, 20.0)):
        for x0 in np.arange(-L / 2, L / 2, 10.0):
            c = np.array([x0 + 5, (y0 + y1) / 2, _ground_z(x0 + 5, 0, h, slope) + 0.075])
            parts.append((_box_mesh(o3d, c, (10.0, y1 - y0, 0.15)), 1))
    for y_face, sign in ((-6.0, -1), (22.0, 1)):
        x = -L / 2
        while x < L / 2:
            w = rng.uniform(8, 25)
            gap = rng.uniform(0, 4)
            ht = rng.uniform(6, 18)
            depth = 10.0
            c = np.array([x + w / 2, y_face + sign * depth / 2, _ground_z(x + w / 2, 0, h, slope) + ht / 2])
            parts.append((_box_mesh(o3d, c, (w, depth, ht)), 2))
            x += w + gap
    for side_y in (-3.2, 19.0):  # street lights / sign poles every ~25 m
        for x in np.arange(-80, 81, 25) + rng.uniform(-3, 3):
            c = np.array([x, side_y, _ground_z(x, 0, h, slope) + 3.5])
            parts.append((_box_mesh(o3d, c, (0.2, 0.2, 7.0)), 3))
    for side_y in (-2.0, 17.8):  # trees: trunk + irregular canopy
        for x in np.arange(-75, 76, 14) + rng.uniform(-4, 4):
            gz = _ground_z(x, 0, h, slope)
            parts.append((_box_mesh(o3d, np.array([x, side_y, gz + 1.5]), (0.35, 0.35, 3.0)), 4))
            canopy = o3d.geometry.TriangleMesh.create_sphere(radius=rng.uniform(1.5, 2.5), resolution=6)
            v = np.asarray(canopy.vertices)
            canopy.vertices = o3d.utility.Vector3dVector(v * rng.uniform(0.8, 1.2, size=v.shape))
            canopy.translate((x, side_y, gz + 4.2))
            parts.append((canopy, 5))
    return parts


def make_actors(rng: np.random.Generator, frames: int, rate: float) -> list[Actor]:
    """Cars in four lanes both ways, cyclists near the kerbs, pedestrians on the sidewalks."""
    actors: list[Actor] = []
    span = frames / rate

    def spawn(cls: str, lane_y: float, speed: tuple[float, float], direction: int, count: int) -> None:
        v = rng.uniform(*speed)
        # spread start positions so that the lane stays busy for the whole sequence
        starts = np.sort(rng.uniform(-70 - v * span * (direction > 0), 70 + v * span * (direction < 0), size=count))
        last = -1e9
        for s in starts:
            l, w, h = (rng.uniform(*r) for r in SIZES[cls])
            if s - last < l + 4.0:  # no overlapping vehicles
                continue
            last = s
            actors.append(Actor(cls, (l, w, h), (float(s), lane_y + rng.normal(0, 0.15)),
                                (direction * v * rng.uniform(0.9, 1.1), 0.0)))

    for lane_y, direction in ((4.5, 1), (7.8, 1), (10.9, -1), (13.9, -1)):
        spawn("Car", lane_y, (7.0, 14.0), direction, int(rng.integers(5, 9)))
    for lane_y, direction in ((2.0, 1), (14.1, -1)):
        spawn("Cyclist", lane_y, (3.5, 6.0), direction, int(rng.integers(1, 4)))
    for walk_y in (-1.0, 0.0, 16.2, 17.3):
        for _ in range(int(rng.integers(2, 5))):
            d = 1 if rng.random() < 0.5 else -1
            l, w, h = (rng.uniform(*r) for r in SIZES["Pedestrian"])
            actors.append(Actor("Pedestrian", (l, w, h), (float(rng.uniform(-45, 45)), walk_y + rng.normal(0, 0.2)),
                                (d * rng.uniform(1.0, 1.7), 0.0)))
    return actors


def actor_meshes(o3d, a: Actor, t: float, height: float, slope: float) -> tuple[list, Box]:  # noqa: ANN001
    """Meshes of one actor at time t and its true box (bottom on the ground)."""
    x = a.start[0] + a.velocity[0] * t
    y = a.start[1] + a.velocity[1] * t
    yaw = math.atan2(a.velocity[1], a.velocity[0])
    l, w, h = a.size
    gz = float(_ground_z(x, y, height, slope))
    c = np.array([x, y, gz])
    meshes = []
    if a.cls == "Car":  # body + narrower cabin
        meshes.append(_box_mesh(o3d, c + [0, 0, 0.2 + 0.55 * (h - 0.2) / 2], (l, w, 0.55 * (h - 0.2)), yaw))
        meshes.append(_box_mesh(o3d, c + [0, 0, 0.35], (l * 0.97, w * 0.97, 0.3), yaw))
        meshes.append(_box_mesh(o3d, c + [-0.1 * l * math.cos(yaw), -0.1 * l * math.sin(yaw), 0.2 + 0.55 * (h - 0.2)
                                          + 0.45 * (h - 0.2) / 2], (l * 0.55, w * 0.9, 0.45 * (h - 0.2)), yaw))
    elif a.cls == "Cyclist":  # bike + rider
        meshes.append(_box_mesh(o3d, c + [0, 0, 0.5], (l, 0.15, 1.0), yaw))
        meshes.append(_box_mesh(o3d, c + [0, 0, 1.0 + (h - 1.0) / 2], (0.5, w, h - 1.0), yaw))
    else:  # pedestrian: legs + torso
        meshes.append(_box_mesh(o3d, c + [0, 0, 0.45], (l * 0.6, w * 0.7, 0.9), yaw))
        meshes.append(_box_mesh(o3d, c + [0, 0, 0.9 + (h - 0.9) / 2], (l, w, h - 0.9), yaw))
    return meshes, Box(x, y, gz + h / 2, l, w, h, yaw, a.cls, 1.0)


def ray_directions(spec: SensorSpec) -> np.ndarray:
    """(beams * columns, 3) unit vectors, beam-major."""
    el = np.radians(np.asarray(spec.elevation_deg))
    az = np.radians(np.arange(0, 360, spec.azimuth_step_deg))
    e, a = np.meshgrid(el, az, indexing="ij")
    return np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], -1).reshape(-1, 3).astype(np.float32)


def cast_frame(static: list, actors: list[Actor], t: float, spec: SensorSpec, slope: float,
               rng: np.random.Generator, dirs: np.ndarray) -> tuple[np.ndarray, list[Box], list[int]]:
    """(N, 4) points, true boxes and the number of points that hit each box."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    materials = {}
    for mesh, mat in static:
        gid = scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
        materials[gid] = mat
    boxes, owners = [], {}
    for k, a in enumerate(actors):
        meshes, box = actor_meshes(o3d, a, t, spec.height_m, slope)
        if abs(box.x) > 95:
            continue
        idx = len(boxes)
        boxes.append(box)
        for m in meshes:
            gid = scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(m))
            materials[gid] = 6 + (k % 3)
            owners[gid] = idx
    rays = np.concatenate([np.zeros_like(dirs), dirs], 1)
    ans = scene.cast_rays(o3d.core.Tensor(rays))
    dist = ans["t_hit"].numpy()
    gid = ans["geometry_ids"].numpy()
    normals = ans["primitive_normals"].numpy()
    dist = dist + rng.normal(0, spec.range_noise_m, size=dist.shape).astype(np.float32)
    keep = np.isfinite(dist) & (dist < spec.max_range_m) & (dist > 1.0) & (rng.random(dist.shape) >= spec.dropout)
    d, g, n, v = dist[keep], gid[keep], normals[keep], dirs[keep]
    pts = v * d[:, None]
    reflect = np.array([0.15, 0.35, 0.25, 0.5, 0.2, 0.1, 0.6, 0.4, 0.8], np.float32)
    mat = np.vectorize(materials.get, otypes=[np.int64])(g) if len(g) else np.zeros(0, np.int64)
    cosine = np.abs((n * v).sum(1))
    inten = np.clip(reflect[mat] * (0.3 + 0.7 * cosine) * (1 + rng.normal(0, 0.05, len(d))), 0, 1)
    counts = [0] * len(boxes)
    if owners:
        hit_owner = np.array([owners.get(int(x), -1) for x in g])
        counts = np.bincount(hit_owner[hit_owner >= 0], minlength=len(boxes)).tolist()
    return np.concatenate([pts, inten[:, None]], 1).astype(np.float32), boxes, counts


def simulate(out: Path, frames: int, beams: int, seed: int, min_points: int = 10) -> dict:
    """Write OUT/velodyne/NNNNNN.bin, OUT/label_2/NNNNNN.txt (truth) and OUT/sensor.json."""
    from sslkit.domains.lidar.labels import write_kitti

    rng = np.random.default_rng(seed)
    s = SENSORS[beams]
    spec = SensorSpec(beams=beams, model=s["model"], elevation_deg=[float(e) for e in s["elevation"]],
                      azimuth_step_deg=s["azimuth_step"])
    slope = float(rng.uniform(-0.03, 0.03))
    spec.extra = {"ground_slope": slope, "seed": seed, "frames": frames, "min_points_for_label": min_points}
    static = static_scene(rng, spec, slope)
    actors = make_actors(rng, frames, spec.rate_hz)
    dirs = ray_directions(spec)
    (out / "velodyne").mkdir(parents=True, exist_ok=True)
    (out / "label_2").mkdir(parents=True, exist_ok=True)
    n_points, n_boxes = 0, {}
    for f in range(frames):
        pts, boxes, counts = cast_frame(static, actors, f / spec.rate_hz, spec, slope, rng, dirs)
        name = f"{f:06d}"
        tmp = out / "velodyne" / f".{name}.bin.tmp"
        pts.tofile(tmp)
        tmp.replace(out / "velodyne" / f"{name}.bin")
        labelled = []
        for b, c in zip(boxes, counts):
            if c < min_points:
                b = Box(b.x, b.y, b.z, b.l, b.w, b.h, b.yaw, "DontCare", 1.0)
            labelled.append(b)
            n_boxes[b.cls] = n_boxes.get(b.cls, 0) + 1
        write_kitti(out / "label_2" / f"{name}.txt", labelled, with_score=False)
        n_points += len(pts)
    from sslkit.core.files import atomic_write_text

    atomic_write_text(out / "sensor.json", json.dumps(asdict(spec), indent=2))
    return {"frames": frames, "mean_points": n_points / max(frames, 1), "boxes": n_boxes}
