"""Scaling of the audio encoders with sequence length: SSAMBA (bidirectional Mamba, PyTorch chunked scan) vs SSAST
(ViT) with materialised attention (softmax(QKᵀ)V, as the SSAST code) and with PyTorch's fused attention.

One training step (forward + backward of the encoder on one clip, loss = mean of squared tokens) at width 192,
depth 2 (a per-layer comparison: a depth-24 step at 22k tokens takes minutes on a CPU), 128 mel bins, 16×16 patches
(8 patches per time step), at 512, 2k, 8k and 22k tokens, batch 1, fp32 (--bf16: under bf16 autocast).

Peak memory, CPU: every configuration is measured in two fresh processes, one for time and one for memory. The
memory one, after building the model and its input and one small warm-up step, records its peak resident set
(getrusage ru_maxrss), runs one step, and reports the growth of that peak: the activations, gradients and workspace
of a step, which is what grows with length. It runs with MALLOC_MMAP_THRESHOLD_=1 MiB so that every tensor over
1 MiB is its own mapping, given back to the OS when freed: otherwise glibc raises the threshold after the first
large free and keeps freed tensors in its heap, and the resident peak counts allocator reuse patterns (how much
free memory happened to be fragmented) rather than live tensors. The timed process keeps the default allocator
(page faults of fresh mappings would tax the arm that allocates more). tracemalloc cannot see torch's C++
allocations and the current RSS after a step would miss the peak inside backward, hence ru_maxrss.
CUDA: torch.cuda.max_memory_allocated above the memory held before the step, in the timed process.

A configuration whose estimated memory exceeds 80 % of the free RAM (materialised attention at 22k tokens needs
3 heads × N² × 4 B per saved attention matrix and several of them per layer) is not run; its entry says so, with
the estimate. Results go to benchmarks/results/audio_scaling.json as each configuration finishes (a rerun skips the
ones done; --fresh starts over) and a log-log plot beside it (audio_scaling_<threads>t[_bf16].json / .png).

    flock /tmp/sslkit-heavy.lock .venv/bin/python benchmarks/audio_scaling.py [--tokens 512 2048 8192 22016]
        [--device cpu|cuda|all] [--threads 2] [--bf16] [--fresh]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ARMS = ("ssamba", "ssast-materialised", "ssast-sdpa")
N_MELS, PATCH, DIM, DEPTH = 128, 16, 192, 2


def build(arm: str, tokens: int):  # noqa: ANN201
    import torch

    from sslkit.domains.audio.model import AudioEncoder

    frames = tokens // (N_MELS // PATCH) * PATCH
    arch = "ssamba" if arm == "ssamba" else "ssast"
    enc = AudioEncoder(arch, n_mels=N_MELS, clip_frames=1024, dim=DIM, depth=DEPTH, heads=3,
                       patch_freq=PATCH, patch_time=PATCH, cls_tokens=1 if arch == "ssamba" else 2,
                       attention="materialised" if arm == "ssast-materialised" else "sdpa")
    torch.manual_seed(0)
    return enc, torch.randn(1, frames, N_MELS)


def one(arm: str, tokens: int, device: str, bf16: bool, reps: int) -> dict:
    """Runs in a child process: time and peak memory of `reps` steps after a warm-up."""
    import resource

    import torch

    enc, x = build(arm, tokens)
    enc, x = enc.to(device), x.to(device)

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = enc.tokens(x).float().pow(2).mean()
        loss.backward()
        enc.zero_grad(set_to_none=True)

    warm, _ = build(arm, 64)                       # small warm-up (below every measured size): allocator, threads
    warm = warm.to(device)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        warm.tokens(torch.randn(1, 128, N_MELS, device=device)).float().mean().backward()
    del warm
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) - base
    # the first timed step also warms the kernels for this length: report the best of the others when there are any
    best = min(times[1:]) if len(times) > 1 else times[0]
    return {"arm": arm, "tokens": tokens, "device": device, "bf16": bf16, "seconds": best, "all_seconds": times,
            "peak_mb": peak / 2**20, "threads": torch.get_num_threads()}


def estimate_bytes(arm: str, tokens: int) -> float:
    """Rough peak of a step: materialised attention keeps ~3 N×N matrices per head and layer, the rest is linear."""
    linear = tokens * DIM * 4 * 60 * DEPTH
    if arm == "ssast-materialised":
        return linear + 3 * 3 * tokens**2 * 4 * DEPTH
    return linear


def run_child(arm: str, tokens: int, device: str, bf16: bool, timeout: float, threads: int) -> dict:
    """Time in one process, CPU memory in another (see the module docstring)."""
    result: dict = {}
    for mode in ("time", "memory") if device == "cpu" else ("time",):
        reps = (4 if tokens <= 2048 else 2) if mode == "time" else 1
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        if mode == "memory":
            env["MALLOC_MMAP_THRESHOLD_"] = str(2**20)
        cmd = [sys.executable, __file__, "--child", arm, str(tokens), device, "1" if bf16 else "0", str(reps)]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return {"arm": arm, "tokens": tokens, "device": device, "skipped": f"{mode}: over {timeout:.0f} s"}
        if out.returncode != 0:
            tail = (out.stderr.strip().splitlines() or ["?"])[-1]
            return {"arm": arm, "tokens": tokens, "device": device, "skipped": f"{mode} failed ({out.returncode}): {tail}"}
        got = json.loads(out.stdout.strip().splitlines()[-1])
        if mode == "time":
            result = got
        else:
            result["peak_mb"], result["peak_mb_default_malloc"] = got["peak_mb"], result["peak_mb"]
    return result


def slope(results: dict, arm: str, device: str, field: str, lo: int, hi: int) -> float | None:
    a, b = results.get(key(device, arm, lo)), results.get(key(device, arm, hi))
    if not a or not b or field not in a or field not in b or a[field] <= 0 or b[field] <= 0:
        return None
    return math.log(b[field] / a[field]) / math.log(hi / lo)


def key(device: str, arm: str, tokens: int) -> str:
    return f"{device}|{arm}|{tokens}"


def table(results: dict, device: str, tokens: list[int]) -> None:
    print(f"\n{device}: training step (forward + backward), width {DIM}, depth {DEPTH}, batch 1", file=sys.stderr)
    head = f"{'tokens':>7} | " + " | ".join(f"{a:>26}" for a in ARMS) + " | ssast÷ssamba time (mat, sdpa) | memory"
    print(head, file=sys.stderr)
    for n in tokens:
        cells, base = [], results.get(key(device, "ssamba", n), {})
        ratios_t, ratios_m = [], []
        for arm in ARMS:
            r = results.get(key(device, arm, n), {})
            if "seconds" in r:
                cells.append(f"{r['seconds']:8.3f} s {r['peak_mb']:9.1f} MB")
                if arm != "ssamba" and "seconds" in base:
                    ratios_t.append(f"{r['seconds'] / base['seconds']:.2f}×")
                    ratios_m.append(f"{r['peak_mb'] / max(base['peak_mb'], 1e-9):.2f}×")
            else:
                cells.append(f"{('— ' + r.get('skipped', 'not run'))[:26]:>26}")
                if arm != "ssamba":
                    ratios_t.append("—")
                    ratios_m.append("—")
        print(f"{n:>7} | " + " | ".join(cells) + f" | {', '.join(ratios_t):>29} | {', '.join(ratios_m)}",
              file=sys.stderr)
    for field in ("seconds", "peak_mb"):
        s = slope(results, "ssamba", device, field, 2048, tokens[-1])
        if s is not None:
            print(f"ssamba log-log slope of {field} between 2048 and {tokens[-1]} tokens: {s:.3f}", file=sys.stderr)


def plot(results: dict, devices: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for device in devices:
        for arm in ARMS:
            pts = sorted((r["tokens"], r) for k, r in results.items() if k.startswith(f"{device}|{arm}|") and "seconds" in r)
            if not pts:
                continue
            xs = [n for n, _ in pts]
            style = "-o" if device == "cpu" else "--s"
            axes[0].plot(xs, [r["seconds"] for _, r in pts], style, label=f"{arm} ({device})")
            axes[1].plot(xs, [r["peak_mb"] for _, r in pts], style, label=f"{arm} ({device})")
    for ax, name in zip(axes, ("step time (s)", "peak step memory (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens")
        ax.set_ylabel(name)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"audio encoders, width {DIM}, depth {DEPTH}, batch 1: training step")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        arm, tokens, device, bf16, reps = sys.argv[2:7]
        print(json.dumps(one(arm, int(tokens), device, bf16 == "1", int(reps))))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[512, 2048, 8192, 22016])
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    p.add_argument("--bf16", action="store_true", help="steps under bf16 autocast (the scan stays fp32)")
    p.add_argument("--fresh", action="store_true", help="forget earlier results")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per configuration")
    p.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads in every measured process")
    p.add_argument("--out", type=Path, default=RESULTS / "audio_scaling.json")
    a = p.parse_args()
    import psutil
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if a.device != "all":
        devices = [a.device]
    out = a.out.with_name(a.out.stem + f"_{a.threads}t" + ("_bf16" if a.bf16 else "") + ".json")
    results = {} if a.fresh or not out.is_file() else json.loads(out.read_text())
    for device in devices:
        for n in a.tokens:
            for arm in ARMS:
                k = key(device, arm, n)
                if k in results and "seconds" in results[k]:
                    continue
                need = estimate_bytes(arm, n)
                free = (torch.cuda.mem_get_info()[0] if device == "cuda" else psutil.virtual_memory().available)
                if need > 0.8 * free:
                    results[k] = {"arm": arm, "tokens": n, "device": device, "estimate_mb": need / 2**20,
                                  "skipped": f"needs ~{need / 2**30:.0f} GB, {free / 2**30:.0f} GB free"}
                else:
                    t = time.perf_counter()
                    results[k] = run_child(arm, n, device, a.bf16, a.timeout, a.threads)
                    print(f"{k}: {results[k].get('seconds', results[k].get('skipped'))} "
                          f"({time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(results, indent=1))
    for device in devices:
        table(results, device, a.tokens)
    plot(results, devices, out.with_suffix(".png"))
    print(str(out))


if __name__ == "__main__":
    main()
