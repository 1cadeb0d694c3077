"""Mamba's selective scan (S6) in plain PyTorch: linear in sequence length in time and memory.

    h_t = exp(dt_t ⊗ A) ⊙ h_{t-1} + (dt_t · u_t) ⊗ B_t        h_t: (D, N) per step, h_{-1} = 0
    out_t = (h_t · C_t + D ⊙ u_t) ⊙ silu(z_t),    dt = softplus(delta + delta_bias)

How it avoids a Python loop over the L time steps and never exponentiates a positive number:
- the sequence is cut into blocks (`block` positions of batch × steps); a block's states are built, used and freed
  before the next block (memory O(block · D · N) on top of the (L, D)-sized inputs), and only the state entering
  each block is kept for the backward pass, which recomputes a block's states instead of storing all L × D × N of
  them (as the CUDA kernel does); nothing but the inputs is saved for backward;
- inside a block, steps are grouped into chunks of `chunk`: every chunk of the block advances at once (one
  vectorised update per position inside a chunk), the decays are multiplied into chunk-cumulative products
  exp(Σ dt·A) ≤ 1 (sums of non-positive log-decays), and one short pass across the chunks adds each chunk's carried
  state. Python-level operations per block: ~chunk + steps/chunk, so ≈ L/8 at batch 1 for the defaults, never L;
- everything runs in float32 (also under bf16 autocast); decays are products of numbers in (0, 1], so nothing can
  overflow, and a backward pass runs the same recurrence in reverse (hand-written, checked against autograd on the
  sequential reference in tests/domains/audio/test_scan.py).
On a CUDA machine where the `mamba-ssm` package imports, its fused kernel is used instead (optional).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

BLOCK = 256   # positions (batch × steps) whose (D, N) states exist at once: small enough for the CPU caches
CHUNK = 16    # steps per chunk inside a block (the in-chunk update runs over all chunks of the block at once)


def selective_scan_reference(u: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor) -> Tensor:
    """The recurrence step by step (for tests): u, dt (B, L, D); A (D, N); Bm, Cm (B, L, N) -> y (B, L, D)."""
    h = u.new_zeros(u.shape[0], u.shape[2], A.shape[1])
    ys = []
    for t in range(u.shape[1]):
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * u[:, t])[:, :, None] * Bm[:, t, None, :]
        ys.append((h * Cm[:, t, None, :]).sum(-1))
    return torch.stack(ys, 1)


def _pad_time(x: Tensor, steps: int) -> Tensor:
    return x if steps == 0 else F.pad(x, (0, 0, 0, steps))


def _forward_chunks(h: Tensor, p: Tensor, chunk: int, cum: Tensor | None = None) -> None:
    """In place: h holds b_t (B, K, D, N) with the entering state folded into b_0, p holds a_t; afterwards
    h holds the states h_t and `cum` (default: p itself) the chunk-cumulative decays. K is a multiple of `chunk`."""
    bsz, k = h.shape[:2]
    shape = (bsz, k // chunk, chunk, *h.shape[2:])
    hv, pv = h.view(shape), p.view(shape)
    cv = pv if cum is None else cum.view(shape)
    if cum is not None:
        cv[:, :, 0] = pv[:, :, 0]
    for t in range(1, chunk):                      # all chunks at once: local states from a zero start
        hv[:, :, t].addcmul_(pv[:, :, t], hv[:, :, t - 1])
        torch.mul(pv[:, :, t], cv[:, :, t - 1], out=cv[:, :, t])
    for c in range(1, k // chunk):                 # carry: add the true state at the end of the previous chunk
        hv[:, c].addcmul_(cv[:, c], hv[:, c - 1, chunk - 1 : chunk])


def _reverse_chunks(g: Tensor, a: Tensor, r: Tensor, chunk: int) -> None:
    """In place, the adjoint recurrence g_t = r_t + a_{t+1} · g_{t+1} (g holds r_t on entry); `r` is scratch that
    ends holding, per chunk, the decay from each step to the chunk's end, Π_{j=t+1..end} a_j."""
    bsz, k = g.shape[:2]
    shape = (bsz, k // chunk, chunk, *g.shape[2:])
    gv, av, rv = g.view(shape), a.view(shape), r.view(shape)
    rv[:, :, chunk - 1] = 1.0
    for t in range(chunk - 2, -1, -1):
        gv[:, :, t].addcmul_(av[:, :, t + 1], gv[:, :, t + 1])
        torch.mul(av[:, :, t + 1], rv[:, :, t + 1], out=rv[:, :, t])
    for c in range(k // chunk - 2, -1, -1):      # carry: what reaches the next chunk's first state, decayed back
        gv[:, c].addcmul_(rv[:, c], (av[:, c + 1, 0] * gv[:, c + 1, 0]).unsqueeze(1))


def _block_inputs(u: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, h0: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    """(a_t = exp(dt_t ⊗ A), b_t = dt_t u_t ⊗ B_t with the entering state folded into b_0), both (B, K', D, N),
    K' = K padded to the chunk (padding has dt = 0: decay 1, input 0)."""
    pad = -u.shape[1] % chunk
    u, dt, Bm = _pad_time(u, pad), _pad_time(dt, pad), _pad_time(Bm, pad)
    a = torch.mul(dt.unsqueeze(-1), A).exp_()                  # exponent ≤ 0: decays in (0, 1]
    b = (dt * u).unsqueeze(-1) * Bm.unsqueeze(2)
    b[:, 0].addcmul_(a[:, 0], h0)
    return a, b


class _ChunkedScan(torch.autograd.Function):
    """y = (Σ_n C_t h_t + D u) · silu(z) with dt = softplus(delta + bias); saves only its inputs (memory like
    mamba-ssm's fused kernel: nothing of size L × D × N, nothing but what the layer holds anyway)."""

    @staticmethod
    def forward(ctx: Any, u: Tensor, delta: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor, D: Tensor, z: Tensor,  # type: ignore[override]
                bias: Tensor, block: int, chunk: int, memo: dict | None) -> Tensor:
        ctx.block, ctx.chunk = block, chunk
        bsz, length, d = u.shape
        if memo is not None and "entering" in memo:
            # a checkpointed layer re-running its forward inside backward: only what backward needs is wanted (the
            # inputs and the states entering each block, kept from the first run); the output is not used
            ctx.save_for_backward(u, delta, A, Bm, Cm, D, z, bias, memo.pop("entering"))
            return u.new_zeros(bsz, length, d)
        entering = u.new_empty(-(-length // block), bsz, d, A.shape[1])
        y = u.new_empty(bsz, length, d)
        h0 = u.new_zeros(bsz, d, A.shape[1])
        for i, s in enumerate(range(0, length, block)):
            e = min(s + block, length)
            entering[i] = h0
            p, h = _block_inputs(u[:, s:e], F.softplus(delta[:, s:e] + bias), A, Bm[:, s:e], h0, chunk)
            _forward_chunks(h, p, chunk)               # p (the decays) becomes the cumulative products: not kept
            yb = y[:, s:e]
            torch.matmul(h[:, : e - s], Cm[:, s:e, :, None], out=yb.unsqueeze(-1))
            yb.addcmul_(u[:, s:e], D)
            if z is not None:
                yb.mul_(F.silu(z[:, s:e]))
            h0 = h[:, e - s - 1]
        if memo is not None:
            memo["entering"] = entering
        ctx.save_for_backward(u, delta, A, Bm, Cm, D, z, bias, entering)
        return y

    @staticmethod
    def backward(ctx: Any, gout: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        """Block by block from the end: recompute the block's states, run the adjoint recurrence, and form every
        gradient of the block; only the gradients themselves are full-length buffers."""
        u, delta, A, Bm, Cm, D, z, bias, entering = ctx.saved_tensors
        block, chunk = ctx.block, ctx.chunk
        bsz, length, d = u.shape
        gu, gpre, gB, gC = torch.empty_like(u), torch.empty_like(delta), torch.empty_like(Bm), torch.empty_like(Cm)
        gz = None if z is None else torch.empty_like(z)
        gAA, gD = torch.zeros_like(A), torch.zeros_like(D)    # gAA: Σ dL/dA · A (see below)
        g_next = u.new_zeros(bsz, d, A.shape[1])        # dL/d(last state of the block) from later blocks
        for i in reversed(range(len(entering))):
            s = i * block
            e = min(s + block, length)
            k = e - s
            ub, Bb, Cb, go = u[:, s:e], Bm[:, s:e], Cm[:, s:e], gout[:, s:e]
            pre = delta[:, s:e] + bias
            dtb = F.softplus(pre)
            gy = go.contiguous() if z is None else go * F.silu(z[:, s:e])   # d out / d y = silu(z)
            a, h = _block_inputs(ub, dtb, A, Bb, entering[i], chunk)
            r = torch.empty_like(a)
            _forward_chunks(h, a, chunk, cum=r)         # h: the states again (a kept; r: scratch)
            kp = h.shape[1]
            g = _pad_time(gy, kp - k).unsqueeze(-1) * _pad_time(Cb, kp - k).unsqueeze(2)   # gy_t ⊗ C_t
            g[:, kp - 1] += g_next                      # padded steps pass it on unchanged (decay 1)
            _reverse_chunks(g, a, r, chunk)             # g_t = dL/dh_t
            g_next = a[:, 0] * g[:, 0]
            h, g, a = h[:, :k], g[:, :k], a[:, :k]
            if z is not None:                           # d silu(z)/dz = σ(z)·(1 + z·(1 − σ(z))), times y + D·u
                zb = z[:, s:e]
                sz = torch.sigmoid(zb)
                y = (h @ Cb[..., None]).squeeze(-1).addcmul_(ub, D).mul_(go)
                torch.mul(torch.sub(1.0, sz).mul_(zb).add_(1.0).mul_(sz), y, out=gz[:, s:e])
            torch.matmul(h.transpose(-1, -2), gy[..., None], out=gC[:, s:e, :, None])
            q = r[:, :k]                                # dL/d(dt ⊗ A) · A = g_t · h_{t-1} · a_t · A
            torch.mul(h[:, :-1], g[:, 1:], out=q[:, 1:])
            torch.mul(entering[i], g[:, 0], out=q[:, 0])
            q.mul_(a.mul_(A))
            del a, h, r
            gAA += torch.einsum("bkdn,bkd->dn", q, dtb)  # Σ_t q·A·dt: divided by A once, at the end
            gdu = (g @ Bb[..., None]).squeeze(-1)       # dL/d(dt·u) = Σ_n g_t B_t
            torch.matmul(g.transpose(-1, -2), (dtb * ub)[..., None], out=gB[:, s:e, :, None])
            gdt = q.sum(-1).addcmul_(gdu, ub)
            torch.mul(gdt, torch.sigmoid_(pre), out=gpre[:, s:e])   # softplus' = σ
            gD += (gy * ub).sum((0, 1))
            torch.addcmul(gy * D, gdu, dtb, out=gu[:, s:e])
            del q, g
        return gu, gpre, gAA / A, gB, gC, gD, gz, gpre.sum((0, 1)), None, None, None


def _mamba_ssm_scan() -> Any:
    """mamba-ssm's fused CUDA scan when that package imports, else None (it is optional)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # not installed, or built for another torch/CUDA: the PyTorch scan is used
        return None
    return selective_scan_fn


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, *, block: int = BLOCK,
                   chunk: int = CHUNK, use_kernel: bool = True, memo: dict | None = None) -> Tensor:
    """Mamba's S6 with dt = softplus(delta + delta_bias), the D·u skip and the SiLU(z) gate.

    u, delta, z: (B, L, D); A: (D, N) (negative); Bm, Cm: (B, L, N); D, delta_bias: (D,) -> (B, L, D) float32.
    Runs in float32 whatever the autocast setting (the recurrence accumulates over thousands of steps).
    `memo`: a dict shared by the two runs of a checkpointed layer (the first fills it, the re-run in backward
    then skips the scan, whose output it does not need).
    """
    device = u.device.type
    if use_kernel and device == "cuda" and (kernel := _mamba_ssm_scan()) is not None:
        with torch.autocast(device, enabled=False):
            out = kernel(u.float().transpose(1, 2).contiguous(), delta.float().transpose(1, 2).contiguous(), A.float(),
                         Bm.float().transpose(1, 2).contiguous(), Cm.float().transpose(1, 2).contiguous(),
                         None if D is None else D.float(), None if z is None else z.float().transpose(1, 2).contiguous(),
                         None if delta_bias is None else delta_bias.float(), delta_softplus=True)
        return out.transpose(1, 2)
    # a block holds `block` (batch × step) positions, so its states stay cache-sized whatever the batch
    chunk = max(1, min(chunk, block))
    block = max(chunk, block // max(1, u.shape[0]) // chunk * chunk)
    with torch.autocast(device, enabled=False):
        f = lambda t: None if t is None else t.float().contiguous()  # noqa: E731
        zeros = u.new_zeros(u.shape[-1], dtype=torch.float32)
        return _ChunkedScan.apply(f(u), f(delta), f(A), f(Bm), f(Cm), zeros if D is None else f(D), f(z),
                                  zeros if delta_bias is None else f(delta_bias), block, chunk, memo)
