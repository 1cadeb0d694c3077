"""bf16 must not change results: at a small scale, the bf16 loss curve of fit() stays within the seed-to-seed spread
of fp32 (same method, data and steps; seeds change the initialisation, masks and data order). Audio TERA, which
`train.precision: auto` trains in bf16 on CPUs with bf16 kernels, and tabular T-JEPA, which auto keeps in fp32 there
(too small to gain) but a recipe may set to bf16."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from sslkit.core import precision
from sslkit.core.loop import fit, seed_everything
from sslkit.core.recipes import load_recipe
from sslkit.core.runs import Run

STEPS, WINDOW = 36, 6


class TableRows(Dataset):
    """Rows whose 6 numeric and 3 categorical features share 2 latent factors (something to predict)."""

    def __init__(self, n: int = 512) -> None:
        g = torch.Generator().manual_seed(0)
        z = torch.randn(n, 2, generator=g)
        self.num = z @ torch.randn(2, 6, generator=g) + 0.1 * torch.randn(n, 6, generator=g)
        self.cat = torch.stack([(z[:, 0] > 0).long(), (z[:, 1] > 0).long() * 2 + (z[:, 0] > 1).long(),
                                torch.randint(0, 4, (n,), generator=g)], 1)

    def __len__(self) -> int:
        return len(self.num)

    def __getitem__(self, i: int) -> dict:
        return {"num": self.num[i], "miss": torch.zeros(6, dtype=torch.uint8), "cat": self.cat[i]}


class Clips(Dataset):
    """Log-mel-like clips: a few harmonic stripes moving in time, with noise; full length, per-clip mask seeds."""

    def __init__(self, n: int = 128, frames: int = 64, mels: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        t, f = torch.arange(frames)[:, None].float(), torch.arange(mels)[None, :].float()
        base = torch.rand(n, 1, 1, generator=g) * mels
        slope = torch.randn(n, 1, 1, generator=g) * 0.1
        self.x = torch.exp(-((f - base - slope * t) % 8) ** 2) + 0.1 * torch.randn(n, frames, mels, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"fbank": self.x[i], "valid": torch.ones(self.x.shape[1], dtype=torch.bool), "seed": torch.tensor(i)}


def _method_and_data(case: str):  # noqa: ANN202
    if case == "tabular-t-jepa":
        from sslkit.domains.tabular.method import RECIPE_SCHEMA, build_method

        recipe = load_recipe(RECIPE_SCHEMA, "tabular", "tiny", [f"train.steps={STEPS}"])
        return recipe, (lambda: build_method(recipe, 6, [2, 4, 4])), TableRows()
    pytest.importorskip("sslkit.domains.audio.model")
    from sslkit.domains.audio.method import RECIPE_SCHEMA, build_method

    recipe = load_recipe(RECIPE_SCHEMA, "audio", "tiny", ["method=tera", f"train.steps={STEPS}", "train.batch_size=16",
                                                          "model.dropout=0.0"])
    return recipe, (lambda: build_method(recipe, 0.0, 1.0)), Clips()


def _curve(tmp: Path, case: str, precision_setting: str, seed: int) -> torch.Tensor:
    recipe, build, data = _method_and_data(case)
    train = recipe.train.model_copy(update={"precision": precision_setting, "seed": seed, "log_every": 1,
                                            "checkpoint_every": 10**6, "device": "cpu"})
    recipe = recipe.model_copy(update={"train": train})
    run = Run.open(tmp / f"{precision_setting}-{seed}", domain=recipe.domain, recipe=recipe, overwrite=True)
    seed_everything(seed)
    fit(build(), data, train, run)
    return torch.tensor([r["loss"] for r in run.metrics() if "loss" in r])


@pytest.mark.parametrize("case", ["tabular-t-jepa", "audio-tera"])
def test_bf16_loss_curve_stays_within_the_fp32_seed_spread(case: str, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(precision, "bf16_supported", lambda device: True)   # emulated where the CPU lacks bf16
    fp32 = torch.stack([_curve(tmp_path, case, "fp32", s) for s in (0, 1, 2)])
    bf16 = _curve(tmp_path, case, "bf16", 0)
    assert fp32.shape == (3, STEPS) and bf16.shape == (STEPS,) and torch.isfinite(bf16).all()
    assert fp32[0, -WINDOW:].mean() < fp32[0, :WINDOW].mean()                 # the method learns something here
    win = lambda c: c.unfold(-1, WINDOW, WINDOW).mean(-1)                       # noqa: E731  (window means)
    spread = (win(fp32).max(0).values - win(fp32).min(0).values).mean()        # seed-to-seed, mean over windows
    deviation = (win(bf16) - win(fp32[0])).abs().mean()                          # bf16 vs fp32, same seed
    assert deviation <= spread, f"bf16 drifts {float(deviation):.4f} from fp32, seeds spread {float(spread):.4f}"
