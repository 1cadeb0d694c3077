"""Lidar recipe validation: every shipped recipe loads, and out-of-range values are refused up front with the
key named (before any frame is read or any run folder is made)."""
from __future__ import annotations

import pytest

from sslkit.core.errors import UserError
from sslkit.core.recipes import load_recipe, shipped_recipes
from sslkit.domains.lidar.method import LidarRecipe
from tests.domains.lidar.conftest import run_cli
from tests.domains.lidar.test_lidar_cli import one_line_exit_2


@pytest.mark.parametrize("name", [n for _, n, _ in shipped_recipes("lidar")])
def test_shipped_recipes_load(name):
    cfg = load_recipe(LidarRecipe, "lidar", name)
    assert cfg.teachers and cfg.model.pillar > 0


@pytest.mark.parametrize("override, key", [
    ("model.pillar=0", "model.pillar"),                    # was ZeroDivisionError
    ("model.pillar=-0.3", "model.pillar"),
    ("model.pillar=60", "model.pillar"),                   # one pillar across y_range (32 m)
    ("model.pillar=0.001", "model.pillar"),                # a 102400-pillar grid
    ("model.channels=0", "model.channels"),                # was IndexError
    ("model.head_hidden=0", "model.head_hidden"),
    ("model.max_objects=0", "model.max_objects"),
    ("model.reg_weight=-1", "model.reg_weight"),
    ("model.score_threshold=1", "model.score_threshold"),
    ("model.score_threshold=-0.1", "model.score_threshold"),
    ("model.nms_iou=0", "model.nms_iou"),
    ("model.x_range=[5,-5]", "model.x_range"),             # was "negative dimensions"
    ("model.y_range=[3,3]", "model.y_range"),
    ("model.z_range=[0,.inf]", "model.z_range"),
    ("teachers=[]", "teachers"),                           # pseudo-label ran with no teachers
    ("teachers=[{name: a}, {name: a}]", "teachers"),
    ("teachers=[{name: combined}]", "teachers"),
    ("teachers=[{name: ../up}]", "teachers.name"),
    ("teachers=[{voxel: 0}]", "teachers.voxel"),
    ("teachers=[{cell: 0}]", "teachers.cell"),
    ("teachers=[{smear: -0.1}]", "teachers.smear"),
    ("teachers=[{min_points: 0}]", "teachers.min_points"),
    ("teachers=[{bg_min_frac: 0}]", "teachers.bg_min_frac"),
    ("teachers=[{angle_step_deg: 0}]", "teachers.angle_step_deg"),
    ("teachers=[{max_range: 0}]", "teachers.max_range"),
    ("merge.iou=0", "merge.iou"),
    ("merge.min_votes=0", "merge.min_votes"),
    ("merge.min_votes=3", "merge"),                        # tiny has 2 teachers: no box could be kept
    ("background.min_frames=1", "background.min_frames"),
    ("background.max_frames=0", "background.max_frames"),
])
def test_out_of_range_values_are_refused_with_the_key(override, key):
    with pytest.raises(UserError, match=f"recipe key '{key}'"):
        load_recipe(LidarRecipe, "lidar", "tiny", [override])


def test_reversed_range_message_says_how():
    with pytest.raises(UserError, match=r"low < high, e\.g\. \[-8\.0, 0\.0\]"):
        load_recipe(LidarRecipe, "lidar", "tiny", ["model.z_range=[0,-8]"])


def test_cli_refuses_bad_values_before_making_anything(sim_seq, tmp_path):
    for s in ("model.pillar=0", "model.channels=0", "model.x_range=[5,-5]"):
        one_line_exit_2(run_cli("train-student", sim_seq, sim_seq / "label_2", "-r", "tiny", "--set", s,
                                "--out", tmp_path / "run"), s.split("=")[0])
    one_line_exit_2(run_cli("pseudo-label", sim_seq, "-r", "tiny", "--set", "teachers=[]", "--out", tmp_path / "pl"),
                    "'teachers'")
    one_line_exit_2(run_cli("pseudo-label", sim_seq, "-r", "tiny", "--teachers", "1", "--set", "merge.min_votes=2",
                            "--out", tmp_path / "pl"), "merge.min_votes=2")
    assert list(tmp_path.iterdir()) == []
