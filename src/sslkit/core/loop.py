"""`fit()`: the one training loop of sslkit.

Reads top to bottom: pick the device, wrap for DDP, build optimizer, restore the
checkpoint, then for each optimizer step: accumulate micro-batches under bf16
autocast, check for non-finite values, clip, step, schedule, EMA hook, log,
checkpoint, obey SIGTERM/SIGUSR1. Randomness is derived from (seed, epoch, item)
in data loading and from (seed, step, rank) in `forward`, so `--resume` lands on
the same weights as an uninterrupted run.
"""
from __future__ import annotations

import json
import math
import random
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from sslkit.core import distributed
from sslkit.core.checkpoint import check_compatible, load_checkpoint, save_checkpoint
from sslkit.core.errors import Interrupted, UserError
from sslkit.core.optim import build_optimizer
from sslkit.core.precision import decide as precision_choice
from sslkit.core.progress import Progress
from sslkit.core.recipes import TrainConfig
from sslkit.core.runs import Run
from sslkit.core.schedules import lr_at


@dataclass
class FitResult:
    step: int
    device: torch.device
    last_loss: float | None
    seconds: float


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix-style), stable across processes and runs."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) + 0x9E3779B97F4A7C15 + (x << 6) + (x >> 2))) & 0xFFFFFFFFFFFFFFFF
        x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    return x & 0x7FFFFFFFFFFFFFFF


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (call before building a method so all ranks start alike)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def use_bf16(precision: str, device: torch.device, domain: str | None = None, method: str | None = None) -> bool:
    """bf16 autocast for `train.precision` on `device`: `auto` is bf16 on CUDA with bf16, and on a CPU only for the
    (domain, method) pairs measured faster and equal in loss there (`sslkit.core.precision`)."""
    return precision_choice(precision, device, domain, method).bf16


class SeededItems(Dataset):
    """Wraps a dataset so item `i` of epoch `e` always sees the same random state."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        s = derive_seed(self.seed, self.epoch, index)
        random.seed(s)
        np.random.seed(s % 2**32)
        torch.default_generator.manual_seed(s)  # CPU generator only: 1 µs instead of 70 µs for torch.manual_seed
        return self.dataset[index]


class ShardedSampler(Sampler[int]):
    """DistributedSampler-style shuffled shard per rank that can start mid-epoch (for resume)."""

    def __init__(self, n: int, rank: int, world: int, seed: int, epoch: int, start: int = 0, shuffle: bool = True):
        self.n, self.rank, self.world, self.seed, self.epoch, self.start, self.shuffle = n, rank, world, seed, epoch, start, shuffle

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 7))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        per_rank = self.n // self.world
        return order[self.rank : per_rank * self.world : self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start :])

    def __len__(self) -> int:
        return self.n // self.world - self.start


def to_device(batch: Any, device: torch.device) -> Any:
    """Move tensors inside dicts/lists/tuples to `device` (non_blocking from pinned memory)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [to_device(v, device) for v in batch]
        return type(batch)(moved) if isinstance(batch, list) else tuple(moved)
    return batch


class _StopSignals:
    """SIGTERM/SIGUSR1/SIGINT set a flag; the loop checkpoints and exits at the next step boundary."""

    NAMES = ("SIGTERM", "SIGUSR1", "SIGINT")

    def __init__(self) -> None:
        self.received: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.NAMES:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _ignore_stop_signals(worker_id: int) -> None:  # noqa: ARG001
    """In a DataLoader worker: leave SIGTERM/SIGUSR1/SIGINT to the training process. `timeout`, Slurm and Ctrl-C signal
    the whole process group; a worker killed by one made the next batch fail ("DataLoader worker ... killed by signal")
    before the loop could checkpoint. The loop stops at the step boundary and shuts its workers down itself."""
    for name in _StopSignals.NAMES:
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)


def _any_rank(flag: bool, device: torch.device) -> bool:
    """True if `flag` is set on any rank (keeps every rank stopping at the same step)."""
    if not torch.distributed.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(t)
    return bool(t.item() > 0)


