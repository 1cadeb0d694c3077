"""The loss picture: one panel for the total, a second for the method's logged loss terms."""
from __future__ import annotations

from matplotlib.image import imread

from sslkit.core.plots import loss_curve


def _records(n: int = 10) -> list[dict]:
    return [{"step": s, "loss": 2.0 - 0.1 * s, "lr": 1e-3, "a": 1.0 / (s + 1), "b": 0.5 + 0.01 * s} for s in range(1, n)]


def test_loss_terms_get_their_own_panel(tmp_path):
    one = imread(loss_curve(_records(), tmp_path / "one.png"))
    two = imread(loss_curve(_records(), tmp_path / "two.png", terms=("a", "b")))
    assert two.shape[0] > 1.4 * one.shape[0] and two.shape[1] == one.shape[1]
    # terms that were never logged do not make an empty panel
    none = imread(loss_curve(_records(), tmp_path / "none.png", terms=("not_logged",)))
    assert none.shape == one.shape


def test_nothing_logged_draws_nothing(tmp_path):
    assert loss_curve([{"step": 1, "lr": 1e-3}], tmp_path / "x.png", terms=("a",)) is None
    assert not (tmp_path / "x.png").exists()
