"""fit() against a bare PyTorch loop on the same model, data and precision.

Prints ms/step for both and fit's overhead in percent (target: <= 5%).
    .venv/bin/python benchmarks/loop_overhead.py [--steps 60]
"""
from __future__ import annotations

import argparse
import statistics
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


def bare_loop(data: TensorDataset, train: TrainConfig, bf16: bool) -> list[float]:
    """Per-step seconds of the plainest correct loop (same optimizer, clipping, autocast)."""
    seed_everything(0)
    model = Method()
    opt = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    loader = DataLoader(data, batch_size=train.batch_size, shuffle=True, drop_last=True)
    times, step = [], 0
    while step < train.steps:
        t0 = time.perf_counter()
        for batch in loader:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss, _ = model(batch)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            float(loss)  # fit() reads the loss every step too
            step += 1
            times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            if step == train.steps:
                break
    return times


def with_fit(data: TensorDataset, train: TrainConfig) -> list[float]:
    """Per-step seconds through fit(), read back from metrics.jsonl (log_every=1): data wait, step,
    NaN guard, schedule, logging and progress included."""
    seed_everything(0)
    model = Method()
    with tempfile.TemporaryDirectory() as tmp:
        run = Run.open(Path(tmp) / "run", domain="toy", recipe=BenchRecipe(domain="toy", method="bench", train=train))
        fit(model, data, train, run)
        return [train.batch_size / r["samples_per_s"] for r in run.metrics() if "samples_per_s" in r]


def interleaved(data: TensorDataset, train: TrainConfig, bf16: bool) -> tuple[float, float]:
    """Median step times (after 5 warm-up steps) of bare loop and fit(), run alternately twice
    (bare, fit, fit, bare) so drifts of a shared VM hit both sides alike."""
    bare, ours = [], []
    for first_bare in (True, False):
        runs = [("bare", lambda: bare_loop(data, train, bf16)), ("fit", lambda: with_fit(data, train))]
        for name, fn in (runs if first_bare else runs[::-1]):
            (bare if name == "bare" else ours).extend(fn()[5:])
    return statistics.median(bare), statistics.median(ours)


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
                            log_every=1, checkpoint_every=10**9)
        bare, ours = interleaved(data, train, bf16)
        rows.append([precision, f"{1000 * bare:.1f}", f"{1000 * ours:.1f}", f"{100 * (ours / bare - 1):+.1f}%"])
    print_table(f"fit() vs bare loop ({torch.get_num_threads()} threads, batch 32 × 64 tokens, d=192, 4 layers)",
                ["precision", "bare ms/step", "fit ms/step", "overhead"], rows)


if __name__ == "__main__":
    main()
