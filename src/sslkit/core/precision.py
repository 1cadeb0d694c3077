"""`train.precision: auto`: which precision a run trains in on this machine, and why.

On a CUDA device with bf16, `auto` is bf16 autocast. On a CPU with AVX-512 BF16 / AMX, bf16 autocast makes the
matrix products several times faster, but a training step only gains where products dominate it; around them,
norms, activations, conversions and the optimizer run at about fp32 speed or slower. So on a CPU `auto` is decided
per (domain, method) from `benchmarks/precision.py` (the table in docs/performance.md): bf16 only where that
method's CPU recipe measured faster in bf16 *and* its loss after the benchmark's steps stayed within fp32's
seed-to-seed spread. A method that was not measured trains in fp32. The decision is a table, not a timing taken at
the start of each run: the same recipe on the same machine always trains in the same precision.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sslkit.core.errors import UserError


@dataclass(frozen=True)
class Choice:
    """The precision a run trains in ("bf16" autocast or "fp32") and the one-line reason."""

    precision: str
    why: str

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"


# (domain, method) -> CPU choice under `auto`, from `benchmarks/precision.py` (2 cores, AVX-512 BF16 + AMX, torch
# 2.9.1; training-step samples/s bf16 vs fp32 on the method's CPU recipe, and the loss after the same steps).
# "x": bf16 samples/s over fp32; loss: |bf16 - fp32| after N steps, same seed, against |fp32 seed 1 - fp32 seed 0|.
CPU_AUTO: dict[tuple[str, str], Choice] = {
    ("audio", "tera"): Choice("bf16", "1.50x samples/s in bf16 (tera-fsdd, attention materialised in bf16: the stock "
                                      "layer's fused kernel gave 0.89x); loss after 32 steps 0.0001 from fp32, seeds "
                                      "0.015 apart"),
    ("audio", "ssast"): Choice("bf16", "1.51x samples/s in bf16 (ssast-fsdd, materialised bf16 attention with an "
                                       "additive key mask); loss after 32 steps 0.0006 from fp32, seeds 0.14 apart"),
    ("audio", "ssamba"): Choice("fp32", "0.94x in bf16 (ssamba-fsdd with the C scan kernel, fp32 90.2 samples/s; "
                                        "0.90x with the PyTorch scan): the selective scan runs in fp32 either way"),
    ("pathology", "dino"): Choice("bf16", "1.69x samples/s in bf16 (dino-tiny, timm's materialised attention under "
                                          "CPU autocast); loss after 10 steps 0.0014 from fp32, seeds 0.0037 apart"),
    ("medical3d", "alice"): Choice("bf16", "1.15x samples/s in bf16 (la2018, conv3d tiny); loss after 12 steps "
                                           "0.002 from fp32, seeds 0.45 apart"),
    ("tabular", "t-jepa"): Choice("fp32", "0.80x in bf16 (t-jepa-small), 0.99x (t-jepa): d=32-64 products over ~15 "
                                          "tokens are too small for bf16 to pay (a d=32 linear: 0.7-0.9x in bf16)"),
    ("graph", "scgc-star"): Choice("fp32", "1.01x in bf16 (Cora): sparse propagation and the losses run in fp32"),
    ("lidar", "dinostar"): Choice("fp32", "2.11x in bf16 (pointpillars-tiny) but the loss after 16 steps moved "
                                          "0.0105 from fp32 with seeds 0.0064 apart"),
}


MATERIALISE_MAX = 1024 * 1024   # keys × queries: 4 MB of bf16 scores per (batch, head) at most


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              dropout: float = 0.0) -> torch.Tensor:
    """softmax(QKᵀ/√e)V for (B, H, T, e) inputs; `mask` (broadcastable to (B, H, T, S)): bool keeps True positions,
    a float mask is added to the scores (as `F.scaled_dot_product_attention`).

    On a CPU in bf16 (under autocast) and for sequences up to `MATERIALISE_MAX` keys × queries, the scores are
    materialised and both products run as bf16 matmuls (oneDNN/AMX): PyTorch's fused CPU kernel took 1.33x longer
    than that for a ViT-tiny step here (385 vs 290 ms, docs/performance.md), and its math fallback upcasts to fp32.
    The scale goes on q (T·e values, not T·S scores) and a key mask is added as a 0/-inf bias of the scores' dtype:
    an add has no backward pass over the scores, where a masked_fill has one (bf16 over fp32, same run: ssast-fsdd
    1.46x -> 1.51x, tera-fsdd 1.43x -> 1.50x; docs/performance.md).
    Everywhere else (fp32, CUDA, long sequences where T² scores would not fit) `F.scaled_dot_product_attention`.
    """
    import torch.nn.functional as F

    bf16 = q.dtype == torch.bfloat16 or (torch.is_autocast_enabled("cpu") and
                                         torch.get_autocast_dtype("cpu") == torch.bfloat16)
    if q.device.type != "cpu" or not bf16 or q.shape[-2] * k.shape[-2] > MATERIALISE_MAX:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if mask is not None:
        bias = (torch.zeros(mask.shape, dtype=scores.dtype, device=q.device).masked_fill_(~mask, float("-inf"))
                if mask.dtype == torch.bool else mask.to(scores.dtype))
        scores = scores + bias
    weights = scores.softmax(-1)
    if dropout:
        weights = F.dropout(weights, dropout)
    return weights @ v


def bf16_supported(device: torch.device) -> bool:
    """bf16 kernels on this device: CUDA with bf16, or a CPU with AVX512-BF16/AMX (oneDNN's check)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
    return False


def decide(precision: str, device: torch.device, domain: str | None = None, method: str | None = None) -> Choice:
    """The precision for `train.precision` on `device` for (domain, method); `bf16` that the device lacks is a
    UserError (it would silently run in fp32 otherwise)."""
    if precision == "fp32":
        return Choice("fp32", "train.precision=fp32")
    supported = bf16_supported(device)
    if precision == "bf16":
        if not supported:
            raise UserError(f"train.precision=bf16 is not supported on {device} — use --set train.precision=fp32")
        return Choice("bf16", "train.precision=bf16")
    if not supported:
        return Choice("fp32", f"no bf16 kernels on {device.type}")
    if device.type == "cuda":
        return Choice("bf16", "CUDA with bf16: autocast")
    if device.type != "cpu":
        return Choice("fp32", f"bf16 autocast is not used on {device.type}")
    known = CPU_AUTO.get((domain or "", method or ""))
    if known is None:
        return Choice("fp32", "CPU: not measured in bf16 for this method (benchmarks/precision.py)")
    return known
