"""fit(..., full_batch=True): a dataset of one item (the whole data) trains without a batch-size trick, every
step sees that item whole, and resume stays exact."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from sslkit.core.loop import fit, seed_everything
from sslkit.core.recipes import Recipe, TrainConfig
from sslkit.core.runs import Run

X = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))


class WholeData(Dataset):
    """One item: all 50 rows as one dict (as a whole graph is one batch)."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": X}


class Denoiser(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder, self.head = nn.Linear(8, 4), nn.Linear(4, 8)
        self.seen: list[tuple[int, ...]] = []

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        x = batch["x"]
        self.seen.append(tuple(x.shape))
        return ((self.head(self.encoder(x + 0.1 * torch.randn_like(x))) - x) ** 2).mean(), {}


class ToyRecipe(Recipe):
    pass


def _train(out: Path, *, resume: bool = False, until: int | None = None, **train_kw) -> tuple[Denoiser, object]:  # noqa: ANN003
    # batch_size 64 is more than the one item: a full-batch fit does not read it (without full_batch fit refuses)
    t = TrainConfig(**{"steps": 12, "batch_size": 64, "log_every": 4, "checkpoint_every": 5, "precision": "fp32",
                       "lr": 1e-2, **train_kw})
    run = Run.open(out, domain="toy", recipe=ToyRecipe(domain="toy", method="denoise", train=t), overwrite=not resume,
                   resume=resume)
    seed_everything(0)
    m = Denoiser()
    return m, fit(m, WholeData(), t, run, resume=resume, until=until, full_batch=True)


def test_full_batch_trains_on_the_whole_item_each_step_whatever_batch_size_says(tmp_path: Path) -> None:
    m, res = _train(tmp_path / "a")
    assert res.step == 12 and m.seen == [(50, 8)] * 12          # one forward per step, on all 50 rows, no batch dim
    epochs = [r["epoch"] for r in Run(tmp_path / "a").metrics()]
    assert epochs == [3, 7, 11]                                   # one step = one epoch


def test_full_batch_resume_is_exact(tmp_path: Path) -> None:
    full, _ = _train(tmp_path / "full")
    _train(tmp_path / "split", until=5)
    resumed, res = _train(tmp_path / "split", resume=True)
    assert res.step == 12 and len(resumed.seen) == 7
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), resumed.state_dict().values()))


def test_full_batch_needs_a_dataset_of_one_item(tmp_path: Path) -> None:
    t = TrainConfig(steps=2, batch_size=1, precision="fp32")
    run = Run.open(tmp_path / "r", domain="toy", recipe=ToyRecipe(domain="toy", method="denoise", train=t))
    with pytest.raises(ValueError, match="one item"):
        fit(Denoiser(), torch.utils.data.TensorDataset(X), t, run, full_batch=True)
