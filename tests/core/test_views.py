"""core.views: a few inputs whose items are random views fill a global batch with more views of each."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from sslkit.core.errors import UserError
from sslkit.core.loop import SeededItems, fit, seed_everything
from sslkit.core.recipes import Recipe, TrainConfig
from sslkit.core.runs import Run
from sslkit.core.views import RepeatedViews, views_per_input


class Jittered(Dataset):
    """3 inputs; each item is the input plus noise drawn in __getitem__ (a random view)."""

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.full((4,), float(i)) + 0.01 * torch.randn(4)


class Mean(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(4, 1)

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return self.encoder(batch).pow(2).mean(), {}


class ToyRecipe(Recipe):
    pass


def test_views_per_input_raises_the_count_only_when_a_batch_is_not_filled(capsys: pytest.CaptureFixture) -> None:
    assert views_per_input(3, 4, 12) == 4 and capsys.readouterr().err == ""
    assert views_per_input(2, 1, 5, "random views", "frame") == 3
    assert " ".join(capsys.readouterr().err.split()) == ("2 frames × 1 random view each is fewer than one batch of 5: "
                                                        "drawing 3 random views per frame")
    assert views_per_input(3, 4, 64, "crops", "volume", "data.samples_per_volume") == 22
    said = " ".join(capsys.readouterr().err.split())
    assert said == ("3 volumes × 4 crops each is fewer than one batch of 64: drawing 22 crops per volume "
                    "(--set data.samples_per_volume=N to choose)")


def test_repeated_views_are_other_views_and_let_fit_train_on_three_inputs(tmp_path: Path) -> None:
    items = SeededItems(RepeatedViews(Jittered(), views_per_input(3, 1, 8)), seed=0)
    assert len(items) == 9
    assert items[0][0].round() == items[3][0].round() == 0 and not torch.equal(items[0], items[3])
    t = TrainConfig(steps=3, batch_size=8, precision="fp32", log_every=1, checkpoint_every=3)
    run = Run.open(tmp_path / "few", domain="toy", recipe=ToyRecipe(domain="toy", method="m", train=t))
    with pytest.raises(UserError, match="fewer than one global batch of 8"):     # the three inputs alone
        fit(Mean(), Jittered(), t, run)
    run = Run.open(tmp_path / "views", domain="toy", recipe=ToyRecipe(domain="toy", method="m", train=t))
    seed_everything(0)
    assert fit(Mean(), RepeatedViews(Jittered(), views_per_input(3, 1, 8)), t, run).step == 3
