"""Teachers (background, clustering, box fitting, classes, merge) and frame readers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from sslkit.core.errors import UserError
from sslkit.domains.lidar.boxes import Box
from sslkit.domains.lidar.io import clean_frame, list_frames, read_frame, write_bin
from sslkit.domains.lidar.teachers import (Teacher, TeacherConfig, classify, complete, fit_rectangle, grid_clusters,
                                           merge_teachers)


def rect_outline(cx: float, cy: float, l: float, w: float, yaw: float, n: int = 200) -> np.ndarray:
    """Points on two visible sides (an L) of a rotated rectangle."""
    t = np.linspace(0, 1, n)
    side1 = np.stack([(t - 0.5) * l, np.full(n, -w / 2)], 1)
    side2 = np.stack([np.full(n, l / 2), (t - 0.5) * w], 1)
    p = np.concatenate([side1, side2])
    c, s = math.cos(yaw), math.sin(yaw)
    return p @ np.array([[c, s], [-s, c]]) + [cx, cy]


@pytest.mark.parametrize("fit", ["lshape", "minarea"])
def test_fit_rectangle_recovers_pose_and_size(fit):
    cx, cy, l, w, yaw = fit_rectangle(rect_outline(10, 4, 4.5, 1.8, 0.5), fit, 1.0)
    assert (cx, cy) == pytest.approx((10, 4), abs=0.05)
    assert (l, w) == pytest.approx((4.5, 1.8), abs=0.05)
    assert abs(math.sin(yaw - 0.5)) < 0.02   # heading up to 180°


def test_classify_by_size():
    assert classify(4.3, 1.8, 1.5, 200)[0] == "Car"
    assert classify(0.6, 0.55, 1.75, 60)[0] == "Pedestrian"
    assert classify(1.75, 0.6, 1.7, 60)[0] == "Cyclist"
    assert classify(0.5, 0.5, 0.3, 60)[0] is None            # too low: kerb/noise
    good, odd = classify(4.4, 1.8, 1.58, 200)[1], classify(6.5, 2.4, 1.58, 200)[1]
    assert good > odd


def test_complete_grows_away_from_sensor():
    x, y, l, w = complete("Car", 20.0, 0.0, 2.0, 1.8, 0.0)   # only the near end of a car at +x was seen
    assert l == pytest.approx(4.45) and x == pytest.approx(20 + (4.45 - 2.0) / 2)


def test_grid_clusters_smear_joins_ring_slices_but_not_neighbours():
    ring1 = np.stack([np.full(20, 45.0), np.linspace(7, 8.8, 20)], 1)
    ring2 = ring1 + [1.0, 0]                                   # next ring on the same car, 1 m further out
    other = np.stack([np.full(20, 45.5), np.linspace(10.5, 12.3, 20)], 1)   # the car in the next lane
    xy = np.concatenate([ring1, ring2, other])
    plain = grid_clusters(xy, 0.3)
    smeared = grid_clusters(xy, 0.3, smear=0.03)
    assert len(set(plain[:40])) == 2
    assert len(set(smeared[:40])) == 1 and smeared[40] != smeared[0]


def street_frames(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Static ground + wall, with a 4.5 x 1.8 x 1.5 m block moving along x."""
    g = np.stack(np.meshgrid(np.arange(-20, 20, 0.2), np.arange(-5, 15, 0.2)), -1).reshape(-1, 2)
    ground = np.c_[g, np.full(len(g), -5.0)]
    wall = np.stack(np.meshgrid(np.arange(-20, 20, 0.2), np.arange(-5, 0, 0.2)), -1).reshape(-1, 2)
    wall = np.c_[wall[:, 0], np.full(len(wall), 15.0), wall[:, 1]]
    frames = []
    for i in range(n):
        x0 = -15 + 3 * i
        top = np.stack(np.meshgrid(np.arange(x0 - 2.25, x0 + 2.25, 0.1), np.arange(4.1, 5.9, 0.1)), -1).reshape(-1, 2)
        side = np.stack(np.meshgrid(np.arange(x0 - 2.25, x0 + 2.25, 0.1), np.arange(-4.9, -3.5, 0.1)), -1).reshape(-1, 2)
        car = np.concatenate([np.c_[top, np.full(len(top), -3.5)], np.c_[side[:, 0], np.full(len(side), 4.1), side[:, 1]]])
        ground_vis = ground[~((np.abs(ground[:, 0] - x0) < 2.3) & (ground[:, 1] > 4) & (ground[:, 1] < 6))]
        pts = np.concatenate([ground_vis, wall, car]) + rng.normal(0, 0.01, (1, 3))
        frames.append(np.c_[pts, np.zeros(len(pts))].astype(np.float32))
    return frames


