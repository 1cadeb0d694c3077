"""Scaling of the audio encoders with sequence length: SSAMBA (bidirectional Mamba, chunked scan) vs SSAST (ViT) with
materialised attention (softmax(QKᵀ)V, as the SSAST code) and with PyTorch's fused attention.

Arms: `ssamba` (the scan as a user gets it: the compiled C kernel of `audio/scan_kernel.py` on a CPU when it builds),
`ssamba-pytorch` (the plain PyTorch scan, SSLKIT_SCAN_KERNEL=0: the fallback), `ssast-materialised`, `ssast-sdpa`
and `ssast-sdpa-compiled` (fused attention with the whole encoder under torch.compile, inductor's C++ code: SSAMBA's
scan runs compiled code, so SSAST gets compiled code too; its first step, which compiles, is reported apart as
`first_seconds`, and its memory is not measured: the compile's own peak would be in the process's ru_maxrss).

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

Memory guard (the machine is shared): before each configuration its peak is estimated — from the formula in
`estimate_bytes` or, when a smaller size of the same arm was measured, from that measurement scaled by (N/N₀)² for
materialised attention and N/N₀ otherwise, whichever is larger. A configuration whose estimate exceeds --max-gb
(default 10) or 80 % of the free RAM is not run: its entry says "needs ~N GB (estimated), not run here". Every child
also runs under a cap: a watchdog kills it when its resident set passes --max-gb (and RLIMIT_AS is set a few GB
above, as a backstop), so a wrong estimate cannot take the machine's memory. Materialised attention at 22k tokens
(3 heads × 22k² × 4 B ≈ 5.8 GB per attention matrix, several kept per layer for backward) is over the cap on a
24 GB machine: the 22k comparison against it is judged on the estimate, and on the measured 8k point. Results go to benchmarks/results/audio_scaling.json as each configuration finishes (a rerun skips the
ones done; --fresh starts over) and a log-log plot beside it (audio_scaling_<threads>t[_bf16].json / .png).

    flock /tmp/sslkit-heavy.lock .venv/bin/python benchmarks/audio_scaling.py [--tokens 512 2048 8192 22016]
        [--device cpu|cuda|all] [--threads 2] [--bf16] [--fresh] [--arms ssamba ssast-sdpa ...] [--out PATH]
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
ARMS = ("ssamba", "ssamba-pytorch", "ssast-materialised", "ssast-sdpa", "ssast-sdpa-compiled")
SSAST = ("ssast-materialised", "ssast-sdpa", "ssast-sdpa-compiled")
N_MELS, PATCH, DIM, DEPTH = 128, 16, 192, 2


def build(arm: str, tokens: int):  # noqa: ANN201
    import torch

    from sslkit.domains.audio.model import AudioEncoder

    frames = tokens // (N_MELS // PATCH) * PATCH
    arch = "ssamba" if arm.startswith("ssamba") else "ssast"
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
    tokens_fn = torch.compile(enc.tokens, dynamic=False) if arm.endswith("-compiled") else enc.tokens
    scan = None
    if arm.startswith("ssamba"):
        from sslkit.domains.audio import scan_kernel

        lib = scan_kernel.load() if device == "cpu" else None
        scan = "C kernel" if lib is not None else f"PyTorch ({getattr(scan_kernel.load, 'reason', device)})"

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = tokens_fn(x).float().pow(2).mean()
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
            "first_seconds": times[0], "peak_mb": peak / 2**20, "threads": torch.get_num_threads(), "scan": scan}


def estimate_bytes(arm: str, tokens: int) -> float:
    """Rough peak of a step: materialised attention keeps ~3 N×N matrices per head and layer, the rest is linear."""
    linear = tokens * DIM * 4 * 60 * DEPTH
    if arm == "ssast-materialised":
        return linear + 3 * 3 * tokens**2 * 4 * DEPTH
    return linear


def estimate(results: dict, device: str, arm: str, tokens: int) -> tuple[float, float | None]:
    """Bytes a step is expected to need: (the larger of the formula and the extrapolation, the extrapolation of the
    largest measured smaller size of the arm — N² for materialised attention, N otherwise — or None)."""
    need, scaled = estimate_bytes(arm, tokens), None
    power = 2 if arm == "ssast-materialised" else 1
    done = [r for r in results.values() if r.get("arm") == arm and r.get("device") == device
            and r.get("peak_mb") is not None and "seconds" in r and r["tokens"] < tokens]
    if done:
        r = max(done, key=lambda r: r["tokens"])
        scaled = r["peak_mb"] * 2**20 * (tokens / r["tokens"]) ** power
    return max(need, scaled or 0.0), scaled


def capped(cmd: list[str], env: dict, timeout: float, max_bytes: float) -> tuple[int, str, str]:
    """Run `cmd`, killing it if its resident set passes `max_bytes` (polled every 50 ms); RLIMIT_AS backstop."""
    import resource

    import psutil

    def limit() -> None:
        cap = int(max_bytes + 6 * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=limit if sys.platform.startswith("linux") else None)
    watch, start, peak = psutil.Process(proc.pid), time.perf_counter(), 0
    while proc.poll() is None:
        try:
            peak = max(peak, watch.memory_info().rss)
        except psutil.Error:
            break
        if peak > max_bytes:
            proc.kill()
            proc.communicate()
            return -9, "", f"killed: resident set passed the {max_bytes / 2**30:.0f} GB cap"
        if time.perf_counter() - start > timeout:
            proc.kill()
            proc.communicate()
            raise subprocess.TimeoutExpired(cmd, timeout)
        time.sleep(0.05)
    out, err = proc.communicate()
    return proc.returncode, out, err


def run_child(arm: str, tokens: int, device: str, bf16: bool, timeout: float, threads: int,
              max_bytes: float = 10 * 2**30) -> dict:
    """Time in one process, CPU memory in another (see the module docstring), each under the memory cap."""
    result: dict = {}
    compiled = arm.endswith("-compiled")
    for mode in ("time", "memory") if device == "cpu" and not compiled else ("time",):
        reps = (4 if tokens <= 2048 else 2) if mode == "time" else 1
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        if arm == "ssamba-pytorch":
            env["SSLKIT_SCAN_KERNEL"] = "0"
        if mode == "memory":
            env["MALLOC_MMAP_THRESHOLD_"] = str(2**20)
        cmd = [sys.executable, __file__, "--child", arm, str(tokens), device, "1" if bf16 else "0", str(reps)]
        try:
            code, stdout, stderr = capped(cmd, env, timeout, max_bytes)
        except subprocess.TimeoutExpired:
            return {"arm": arm, "tokens": tokens, "device": device, "skipped": f"{mode}: over {timeout:.0f} s"}
        if code != 0:
            tail = (stderr.strip().splitlines() or ["?"])[-1]
            return {"arm": arm, "tokens": tokens, "device": device, "skipped": f"{mode} failed ({code}): {tail}"}
        got = json.loads(stdout.strip().splitlines()[-1])
        if mode == "time":
            result = got
            if compiled:
                result["peak_mb"] = None    # not measured: the compile's own memory would be counted
        else:
            result["peak_mb"], result["peak_mb_default_malloc"] = got["peak_mb"], result["peak_mb"]
    return result


def slope(results: dict, arm: str, device: str, field: str, lo: int, hi: int) -> float | None:
    a, b = results.get(key(device, arm, lo)), results.get(key(device, arm, hi))
    if not a or not b or a.get(field) is None or b.get(field) is None or a[field] <= 0 or b[field] <= 0:
        return None
    return math.log(b[field] / a[field]) / math.log(hi / lo)


def key(device: str, arm: str, tokens: int) -> str:
    return f"{device}|{arm}|{tokens}"


def _mb(r: dict) -> str:
    return "not measured" if r.get("peak_mb") is None else f"{r['peak_mb']:.1f} MB"


def table(results: dict, device: str, tokens: list[int], arms: tuple[str, ...] = ARMS) -> None:
    """One line per size and arm: time, memory, and the ratio to ssamba (time: arm ÷ ssamba, so > 1 means ssamba
    is faster; memory likewise)."""
    print(f"\n{device}: training step (forward + backward), width {DIM}, depth {DEPTH}, batch 1", file=sys.stderr)
    print(f"{'tokens':>7} | {'arm':<20} | {'time':>9} | {'memory':>12} | ÷ ssamba (time, memory)", file=sys.stderr)
    for n in tokens:
        base = results.get(key(device, "ssamba", n), {})
        for arm in arms:
            r = results.get(key(device, arm, n), {})
            if "seconds" in r:
                ratio = ""
                if arm != "ssamba" and "seconds" in base:
                    mem = ("—" if r.get("peak_mb") is None or not base.get("peak_mb")
                           else f"{r['peak_mb'] / base['peak_mb']:.2f}×")
                    ratio = f"{r['seconds'] / base['seconds']:.2f}×, {mem}"
                cell = f"{r['seconds']:8.3f}s | {_mb(r):>12}"
                if arm.endswith("-compiled"):
                    ratio += f"  (first step, compiling: {r.get('first_seconds', float('nan')):.1f} s)"
            elif "estimate_mb" in r:
                cell, ratio = f"{'—':>9} | {'~%.0f GB est.' % (r['estimate_mb'] / 1024):>12}", "not run"
            else:
                cell, ratio = f"{'—':>9} | {'—':>12}", r.get("skipped", "not run")
            print(f"{n:>7} | {arm:<20} | {cell} | {ratio}", file=sys.stderr)
    for line in verdict(results, device, tokens[-1], arms):
        print(line, file=sys.stderr)


def verdict(results: dict, device: str, top: int, arms: tuple[str, ...] = ARMS) -> list[str]:
    """The issue's scaling target, checked on this run's entries (an estimate where a size was not run)."""
    out = []
    for field in ("seconds", "peak_mb"):
        s = slope(results, "ssamba", device, field, 2048, top)
        if s is not None:
            out.append(f"ssamba log-log slope of {field} between 2048 and {top} tokens: {s:.3f} "
                       f"({'≤' if s <= 1.15 else '>'} 1.15)")
    base = results.get(key(device, "ssamba", top), {})
    if "seconds" not in base:
        return out
    timed = []
    for arm in arms[1:]:
        r = results.get(key(device, arm, top), {})
        if "seconds" in r:
            mem = ("not measured" if r.get("peak_mb") is None
                   else f"{r['peak_mb'] / max(base['peak_mb'], 1e-9):.2f}× (measured)")
            out.append(f"at {top} tokens {arm} / ssamba: time {r['seconds'] / base['seconds']:.2f}×, memory {mem}")
            if arm in SSAST:
                timed.append((r["seconds"], arm))
        elif "estimate_mb" in r:
            out.append(f"at {top} tokens {arm}: not run (needs ~{r['estimate_mb'] / 1024:.0f} GB, extrapolated from "
                       f"the largest measured size; formula {r.get('formula_mb', 0) / 1024:.0f} GB) — memory "
                       f"≈ {r['estimate_mb'] / max(base['peak_mb'], 1e-9):.0f}× ssamba's by that estimate; its time is "
                       "judged at the largest size it ran (materialised attention does the fused arm's work and more)")
    if timed:
        fastest, arm = min(timed)
        ratio = fastest / base["seconds"]
        out.append(f"at {top} tokens the fastest ssast arm is {arm}: ssamba is {ratio:.2f}× faster "
                   f"({'≥' if ratio >= 3 else '<'} 3×); ssamba's scan: {base.get('scan')}")
    return out


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
            mem = [(n, r["peak_mb"]) for n, r in pts if r.get("peak_mb") is not None]
            if not mem:
                continue
            lines = axes[1].plot([n for n, _ in mem], [m for _, m in mem], style, label=f"{arm} ({device})")
            est = sorted((r["tokens"], r["estimate_mb"]) for k, r in results.items()
                         if k.startswith(f"{device}|{arm}|") and "estimate_mb" in r)
            if est:     # sizes not run: the estimate, hollow, joined to the last measured point by a dotted line
                axes[1].plot([mem[-1][0]] + [n for n, _ in est], [mem[-1][1]] + [m for _, m in est], ":",
                             marker="o", mfc="none", color=lines[0].get_color(), label=f"{arm}: estimate, not run")
    for ax, name in zip(axes, ("step time (s)", "peak step memory (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens")
        ax.set_ylabel(name)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=7)
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
    p.add_argument("--max-gb", type=float, default=10.0, help="skip (estimate) or kill (measured RSS) a configuration "
                   "above this many GB")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="arms to run (ssamba always kept "
                   "first: every ratio is to it)")
    p.add_argument("--out", type=Path, default=RESULTS / "audio_scaling.json")
    a = p.parse_args()
    import psutil
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if a.device != "all":
        devices = [a.device]
    out = a.out.with_name(a.out.stem + f"_{a.threads}t" + ("_bf16" if a.bf16 else "") + ".json")
    results = {} if a.fresh or not out.is_file() else json.loads(out.read_text())
    arms = tuple(arm for arm in ARMS if arm in a.arms or arm == "ssamba")
    for device in devices:
        for n in a.tokens:
            for arm in arms:
                k = key(device, arm, n)
                if k in results and "seconds" in results[k]:
                    continue
                need, scaled = estimate(results, device, arm, n)
                free = (torch.cuda.mem_get_info()[0] if device == "cuda" else psutil.virtual_memory().available)
                cap = min(a.max_gb * 2**30, 0.8 * free)
                if need > cap:
                    best = scaled or need      # the measured extrapolation is the better estimate, the max the guard
                    results[k] = {"arm": arm, "tokens": n, "device": device, "estimate_mb": best / 2**20,
                                  "formula_mb": estimate_bytes(arm, n) / 2**20,
                                  "skipped": f"needs ~{best / 2**30:.0f} GB (estimated), not run here "
                                             f"(cap {cap / 2**30:.0f} GB)"}
                    print(f"{k}: {results[k]['skipped']}", file=sys.stderr, flush=True)
                else:
                    t = time.perf_counter()
                    results[k] = run_child(arm, n, device, a.bf16, a.timeout, a.threads, cap)
                    print(f"{k}: {results[k].get('seconds', results[k].get('skipped'))} "
                          f"({time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(results, indent=1))
    for device in devices:
        table(results, device, a.tokens, arms)
    plot(results, devices, out.with_suffix(".png"))
    print(str(out))


if __name__ == "__main__":
    main()
