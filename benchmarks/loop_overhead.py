"""fit() against a bare PyTorch loop on the same model, data and precision.

Prints ms/step for both and fit's overhead in percent (target: <= 5%).
    .venv/bin/python benchmarks/loop_overhead.py [--steps 60]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sslkit.core.console import print_table
from sslkit.core.loop import fit, seed_everything, use_bf16
from sslkit.core.recipes import Recipe, TrainConfig
from sslkit.core.runs import Run


class Method(nn.Module):
    """A 4-layer transformer encoder over 64 tokens with a masked-token reconstruction loss."""

    def __init__(self, d: int = 192) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d, 3, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
        self.head = nn.Linear(d, d)

    def forward(self, batch):  # noqa: ANN001, ANN201
        (x,) = batch
        mask = torch.rand(x.shape[:2], device=x.device) < 0.5
        pred = self.head(self.encoder(x.masked_fill(mask[..., None], 0.0)))
        return ((pred - x) ** 2)[mask].mean(), {}


class BenchRecipe(Recipe):
    pass


def bare_loop(data: TensorDataset, train: TrainConfig, bf16: bool) -> float:
    """Seconds for `train.steps` steps of the plainest correct loop (same optimizer, clipping, autocast)."""
    seed_everything(0)
    model = Method()
    opt = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    loader = DataLoader(data, batch_size=train.batch_size, shuffle=True, drop_last=True)
    t0, step = time.perf_counter(), 0
    while step < train.steps:
        for batch in loader:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss, _ = model(batch)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step == train.steps:
                break
    return time.perf_counter() - t0


def with_fit(data: TensorDataset, train: TrainConfig) -> float:
    """Seconds for the same steps through fit() (run folder, metrics, checkpoint at the end, plot)."""
    seed_everything(0)
    model = Method()
    with tempfile.TemporaryDirectory() as tmp:
        run = Run.open(Path(tmp) / "run", domain="toy", recipe=BenchRecipe(domain="toy", method="bench", train=train))
        t0 = time.perf_counter()
        fit(model, data, train, run)
        return time.perf_counter() - t0


def per_step(fn, data: TensorDataset, train: TrainConfig, *args) -> float:  # noqa: ANN001
    """Marginal seconds per step: (min t(S) - min t(10)) / (S - 10) over 2 tries, so set-up costs cancel
    and load spikes from other processes are filtered out by the minimum."""
    short = train.model_copy(update={"steps": 10})
    long_t = min(fn(data, train, *args) for _ in range(2))
    short_t = min(fn(data, short, *args) for _ in range(2))
    return (long_t - short_t) / (train.steps - 10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    data = TensorDataset(torch.randn(4096, 64, 192))
    rows = []
    for precision in ("fp32", "bf16"):
        bf16 = use_bf16(precision if precision == "fp32" else "auto", torch.device("cpu"))
        if precision == "bf16" and not bf16:
            continue
        train = TrainConfig(steps=args.steps, batch_size=32, lr=1e-3, precision=precision, clip_grad=1.0,
                            log_every=10, checkpoint_every=10**9)
        bare = per_step(bare_loop, data, train, bf16)
        ours = per_step(with_fit, data, train)
        rows.append([precision, f"{1000 * bare:.1f}", f"{1000 * ours:.1f}", f"{100 * (ours / bare - 1):+.1f}%"])
    print_table(f"fit() vs bare loop ({torch.get_num_threads()} threads, batch 32 × 64 tokens, d=192, 4 layers)",
                ["precision", "bare ms/step", "fit ms/step", "overhead"], rows)


if __name__ == "__main__":
    main()
