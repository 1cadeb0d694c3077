"""torchrun/SLURM detection, device choice, process-group setup and the few collectives methods need."""
from __future__ import annotations

import atexit
import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sslkit.core.errors import UserError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _slurm_env() -> dict[str, str]:
    """Map SLURM's variables (srun, one task per GPU) onto torchrun's names."""
    env = {
        "RANK": os.environ["SLURM_PROCID"],
        "WORLD_SIZE": os.environ.get("SLURM_NTASKS", "1"),
        "LOCAL_RANK": os.environ.get("SLURM_LOCALID", "0"),
    }
    if "MASTER_ADDR" not in os.environ:
        nodes = os.environ.get("SLURM_JOB_NODELIST", os.environ.get("SLURM_NODELIST", "127.0.0.1"))
        # first host of "node[01-04],other" -> "node01"; use `scontrol show hostnames` in the sbatch script for odd lists
        first = nodes.split(",")[0]
        if "[" in first:
            base, rng = first.split("[", 1)
            first = base + rng.rstrip("]").split("-")[0].split(",")[0]
        env["MASTER_ADDR"] = first
    env.setdefault("MASTER_PORT", os.environ.get("MASTER_PORT", "29500"))
    return env


def dist_env() -> DistEnv:
    """Rank/world from torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or srun (SLURM_PROCID, ...)."""
    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        os.environ.update(_slurm_env())
    return DistEnv(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def _gpu_for(local_rank: int) -> int:
    """One GPU per process: NCCL cannot put two ranks on one device."""
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if per_node > torch.cuda.device_count():
        raise UserError(f"{per_node} processes on this node but {torch.cuda.device_count()} GPU(s) — use "
                        f"--devices {torch.cuda.device_count()} (one process per GPU) or --set train.device=cpu")
    return local_rank


def select_device(spec: str = "auto") -> torch.device:
    """`auto`: CUDA (this rank's GPU), else MPS, else CPU. An unavailable request is an error, not a fallback."""
    local_rank = dist_env().local_rank
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", _gpu_for(local_rank))
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"train.device={spec} is not a device name — use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"train.device={spec} but MPS (Apple GPU) is not available here — use --set train.device=auto "
                        "or cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"train.device={spec} is not supported — use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device={spec} but CUDA is not available here — use --set train.device=auto or cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", _gpu_for(local_rank))
    return device


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send what C++ code writes to file descriptor 1 to stderr for the duration."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def init_distributed(device: torch.device) -> DistEnv:
    """Start the process group once (NCCL on CUDA, gloo otherwise); no-op for one process."""
    env = dist_env()
    if env.is_distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        with _stdout_to_stderr():      # gloo prints "[Gloo] Rank 0 is connected to ..." on stdout, which pipelines read
            dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size,
                                    device_id=device if device.type == "cuda" else None)
        atexit.register(cleanup)
    return env


def share_cores(workers: int, device: torch.device, world: int) -> None:
    """On CPU with DataLoader workers, leave each worker a core: compute threads = cores per process − workers.

    A worker beside torch's default one thread per core oversubscribes the cores: on 2 cores pathology's dino-tiny
    fell from 40 to 6–10 tiles/s; with 1 worker + 1 compute thread the reading hides behind the step
    (docs/pathology.md, "Data wait"). Only ever lowers the thread count."""
    if workers <= 0 or device.type != "cpu":
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_process = max(1, cores // max(1, world))
    threads = max(1, per_process - workers)
    if torch.get_num_threads() > threads:
        torch.set_num_threads(threads)
        from sslkit.core.console import info

        info(f"{workers} data worker(s) on {per_process} core(s): {threads} compute thread(s)")


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: object) -> object:
    """Rank 0's value everywhere (e.g. a run folder name)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # noqa: ANN001
        out = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        stacked = torch.stack(grads)
        dist.all_reduce(stacked)
        return stacked[dist.get_rank()]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` (B, ...) from all ranks along dim 0, keeping gradients for the local part.

    Every rank then computes the loss over the global batch; with DDP's gradient
    averaging the result equals one process holding the whole batch.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    return torch.cat(_GatherWithGrad.apply(x), dim=0)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if not dist.is_initialized():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()


def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    if not dist.is_initialized():
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def finish(ok: bool) -> None:
    """End a command's process group while the interpreter is whole, every rank together.

    Without it, a rank that finishes first (rank 1, while rank 0 still exports the encoder) exits with gloo work
    objects still holding tensors; freeing them during interpreter finalization takes the GIL after it is gone and
    aborts the process (SIGABRT, seen as a flaky two-process test). So: on success every rank waits for the others
    (the barrier), drops what still refers to the group (the DDP wrapper and its reducer, via gc), then destroys the
    group. On failure no barrier: the others may be stuck or gone; the launcher stops them.
    """
    if not dist.is_initialized():
        return
    import gc

    if ok:
        dist.barrier()
    gc.collect()
    dist.destroy_process_group()
