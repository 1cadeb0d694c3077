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


def test_embedding_map_gives_each_class_its_own_colour_and_a_legend(tmp_path):
    """Two classes: tab10's blue and orange (a colour map spread over 0..1 gave blue and a near-blue cyan)."""
    import numpy as np

    from sslkit.core.plots import embedding_map

    rng = np.random.default_rng(0)
    vecs = np.vstack([rng.normal(0, 1, (200, 8)), rng.normal(4, 1, (200, 8))])
    img = imread(embedding_map(vecs, np.repeat([0, 1], 200), tmp_path / "map.png", names=["<=50K", ">50K"]))[..., :3]

    def share(rgb: tuple[int, int, int]) -> float:   # pixels of a single point (alpha 0.7 on white) of that colour
        return float((np.abs(img - (0.7 * np.array(rgb) / 255 + 0.3)).max(-1) < 0.08).mean())

    assert share((31, 119, 180)) > 1e-3 and share((255, 127, 14)) > 1e-3      # tab10 blue and orange
    assert share((23, 190, 207)) < 1e-4                                       # not the colour map's cyan end