def test_teacher_finds_the_moving_car_and_drops_static_scene():
    frames = street_frames(10, np.random.default_rng(0))
    t = Teacher(TeacherConfig(voxel=0.25, bg_min_frac=0.3, cell=0.3)).fit_background(frames)
    assert t.background.is_background(frames[0][:100]).all()      # ground points are background
    boxes = t.label(frames[4])                                        # car centred at x = -3
    cars = [b for b in boxes if b.cls == "Car"]
    assert len(cars) == 1 and len(boxes) == 1
    b = cars[0]
    assert (b.x, b.y) == pytest.approx((-3.0, 5.0), abs=0.25)
    assert b.h == pytest.approx(1.5, abs=0.15)


def test_vote_merge_ranks_consensus_first():
    a = [Box(0, 0, 0, 4.5, 1.8, 1.5, 0, "Car", 0.8), Box(20, 0, 0, 4.5, 1.8, 1.5, 0, "Car", 0.9)]
    b = [Box(0.1, 0, 0, 4.5, 1.8, 1.5, 0, "Car", 0.7)]
    merged = merge_teachers([a, b], "vote")
    assert len(merged) == 2
    both = min(merged, key=lambda m: abs(m.x))
    alone = max(merged, key=lambda m: abs(m.x))
    assert both.score > alone.score and both.x == pytest.approx((0 * 0.8 + 0.1 * 0.7) / 1.5, abs=1e-3)
    assert len(merge_teachers([a, b], "vote", min_votes=2)) == 1
    assert len(merge_teachers([a, b], "union")) == 3


def test_readers_and_bad_frames(tmp_path):
    pts = np.array([[1, 2, 3, 0.5], [4, 5, 6, 0.1]], np.float32)
    write_bin(tmp_path / "a.bin", pts)
    assert np.array_equal(read_frame(tmp_path / "a.bin"), pts)
    np.save(tmp_path / "b.npy", pts[:, :3].astype(np.float64))
    assert read_frame(tmp_path / "b.npy").shape == (2, 4)
    import open3d as o3d

    for ext in ("pcd", "ply"):
        o3d.io.write_point_cloud(str(tmp_path / f"c.{ext}"), o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts[:, :3].astype(np.float64))))
        assert np.allclose(read_frame(tmp_path / f"c.{ext}")[:, :3], pts[:, :3])
    (tmp_path / "bad.bin").write_bytes(b"\0" * 20)
    with pytest.raises(UserError, match="multiple of 16"):
        read_frame(tmp_path / "bad.bin")
    with pytest.raises(UserError, match="mixes frame formats"):
        list_frames(tmp_path)
    cleaned, dropped, far = clean_frame(np.array([[1, 2, 3, 0], [np.nan, 0, 0, 0], [np.inf, 1, 1, 1]], np.float32))
    assert dropped == 2 and far == 0 and len(cleaned) == 1


def test_out_of_range_points_are_dropped_and_garbage_frames_refused(tmp_path):
    pts = np.array([[1, 2, -3, 0.5], [4, 5, -6, 0.1], [2e3, 0, 0, 0], [0, 0, -1e9, 0], [1, 1, 1, 1e7]], np.float32)
    cleaned, bad, far = clean_frame(np.concatenate([pts, pts[:2], pts[:2]]))
    assert (bad, far) == (0, 3) and len(cleaned) == 6 and np.abs(cleaned[:, :3]).max() < 10
    # mostly NaN is an organised cloud's missing returns, not garbage: kept
    holes = np.concatenate([pts[:2], np.full((50, 4), np.nan, np.float32)])
    assert clean_frame(holes)[0].shape == (2, 4)
    # random bytes read as float32: most finite values are astronomically large
    (tmp_path / "rand.bin").write_bytes(np.random.default_rng(0).bytes(16 * 4000))
    with pytest.raises(UserError, match=r"rand\.bin: .* does not look like a KITTI float32 x, y, z, intensity frame"):
        clean_frame(read_frame(tmp_path / "rand.bin"), tmp_path / "rand.bin")


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_npy_beyond_float32_reads_without_numpy_warnings(tmp_path):
    np.save(tmp_path / "big.npy", np.array([[1e300, 0, 0], [1, 2, 3], [4, 5, 6]]))
    cleaned, bad, far = clean_frame(read_frame(tmp_path / "big.npy"))
    assert bad == 1 and len(cleaned) == 2


def test_truncated_bin_is_refused_when_listing(tmp_path):
    write_bin(tmp_path / "000000.bin", np.zeros((4, 4), np.float32))
    (tmp_path / "000001.bin").write_bytes(b"\0" * 40)
    with pytest.raises(UserError, match=r"000001\.bin: 40 bytes is not a multiple of 16"):
        list_frames(tmp_path)