def _global_means(loss: float, metrics: dict[str, float], device: torch.device) -> tuple[float, dict[str, float]]:
    """The loss and metrics of the global batch: each rank holds its own part's mean, so average them over ranks
    (a loss gathered across ranks, such as VICReg's, is already the same everywhere and stays so). Every rank calls
    it at the same logged steps."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return loss, metrics
    t = torch.tensor([loss, *metrics.values()], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    t = (t / torch.distributed.get_world_size()).tolist()
    return t[0], dict(zip(metrics, t[1:]))


def _plan(train: TrainConfig, n_items: int, world: int, full_batch: bool = False) -> tuple[int, int, int]:
    """(micro batch per rank, accumulation steps, usable micro-batches per epoch per rank); a full-batch dataset is
    one item that every rank trains on at every step, whatever `train.batch_size` says."""
    if full_batch:
        if n_items != 1:
            raise ValueError(f"fit(full_batch=True) takes a dataset of one item (the whole data), not {n_items}")
        return 1, 1, 1
    micro = train.micro_batch_size or max(1, train.batch_size // world)
    if train.batch_size % (micro * world):
        raise UserError(f"train.batch_size={train.batch_size} is not a multiple of micro batch {micro} × {world} "
                        "process(es) — change train.batch_size or train.micro_batch_size")
    accum = train.batch_size // (micro * world)
    per_epoch = (n_items // world) // micro // accum * accum
    if per_epoch == 0:
        raise UserError(f"the data has {n_items} items, fewer than one global batch of {train.batch_size} — "
                        f"lower train.batch_size (e.g. --set train.batch_size={max(1, n_items // 2)}) or add data")
    return micro, accum, per_epoch


def fit(
    method: nn.Module,
    dataset: Dataset,
    train: TrainConfig,
    run: Run,
    *,
    collate_fn: Callable | None = None,
    resume: bool = False,
    until: int | None = None,
    shuffle: bool = True,
    full_batch: bool = False,
) -> FitResult:
    """Train `method` (forward(batch) -> (loss, metrics)) on `dataset` for `train.steps` optimizer steps.

    Optional on `method`: `after_step(step, total)` (EMA teachers, schedules), `encoder_spec()` (export),
    `param_groups()`, and `loss_terms` (names of metrics drawn under the loss in `plots/loss.png`).

    `until` stops early at that step after writing a checkpoint (time-boxed jobs, resume tests).

    `full_batch`: `dataset` holds one item that every process receives at every step — the whole data (a graph),
    or a step's batch drawn alike on every process from the item's seeded random state (graph node blocks); one
    step = one epoch, no sampler or loader workers, and `train.batch_size` / `micro_batch_size` / `lr_scale_batch`
    are not read. The batch is the item itself, or `collate_fn([item])`.
    """
    t_start = time.perf_counter()
    device = distributed.select_device(train.device)
    env = distributed.init_distributed(device)
    recipe = run.recipe_dict
    choice = precision_choice(train.precision, device, recipe.get("domain"), recipe.get("method"))
    bf16 = choice.bf16
    if not full_batch:   # full batch starts no workers
        distributed.share_cores(train.num_workers, device, env.world_size)
    try:
        micro, accum, per_epoch = _plan(train, len(dataset), env.world_size, full_batch)  # type: ignore[arg-type]
    except UserError:
        run.discard_if_empty()
        raise
    base_lr = train.lr * (train.batch_size / train.lr_scale_batch if train.lr_scale_batch and not full_batch else 1.0)
    if train.warmup_steps >= train.steps and train.lr > 0:
        from sslkit.core.console import warn

        warn(f"train.warmup_steps={train.warmup_steps} is not below train.steps={train.steps}: the learning rate never "
             f"reaches train.lr — scale --set train.warmup_steps=N down with train.steps")

    method.to(device)
    if train.sync_batchnorm and env.is_distributed:
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    core = method
    optimizer = build_optimizer(core, train, base_lr)
    step, epoch, batch_in_epoch = 0, 0, 0
    if resume:
        state = load_checkpoint(run.checkpoint_path, map_location=device)
        saved = run.recipe_dict
        check_compatible(state, domain=saved["domain"], method=saved["method"], model=core, path=run.checkpoint_path)
        core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        _truncate_metrics(run, step)
        run.confirm_resume()
    run.update_manifest(precision={"used": choice.precision, "why": choice.why})
    model: nn.Module = core
    if env.is_distributed:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(
            core, device_ids=ids, find_unused_parameters=getattr(core, "ddp_find_unused_parameters", False))
    forward = torch.compile(model) if train.compile else model

    def checkpoint() -> None:
        if distributed.is_main():
            save_checkpoint(run.checkpoint_path, {
                "domain": run.recipe_dict["domain"], "method": run.recipe_dict["method"],
                "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                "model": core.state_dict(), "optimizer": optimizer.state_dict(),
                "encoder_spec": json.dumps(core.encoder_spec()) if hasattr(core, "encoder_spec") else None})
        distributed.barrier()

    items = SeededItems(dataset, train.seed)
    samples_per_step = micro * accum * env.world_size
    progress = Progress(total=train.steps, start=step, enabled=distributed.is_main())
    writer = _tensorboard(run) if train.tensorboard and distributed.is_main() else None
    last_loss: float | None = None
    stop_at = min(train.steps, until) if until is not None else train.steps
    with _StopSignals() as signals, progress:
        while step < stop_at:
            items.epoch = epoch
            if full_batch:      # the one item, on every rank: no sampler, no workers started for one item per step
                it: Iterator[Any] = (collate_fn([items[0]]) if collate_fn is not None else items[0] for _ in range(1))
            else:
                sampler = ShardedSampler(len(items), env.rank, env.world_size, train.seed, epoch,
                                         batch_in_epoch * micro, shuffle)
                it = iter(DataLoader(items, batch_size=micro, sampler=sampler, drop_last=True, collate_fn=collate_fn,
                                     num_workers=train.num_workers, pin_memory=device.type == "cuda",
                                     persistent_workers=False, worker_init_fn=_ignore_stop_signals))
            while step < stop_at and batch_in_epoch < per_epoch:
                t0 = time.perf_counter()
                wait = 0.0
                loss_sum, metric_sums, bad = 0.0, {}, None
                for k in range(accum):
                    tw = time.perf_counter()
                    batch = to_device(next(it), device)
                    wait += time.perf_counter() - tw
                    torch.manual_seed(derive_seed(train.seed, step, k, env.rank, 11))
                    sync = model.no_sync() if env.is_distributed and k < accum - 1 else _nullcontext()
                    with sync:
                        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                            loss, metrics = forward(batch)
                        (loss / accum).backward()  # outside autocast, as PyTorch advises: ops keep their forward dtypes
                    value = float(loss.detach())
                    if not math.isfinite(value) and bad is None:
                        bad = f"loss became {value} at step {step + 1}"
                    loss_sum += value / accum
                    for name, v in metrics.items():
                        metric_sums[name] = metric_sums.get(name, 0.0) + float(v) / accum
                    batch_in_epoch += 1
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    [p for p in core.parameters() if p.grad is not None], train.clip_grad or float("inf"))
                if bad is None and not torch.isfinite(grad_norm):
                    bad = f"gradient norm became {float(grad_norm)} at step {step + 1}"
                if _any_rank(bad is not None, device):
                    run.log({"step": step + 1, "event": "non-finite", "detail": bad or "on another rank"})
                    if run.replacing:
                        kept = f"the run --overwrite was to replace is put back in {run.dir}, unchanged"
                    elif run.checkpoint_path.exists():
                        kept = f"the last good checkpoint ({run.checkpoint_path}) is kept"
                    else:
                        kept = "no checkpoint was written before it"
                    raise UserError(f"{bad or f'non-finite values on another rank at step {step + 1}'}; {kept} — "
                                    "lower train.lr, set train.clip_grad, use --set train.precision=fp32, or check the data for NaN/Inf")
                lr = lr_at(step, train, base_lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_mult", 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if hasattr(core, "after_step"):
                    core.after_step(step, train.steps)
                last_loss = loss_sum
                dt = time.perf_counter() - t0
                progress.update(step, loss_sum, samples_per_step / max(dt, 1e-9), wait / max(dt, 1e-9), lr)
                if step % train.log_every == 0 or step == train.steps:
                    loss_sum, metric_sums = _global_means(loss_sum, metric_sums, device)
                    record = {"step": step, "epoch": epoch, "loss": loss_sum, "lr": lr,
                              "samples_per_s": samples_per_step / max(dt, 1e-9), "data_wait": wait / max(dt, 1e-9),
                              "grad_norm": float(grad_norm), **metric_sums}
                    if device.type == "cuda":     # peak since the start, for `make gpu-check` and for sizing a run
                        record["gpu_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
                    run.log(record)
                    if writer is not None:
                        for name, v in record.items():
                            if name not in ("step", "epoch"):
                                writer.add_scalar(name, v, step)
                if step % train.checkpoint_every == 0 or step == stop_at:
                    checkpoint()
                if _any_rank(signals.received is not None, device):
                    if step % train.checkpoint_every and step != stop_at:
                        checkpoint()
                    raise Interrupted(f"stopped by {signals.received or 'a signal on another rank'} at step {step}; "
                                      f"checkpoint saved in {run.checkpoint_path} — continue with --resume")
            if batch_in_epoch >= per_epoch:
                epoch, batch_in_epoch = epoch + 1, 0
    if writer is not None:
        writer.close()
    if distributed.is_main():
        from sslkit.core.plots import loss_curve

        loss_curve(run.metrics(), run.path("plots", "loss.png"), title=f"{run.recipe_dict['domain']} / {run.recipe_dict['method']}",
                   terms=tuple(getattr(core, "loss_terms", ())))
    return FitResult(step=step, device=device, last_loss=last_loss, seconds=time.perf_counter() - t_start)


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _truncate_metrics(run: Run, step: int) -> None:
    """Drop metric lines logged after the checkpoint we resume from (they will be logged again)."""
    if not distributed.is_main():
        return
    kept = [r for r in run.metrics() if r.get("step", 0) <= step]
    from sslkit.core.files import atomic_write_text

    atomic_write_text(run.path("metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in kept))


def _tensorboard(run: Run) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("warning: train.tensorboard=true but tensorboard is not installed — pip install tensorboard", file=sys.stderr)
        return None
    return SummaryWriter(log_dir=str(run.path("tensorboard")))

