"""The encoded-row cache: preprocessed rows in memory-mapped .npy files, and the training dataset over them.

Rank 0 streams the table once through the fitted `Preprocessor` into `<run>/cache/`
({num,miss,cat}.npy); every rank then maps the same files, so a table larger than
RAM trains from the page cache and DDP ranks share one copy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch.utils.data import Dataset

from sslkit.domains.tabular.preprocess import Preprocessor

NAMES = ("num", "miss", "cat")


def write_cache(batches: Iterable[Any], pre: Preprocessor, folder: Path) -> Path:
    """Encode every batch into preallocated memmaps (n_rows known from fitting); rename when complete."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    n = pre.n_rows
    shapes = {"num": (n, len(pre.numeric)), "miss": (n, len(pre.numeric)), "cat": (n, len(pre.categorical))}
    dtypes = {"num": np.float32, "miss": np.uint8, "cat": np.int64}
    arrays = {k: np.lib.format.open_memmap(tmp / f"{k}.npy", mode="w+", dtype=dtypes[k], shape=shapes[k]) for k in NAMES}
    start = 0
    for batch in batches:
        parts = pre.encode(batch, row0=start)
        stop = start + batch.num_rows
        for k, part in zip(NAMES, parts):
            arrays[k][start:stop] = part
        start = stop
    if start != n:
        raise RuntimeError(f"the table changed while it was read ({start} rows now, {n} when fitted)")
    for arr in arrays.values():
        arr.flush()
    del arrays
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


class EncodedRows(Dataset):
    """Item i is just the row index; `collate` gathers a whole batch from the memmaps at once."""

    def __init__(self, folder: Path) -> None:
        self.arrays = {k: np.load(Path(folder) / f"{k}.npy", mmap_mode="r") for k in NAMES}

    def __len__(self) -> int:
        return len(self.arrays["num"])

    def __getitem__(self, index: int) -> int:
        return index

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = np.sort(np.asarray(indices))  # sorted reads are kinder to the page cache; order inside a batch is irrelevant
        return {k: torch.from_numpy(np.ascontiguousarray(a[idx])) for k, a in self.arrays.items()}
