"""`lidar render`: the view fits the frame (a real KITTI scan reaches ~80 m all round, beyond any fixed window),
--range picks it, and the title names only what is drawn."""
from __future__ import annotations

from pathlib import Path

import matplotlib.figure
import numpy as np
import pytest

from tests.domains.lidar.conftest import run_cli


def _scan(path: Path) -> Path:
    """A KITTI-like ring: points from 5 to 78 m all round (the old fixed view showed x -60…60, y -10…28 only)."""
    rng = np.random.default_rng(0)
    r, a = rng.uniform(5, 78, 4000), rng.uniform(-np.pi, np.pi, 4000)
    pts = np.stack([r * np.cos(a), r * np.sin(a), rng.uniform(-2, 1, 4000), rng.uniform(0, 1, 4000)], 1)
    pts.astype(np.float32).tofile(path)
    return path


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> dict:
    seen: dict = {}
    save = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        ax = fig.axes[0]
        seen.update(title=ax.get_title(), xlim=ax.get_xlim(), ylim=ax.get_ylim(), legend=ax.get_legend())
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    return seen


def test_the_view_fits_the_whole_scan_and_the_title_names_only_points(tmp_path: Path, drawn: dict) -> None:
    frame = _scan(tmp_path / "000000.bin")
    pts = np.fromfile(frame, dtype=np.float32).reshape(-1, 4)
    res = run_cli("render", frame, "--out", tmp_path / "bev.png")
    assert res.returncode == 0, res.stderr
    (x0, x1), (y0, y1) = drawn["xlim"], drawn["ylim"]
    assert x0 <= pts[:, 0].min() and x1 >= pts[:, 0].max() and y0 <= pts[:, 1].min() and y1 >= pts[:, 1].max()
    assert x1 - x0 < 170 and y1 - y0 < 170                         # fitted, not an arbitrary huge window
    assert drawn["title"] == "000000.bin: points by height" and drawn["legend"] is None   # no truth, no labels


def test_range_sets_the_view_and_a_bad_range_is_one_line(tmp_path: Path, drawn: dict) -> None:
    frame = _scan(tmp_path / "000000.bin")
    res = run_cli("render", frame, "--range", "-20,30,-10,15", "--out", tmp_path / "bev.png")
    assert res.returncode == 0, res.stderr
    assert drawn["xlim"] == (-20, 30) and drawn["ylim"] == (-10, 15)
    res = run_cli("render", frame, "--range", "30,-20,0,1", "--out", tmp_path / "b2.png")
    assert res.returncode == 2 and "XMIN,XMAX,YMIN,YMAX" in res.stderr and not (tmp_path / "b2.png").exists()


def test_the_title_counts_the_boxes_of_what_was_given(sim_seq: Path, tmp_path: Path, drawn: dict) -> None:
    res = run_cli("render", sim_seq / "velodyne" / "000004.bin", "--gt", sim_seq, "--out", tmp_path / "bev.png")
    assert res.returncode == 0, res.stderr
    n = sum(1 for line in (sim_seq / "label_2" / "000004.txt").read_text().splitlines()
            if line and not line.startswith("DontCare"))
    assert drawn["title"] == f"000004.bin: points by height, truth white ({n} box{'' if n == 1 else 'es'})"
    assert "labels" not in drawn["title"]
