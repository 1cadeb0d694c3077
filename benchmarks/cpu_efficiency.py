"""A ViT-tiny-sized encoder training step on this CPU: achieved GFLOP/s against a matmul measured in the same run,
in fp32 and in bf16 the way `fit()` runs it (autocast around the forward, fused AdamW), with DeiT blocks whose
attention is `sslkit.core.precision.attention` (PyTorch's fused kernel in fp32, materialised bf16 products in bf16).

Targets (#28): fp32 step >= 50% of the fp32 matmul rate; bf16 step >= 2.0x faster than fp32.
    .venv/bin/python benchmarks/cpu_efficiency.py [--profile] [--variants] [--compile]

--profile: operator table of 2 steps per precision, self CPU time by operator class.
--variants: the same step with PyTorch's fused CPU attention in bf16, with nn.TransformerEncoderLayer, with the
            foreach AdamW, and with LayerNorm fed a bf16 copy of the residual stream: what each choice is worth.
--compile: also the step under torch.compile (compile time reported apart).
--shapes: only one linear layer's forward+backward at each CPU recipe's product shapes, fp32 vs bf16 autocast (cast
          of the fp32 input included, as in fit()): where bf16 products pay at all on this CPU.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sslkit.core import precision
from sslkit.core.console import print_table

D, LAYERS, HEADS, TOKENS, BATCH = 192, 12, 3, 197, 16


def matmul_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


class Block(nn.Module):
    """DeiT block as sslkit's ViTs have it (audio SSAST, timm in pathology): LN, fused QKV, attention, LN, GELU MLP.
    `attention`: "sslkit" = `sslkit.core.precision.attention` (materialised in bf16 on a CPU), "sdpa" = PyTorch's."""

    def __init__(self, attention: str = "sslkit", norm: type[nn.LayerNorm] = nn.LayerNorm) -> None:
        super().__init__()
        self.attention = attention
        self.norm1, self.norm2 = norm(D), norm(D)
        self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.fc1, self.fc2 = nn.Linear(D, 4 * D), nn.Linear(4 * D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, HEADS, d // HEADS).permute(2, 0, 3, 1, 4)
        o = precision.attention(q, k, v) if self.attention == "sslkit" else F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(o.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class Bf16InputLayerNorm(nn.LayerNorm):
    """LayerNorm of a bf16 copy of its input under CPU bf16 autocast (bf16 out, no cast before the next product).
    Measured as a variant only: statistics of bf16-rounded inputs lose precision when |mean| ≫ std (why CUDA
    autocast keeps layer_norm in fp32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16:
            x = x.to(torch.bfloat16)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


def vit_tiny(kind: str = "sslkit") -> nn.Module:
    """12 DeiT blocks; kind "torch-layer": PyTorch's nn.TransformerEncoderLayer (its MHA calls the fused kernel);
    "bf16-norm": LayerNorm on a bf16 copy of the residual stream (`Bf16InputLayerNorm`)."""
    if kind == "bf16-norm":
        return nn.Sequential(*[Block("sslkit", Bf16InputLayerNorm) for _ in range(LAYERS)])
    if kind == "torch-layer":
        layer = nn.TransformerEncoderLayer(D, HEADS, 4 * D, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        return nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
    return nn.Sequential(*[Block(kind) for _ in range(LAYERS)])


def step_flops() -> float:
    """Forward matmul FLOPs (QKV, proj, MLP: 24·d² per token; attention scores and mix: 4·n·d) × 3 for training."""
    per_token = LAYERS * (24 * D * D + 4 * TOKENS * D)
    return 3 * per_token * TOKENS * BATCH


def make_step(bf16: bool, kind: str = "sslkit", fused: bool = True, compiled: bool = False
              ) -> tuple[Callable[[], None], float]:
    """One training step as fit() runs it (fused AdamW, autocast around the forward); returns (step, seconds of the
    first step, which compiles when `compiled`)."""
    torch.manual_seed(0)
    model = vit_tiny(kind)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    forward = torch.compile(model) if compiled else model
    x = torch.randn(BATCH, TOKENS, D)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = forward(x).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    step()                      # the first step compiles (or warms the kernels' caches)
    return step, time.perf_counter() - t0


def step_seconds(step: Callable[[], None], reps: int = 6) -> float:
    step()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t0)
    return best


def profile(step: Callable[[], None], label: str) -> None:
    """Self CPU time by operator class over 2 steps (the classes of benchmarks/precision.py)."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from precision import op_classes
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as p:
        for _ in range(2):
            step()
    ops = op_classes(p)
    total = sum(ops["classes_ms"].values())
    print(f"\n{label}: {total / 2:.0f} ms self CPU per step", file=sys.stderr)
    for cls, ms in ops["classes_ms"].items():
        print(f"  {cls:18s} {ms / 2:7.1f} ms  {100 * ms / total:4.0f}%", file=sys.stderr)
    print("  costliest: " + "; ".join(f"{n} {ms / 2:.0f} ms" for n, ms, _ in ops["top_ms"][:6]), file=sys.stderr)


SHAPES = [  # (recipe and layer, rows M = batch × tokens, in K, out N)
    ("t-jepa-small encoder qkv", 256 * 8, 32, 96), ("t-jepa-small encoder ffn", 256 * 8, 32, 64),
    ("t-jepa-small predictor qkv", 4 * 256 * 12, 16, 48), ("t-jepa encoder qkv", 512 * 8, 64, 192),
    ("t-jepa predictor ffn", 4 * 512 * 12, 16, 64), ("ssast / tera qkv", 32 * 98, 128, 384),
    ("ssast / tera fc1", 32 * 98, 128, 512), ("ssamba in_proj", 32 * 97, 64, 256),
    ("ViT-tiny qkv", BATCH * TOKENS, D, 3 * D), ("ViT-tiny fc1", BATCH * TOKENS, D, 4 * D)]


def linear_seconds(m: int, k: int, n: int, bf16: bool, reps: int = 20) -> float:
    """Best time of F.linear forward + backward on an fp32 (m, k) input, under bf16 autocast or not."""
    x, w = torch.randn(m, k, requires_grad=True), torch.randn(n, k, requires_grad=True)
    b = torch.randn(n, requires_grad=True)

    def once() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = F.linear(x, w, b)
        y.backward(torch.ones_like(y))

    for _ in range(2):
        once()
    return step_seconds(once, reps)


def shapes_table() -> None:
    rows = []
    for label, m, k, n in SHAPES:
        t32, t16 = linear_seconds(m, k, n, False), linear_seconds(m, k, n, True)
        rows.append([label, str(m), str(k), str(n), f"{1e6 * t32:.0f}", f"{1e6 * t16:.0f}", f"{t32 / t16:.2f}x",
                     f"{6 * m * k * n / t32 / 1e9:.0f}"])
    print_table(f"one linear layer, forward + backward ({torch.get_num_threads()} threads)",
                ["shape", "M", "K", "N", "fp32 us", "bf16 us", "bf16 speed", "fp32 GFLOP/s"], rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--variants", action="store_true")
    ap.add_argument("--compile", action="store_true")
    a = ap.parse_args()
    if a.shapes:
        shapes_table()
        return
    bf16_ok = precision.bf16_supported(torch.device("cpu"))
    mm32, mm16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    arms: list[tuple[str, bool, dict]] = [("fp32", False, {})]
    if bf16_ok:
        arms.append(("bf16 (fit)", True, {}))
    if a.variants and bf16_ok:
        arms += [("bf16, PyTorch fused attention", True, {"kind": "sdpa"}),
                 ("fp32, nn.TransformerEncoderLayer", False, {"kind": "torch-layer"}),
                 ("bf16, nn.TransformerEncoderLayer", True, {"kind": "torch-layer"}),
                 ("bf16, foreach AdamW", True, {"fused": False}), ("fp32, foreach AdamW", False, {"fused": False}),
                 ("bf16, LayerNorm on bf16 input", True, {"kind": "bf16-norm"})]
    if a.compile:
        arms += [("fp32 compiled", False, {"compiled": True})] + ([("bf16 compiled", True, {"compiled": True})]
                                                                  if bf16_ok else [])
    rows, t32 = [], None
    for label, bf16, kw in arms:
        step, first = make_step(bf16, **kw)
        t = step_seconds(step)
        t32 = t if label == "fp32" else t32
        g = step_flops() / t / 1e9
        mm = mm16 if bf16 else mm32
        rows.append([label, f"{mm:.0f}", f"{1000 * t:.0f}", f"{g:.0f}", f"{100 * g / mm:.0f}%",
                     f"{t32 / t:.2f}x", f"{first:.1f}" if kw.get("compiled") else "-"])
        if a.profile and not kw:
            profile(step, label)
    print_table(f"ViT-tiny step (d={D}, {LAYERS} layers, {TOKENS} tokens, batch {BATCH}, {torch.get_num_threads()} threads)",
                ["step", "matmul GFLOP/s", "ms/step", "step GFLOP/s", "of matmul", "vs fp32", "compile s"], rows)


if __name__ == "__main__":
    main()
