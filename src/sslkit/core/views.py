"""Datasets whose items are random views of a few inputs (crops of a volume, augmented copies of a frame).

A few inputs are a valid, small data set for such a method: it can draw as many views of each as a global batch
needs. `views_per_input` says how many (and says so once), `RepeatedViews` repeats a dataset's items that many
times. `fit()` seeds each item from (seed, epoch, index), so the copies of one input are different random views,
and the count depends only on the data and the recipe, so `--resume` and several processes see the same epoch.
"""
from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset


def views_per_input(n_inputs: int, views: int, batch_size: int, what: str = "views", per: str = "input",
                    setting: str | None = None) -> int:
    """`views` per input, raised to ceil(batch_size / n_inputs) when `n_inputs` × `views` items would not fill one
    global batch of `batch_size` (fit refuses an epoch shorter than a batch); the raise is said in one line,
    naming the recipe `setting` that chooses the count."""
    if n_inputs <= 0 or n_inputs * views >= batch_size:
        return views
    need = -(-batch_size // n_inputs)
    from sslkit.core.console import info

    plural = "" if n_inputs == 1 else "s"
    each = what[:-1] if views == 1 and what.endswith("s") else what        # "1 crop", "4 crops"
    hint = f" (--set {setting}=N to choose)" if setting else ""
    info(f"{n_inputs} {per}{plural} × {views} {each} each is fewer than one batch of {batch_size}: drawing {need} "
         f"{what} per {per}{hint}")
    return need


class RepeatedViews(Dataset):
    """Item i -> `dataset[i % len(dataset)]`, `times` × len(dataset) items: each input `times` times per epoch, each
    time another random view (fit seeds item i, not the input)."""

    def __init__(self, dataset: Dataset, times: int) -> None:
        self.dataset, self.times, self.n = dataset, max(1, times), len(dataset)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.n * self.times

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i % self.n]
