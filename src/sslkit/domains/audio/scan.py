"""Mamba's selective scan (S6) in PyTorch, with an optional C kernel on CPUs: linear in length in time and memory.

    h_t = exp(dt_t ⊗ A) ⊙ h_{t-1} + (dt_t · u_t) ⊗ B_t        h_t: (D, N) per step, h_{-1} = 0
    out_t = (h_t · C_t + D ⊙ u_t) ⊙ silu(z_t),    dt = softplus(delta + delta_bias)

The channels may come in G groups with their own B_t, C_t (Bm, Cm of shape (B, L, G, N)): the two directions of a
bidirectional Mamba layer can run as one scan of 2 × d_inner channels (tested; the model runs them apart: no
faster on a CPU, and it would hold both directions' activations at once). Mamba's dt_proj can be applied inside
the scan (`delta_proj`), a block at a time, so the full-length delta and its gradient never exist.

How it avoids a Python loop over the L time steps and never exponentiates a positive number:
- the sequence is cut into blocks (`block` positions of batch × steps); a block's states are built, used and freed
  before the next block (memory O(block · D · N) on top of the (L, D)-sized inputs), and only the state entering
  each block is kept for the backward pass, which recomputes a block's states instead of storing all L × D × N of
  them (as the CUDA kernel does); nothing but the inputs is saved for backward;
- inside a block, steps are grouped into chunks of `chunk`: every chunk of the block advances at once (one
  vectorised update per position inside a chunk), the decays are multiplied into chunk-cumulative products
  exp(Σ dt·A) ≤ 1 (sums of non-positive log-decays), and one short pass across the chunks adds each chunk's carried
  state. Python-level operations per block: ~2·chunk + steps/chunk, each advancing every chunk of the block at
  once (≈ 0.3 per position at batch 1 for the defaults), never one per time step; the block-sized work tensors
  are allocated once per call and the loops' views of them built once (a view costs as much as a small update);
- states are laid out (position, group, N, channel): every elementwise operation runs along the contiguous channel
  axis (hundreds of floats, not N = 16), and the products with B_t and C_t are matrix-vector products over rows of
  contiguous channels;
- everything runs in float32 (also under bf16 autocast); decays are products of numbers in (0, 1], so nothing can
  overflow, and a backward pass runs the same recurrence in reverse (hand-written, checked against autograd on the
  sequential reference in tests/domains/audio/test_scan.py).
On a CPU, a block's inner work (states, output, and in backward the states again, the adjoint and every
contraction) runs by default in the small C kernel of `scan_kernel` (compiled at first use with the system C
compiler, cached; same maths, one pass per block instead of ~60 eager passes); without a compiler, or with
SSLKIT_SCAN_KERNEL=0, the PyTorch code below runs. Both are tested against the sequential reference.
On a CUDA machine where the `mamba-ssm` package imports, its fused kernel is used instead (optional).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sslkit.domains.audio import scan_kernel

BLOCK = 128   # positions (batch × steps) whose (D, N) states exist at once: small enough for the CPU caches
CHUNK = 16    # steps per chunk inside a block (the in-chunk update runs over all chunks of the block at once)


def selective_scan_reference(u: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor) -> Tensor:
    """The recurrence step by step (for tests): u, dt (B, L, D); A (D, N); Bm, Cm (B, L, N) or (B, L, G, N) with
    D = G × D/G channels per group -> y (B, L, D)."""
    if Bm.dim() == 4:
        g = Bm.shape[2]
        Bm, Cm = (m.repeat_interleave(u.shape[2] // g, dim=2) for m in (Bm, Cm))   # (B, L, D, N)
    else:
        Bm, Cm = Bm[:, :, None], Cm[:, :, None]
    h = u.new_zeros(u.shape[0], u.shape[2], A.shape[1])
    ys = []
    for t in range(u.shape[1]):
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * u[:, t])[:, :, None] * Bm[:, t]
        ys.append((h * Cm[:, t]).sum(-1))
    return torch.stack(ys, 1)


def _pad_time(x: Tensor, steps: int) -> Tensor:
    return x if steps == 0 else F.pad(x, (0, 0) * (x.dim() - 2) + (0, steps))


class _Work:
    """Block-sized work tensors (B, K, G, N, Dg), allocated once per scan call and reused by every block, and the
    per-step views of them that the chunk loops use, built once: making a view costs about as much as one small
    update, and the loops run ~chunk + K/chunk updates per block."""

    def __init__(self, like: Tensor, bsz: int, k: int, state: tuple[int, ...], chunk: int, backward: bool) -> None:
        self.k, self.chunk = k, chunk
        self.a, self.h = like.new_empty(bsz, k, *state), like.new_empty(bsz, k, *state)
        shape = (bsz, k // chunk, chunk, *state)
        hv, av = self.h.view(shape), self.a.view(shape)
        if not backward:             # forward: the decays a_t become the chunk-cumulative products in place
            self.cum_first = None
            self.steps = [(hv[:, :, t], av[:, :, t], hv[:, :, t - 1], None, av[:, :, t - 1])
                          for t in range(1, chunk)]
            self.carry = [(hv[:, c], av[:, c], hv[:, c - 1, chunk - 1 : chunk]) for c in range(1, k // chunk)]
            return
        self.r, self.g = like.new_empty(bsz, k, *state), like.new_empty(bsz, k, *state)
        rv, gv = self.r.view(shape), self.g.view(shape)
        self.cum_first = (rv[:, :, 0], av[:, :, 0])     # forward again, cumulative decays in r (a is kept)
        self.steps = [(hv[:, :, t], av[:, :, t], hv[:, :, t - 1], rv[:, :, t], rv[:, :, t - 1])
                      for t in range(1, chunk)]
        self.carry = [(hv[:, c], rv[:, c], hv[:, c - 1, chunk - 1 : chunk]) for c in range(1, k // chunk)]
        self.rev_last = rv[:, :, chunk - 1]
        self.rev_steps = [(gv[:, :, t], av[:, :, t + 1], gv[:, :, t + 1], rv[:, :, t], rv[:, :, t + 1])
                          for t in range(chunk - 2, -1, -1)]
        self.rev_carry = [(gv[:, c], rv[:, c], av[:, c + 1, 0], gv[:, c + 1, 0]) for c in range(k // chunk - 2, -1, -1)]

    def inputs(self, u: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, h0: Tensor) -> None:
        """a_t = exp(dt_t ⊗ A) and h = b_t = dt_t u_t ⊗ B_t with the entering state folded into b_0, for a block of
        u, dt (B, k, G, 1, Dg), Bm (B, k, G, N, 1), k ≤ K (the tail is padded with dt = 0: decay 1, input 0)."""
        pad = self.k - u.shape[1]
        u, dt, Bm = _pad_time(u, pad), _pad_time(dt, pad), _pad_time(Bm, pad)
        torch.mul(dt, A, out=self.a).exp_()            # exponent ≤ 0: decays in (0, 1]
        torch.mul(Bm, dt * u, out=self.h)
        self.h[:, 0].addcmul_(self.a[:, 0], h0)

    def states(self) -> None:
        """In place: h becomes the states h_t (all chunks advance at once, then each chunk gets its carried state);
        forward: a becomes the chunk-cumulative decays; backward: those go to r and a is kept."""
        if self.cum_first is not None:
            self.cum_first[0].copy_(self.cum_first[1])
        for h, a, h_prev, cum, cum_prev in self.steps:
            h.addcmul_(a, h_prev)
            if cum is None:
                a.mul_(cum_prev)
            else:
                torch.mul(a, cum_prev, out=cum)
        for h, cum, h_end in self.carry:
            h.addcmul_(cum, h_end)

    def adjoint(self) -> None:
        """In place, g_t = r_t + a_{t+1} · g_{t+1} (g holds r_t on entry); r ends holding, per chunk, the decay from
        each step to the chunk's end, Π_{j=t+1..end} a_j."""
        self.rev_last.fill_(1.0)
        for g, a_next, g_next, r, r_next in self.rev_steps:
            g.addcmul_(a_next, g_next)
            torch.mul(a_next, r_next, out=r)
        for g, r, a_next, g_next in self.rev_carry:   # what reaches the next chunk's first state, decayed back
            g.addcmul_(r, (a_next * g_next).unsqueeze(1))


def _pre(delta: Tensor, proj: Tensor | None, bias: Tensor) -> Tensor:
    """delta + bias (B, K, G, 1, Dg); with `proj` (G, Dg, R), delta is low-rank (B, K, G, 1, R) and projected here,
    a block at a time (the full-length delta and its gradient never exist)."""
    if proj is None:
        return delta + bias
    out = torch.empty(*delta.shape[:-1], proj.shape[1], dtype=delta.dtype, device=delta.device)
    for j in range(proj.shape[0]):
        out[:, :, j, 0] = (delta[:, :, j, 0].flatten(0, 1) @ proj[j].t()).view(out.shape[0], out.shape[1], -1)
    return out.add_(bias)


def _steps(pre: Tensor, keep: Tensor | None, s: int, e: int) -> Tensor:
    """dt = softplus(pre), 0 where `keep` (B, L) is False (absent tokens: no decay, no input)."""
    dt = F.softplus(pre)
    return dt if keep is None else dt.mul_(keep[:, s:e, None, None, None])


class _ChunkedScan(torch.autograd.Function):
    """y = (Σ_n C_t h_t + D u) · silu(z) with dt = softplus(delta + bias); saves only its inputs (memory like
    mamba-ssm's fused kernel: nothing of size L × D × N, nothing but what the layer holds anyway).
    Inside: u, delta, z (B, L, G, 1, Dg); A (G, N, Dg); Bm, Cm (B, L, G, N, 1); D, bias (G, 1, Dg)."""

    @staticmethod
    def forward(ctx: Any, u: Tensor, delta: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor, D: Tensor, z: Tensor,  # type: ignore[override]
                bias: Tensor, proj: Tensor | None, keep: Tensor | None, block: int, chunk: int,
                memo: dict | None, lib: Any = None) -> Tensor:
        ctx.block, ctx.chunk, ctx.lib = block, chunk, lib
        bsz, length = u.shape[:2]
        state = (bsz, *A.shape)                         # (B, G, N, Dg)
        if memo is not None and "entering" in memo:
            # a checkpointed layer re-running its forward inside backward: only what backward needs is wanted (the
            # inputs and the states entering each block, kept from the first run); the output is not used
            ctx.save_for_backward(u, delta, A, Bm, Cm, D, z, bias, proj, keep, memo.pop("entering"))
            return u.new_zeros(u.shape)
        entering = u.new_empty(-(-length // block), *state)
        y = u.new_empty(u.shape)
        h0 = u.new_zeros(state)
        if lib is not None:                             # the C kernel: states, y = Σ C h + D u, a block per call
            for i, s in enumerate(range(0, length, block)):
                e = min(s + block, length)
                entering[i] = h0
                dtb = _steps(_pre(delta[:, s:e], proj, bias), keep, s, e)
                scan_kernel.forward_block(lib, u[:, s:e], dtb, A, Bm[:, s:e], Cm[:, s:e], D, h0, y[:, s:e])
                if z is not None:
                    y[:, s:e].mul_(F.silu(z[:, s:e]))
            if memo is not None:
                memo["entering"] = entering
            ctx.save_for_backward(u, delta, A, Bm, Cm, D, z, bias, proj, keep, entering)
            return y
        work = _Work(u, bsz, min(block, -(-length // chunk) * chunk), A.shape, chunk, backward=False)
        for i, s in enumerate(range(0, length, block)):
            e = min(s + block, length)
            entering[i] = h0
            work.inputs(u[:, s:e], _steps(_pre(delta[:, s:e], proj, bias), keep, s, e), A, Bm[:, s:e], h0)
            work.states()
            h = work.h
            yb = y[:, s:e]
            torch.matmul(Cm[:, s:e].transpose(-1, -2), h[:, : e - s], out=yb)    # (1, N) @ (N, Dg) per position
            yb.addcmul_(u[:, s:e], D)
            if z is not None:
                yb.mul_(F.silu(z[:, s:e]))
            h0 = h[:, e - s - 1].clone()
        if memo is not None:
            memo["entering"] = entering
        ctx.save_for_backward(u, delta, A, Bm, Cm, D, z, bias, proj, keep, entering)
        return y

    @staticmethod
    def backward(ctx: Any, gout: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        """Block by block from the end: recompute the block's states, run the adjoint recurrence, and form every
        gradient of the block; only the gradients themselves are full-length buffers."""
        u, delta, A, Bm, Cm, D, z, bias, proj, keep, entering = ctx.saved_tensors
        block, chunk = ctx.block, ctx.chunk
        bsz, length = u.shape[:2]
        gu, gdelta, gB, gC = torch.empty_like(u), torch.empty_like(delta), torch.empty_like(Bm), torch.empty_like(Cm)
        gproj = None if proj is None else torch.zeros_like(proj)
        gbias = torch.zeros_like(bias)
        gz = None if z is None else torch.empty_like(z)
        gAA, gD = torch.zeros_like(A), torch.zeros_like(D)    # gAA: Σ dL/dA · A (see below)
        g_next = u.new_zeros(bsz, *A.shape)             # dL/d(last state of the block) from later blocks
        if ctx.lib is not None:
            return _kernel_backward(ctx.lib, block, gout, u, delta, A, Bm, Cm, D, z, bias, proj, keep, entering,
                                    gu, gdelta, gB, gC, gproj, gbias, gz, gD, g_next)
        work = _Work(u, bsz, min(block, -(-length // chunk) * chunk), A.shape, chunk, backward=True)
        for i in reversed(range(len(entering))):
            s = i * block
            e = min(s + block, length)
            k = e - s
            ub, Bb, Cb, go = u[:, s:e], Bm[:, s:e], Cm[:, s:e], gout[:, s:e]
            pre = _pre(delta[:, s:e], proj, bias)
            dtb = _steps(pre, keep, s, e)
            gy = go if z is None else go * F.silu(z[:, s:e])    # d out / d y = silu(z)
            work.inputs(ub, dtb, A, Bb, entering[i])
            work.states()                               # h: the states again (a kept)
            kp = work.k
            g = torch.mul(_pad_time(Cb, kp - k), _pad_time(gy, kp - k), out=work.g)   # C_t ⊗ gy_t
            g[:, kp - 1] += g_next                      # padded steps pass it on unchanged (decay 1)
            work.adjoint()                              # g_t = dL/dh_t
            g_next = work.a[:, 0] * g[:, 0]
            h, g, a = work.h[:, :k], g[:, :k], work.a[:, :k]
            if z is not None:                           # d silu(z)/dz = σ(z)·(1 + z·(1 − σ(z))), times y + D·u
                zb = z[:, s:e]
                sz = torch.sigmoid(zb)
                y = torch.matmul(Cb.transpose(-1, -2), h).addcmul_(ub, D).mul_(go)
                torch.mul(torch.sub(1.0, sz).mul_(zb).add_(1.0).mul_(sz), y, out=gz[:, s:e])
            torch.matmul(h, gy.transpose(-1, -2), out=gC[:, s:e])       # Σ_d h_t gy_t: (N, Dg) @ (Dg, 1)
            gdu = torch.matmul(Bb.transpose(-1, -2), g)                  # dL/d(dt·u) = Σ_n g_t B_t
            torch.matmul(g, (dtb * ub).transpose(-1, -2), out=gB[:, s:e])
            q = a.mul_(g)                               # dL/d(dt ⊗ A) = g_t · a_t · h_{t-1}
            del g
            q[:, 1:].mul_(h[:, :-1])
            q[:, 0].mul_(entering[i])
            del h
            q.mul_(A)                                   # · A: Σ_n gives dL/d(dt) through the decays
            gdt = q.sum(-2, keepdim=True).addcmul_(gdu, ub)
            gAA += q.mul_(dtb).sum((0, 1))              # Σ_t q·A·dt: divided by A once, at the end
            del q
            _delta_grads(gdt, pre, keep, s, e, delta, proj, gdelta, gproj, gbias)
            gD += (gy * ub).sum((0, 1))
            torch.addcmul(gy * D, gdu, dtb, out=gu[:, s:e])
        return gu, gdelta, gAA / A, gB, gC, gD, gz, gbias, gproj, None, None, None, None, None


def _delta_grads(gdt: Tensor, pre: Tensor, keep: Tensor | None, s: int, e: int, delta: Tensor, proj: Tensor | None,
                 gdelta: Tensor, gproj: Tensor | None, gbias: Tensor) -> None:
    """A block's dL/d(dt) back through softplus, the keep mask and (with `proj`) the per-group low-rank projection
    delta = dt_low @ projᵀ: fills gdelta[:, s:e], accumulates gbias and gproj. gdt is overwritten."""
    gpre = gdt.mul_(torch.sigmoid_(pre))                # softplus' = σ
    if keep is not None:
        gpre.mul_(keep[:, s:e, None, None, None])
    gbias += gpre.sum((0, 1))
    if proj is None:
        gdelta[:, s:e] = gpre
        return
    bsz, k = gpre.shape[:2]
    for j in range(proj.shape[0]):
        gp, dl = gpre[:, :, j, 0].flatten(0, 1), delta[:, s:e, j, 0].flatten(0, 1)
        gdelta[:, s:e, j, 0] = (gp @ proj[j]).view(bsz, k, -1)
        gproj[j].addmm_(gp.t(), dl)                     # type: ignore[index]


def _kernel_backward(lib: Any, block: int, gout: Tensor, u: Tensor, delta: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor,
                     D: Tensor, z: Tensor | None, bias: Tensor, proj: Tensor | None, keep: Tensor | None,
                     entering: Tensor, gu: Tensor, gdelta: Tensor, gB: Tensor, gC: Tensor, gproj: Tensor | None,
                     gbias: Tensor, gz: Tensor | None, gD: Tensor, g_next: Tensor) -> tuple[Tensor | None, ...]:
    """`_ChunkedScan.backward` with the C kernel doing a block's states, adjoint and contractions (gu, the raw
    d/d(dt), gB, gC, gA, gD and the ungated y for the gate's gradient); the O(L·D) rest stays here."""
    length = u.shape[1]
    gA = torch.zeros_like(A)
    for i in reversed(range(len(entering))):
        s = i * block
        e = min(s + block, length)
        pre = _pre(delta[:, s:e], proj, bias)
        dtb = _steps(pre, keep, s, e).contiguous()
        go = gout[:, s:e]
        gy = (go if z is None else go * F.silu(z[:, s:e])).contiguous()
        gdt, yr = torch.empty_like(gy), torch.empty_like(gy)
        scan_kernel.backward_block(lib, u[:, s:e], dtb, A, Bm[:, s:e], Cm[:, s:e], D, entering[i], gy, g_next,
                                   gu[:, s:e], gdt, gB[:, s:e], gC[:, s:e], gA, gD, yr)
        if z is not None:                               # d silu(z)/dz = σ(z)·(1 + z·(1 − σ(z))), times y · gout
            zb = z[:, s:e]
            sz = torch.sigmoid(zb)
            torch.mul(torch.sub(1.0, sz).mul_(zb).add_(1.0).mul_(sz), yr.mul_(go), out=gz[:, s:e])
        _delta_grads(gdt, pre, keep, s, e, delta, proj, gdelta, gproj, gbias)
    return gu, gdelta, gA, gB, gC, gD, gz, gbias, gproj, None, None, None, None, None


def _mamba_ssm_scan() -> Any:
    """mamba-ssm's fused CUDA scan when that package imports, else None (it is optional)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # not installed, or built for another torch/CUDA: the PyTorch scan is used
        return None
    return selective_scan_fn


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, *, block: int = BLOCK,
                   chunk: int = CHUNK, use_kernel: bool = True, memo: dict | None = None,
                   delta_proj: Tensor | None = None, keep: Tensor | None = None,
                   cpu_kernel: bool | None = None) -> Tensor:
    """Mamba's S6 with dt = softplus(delta + delta_bias), the D·u skip and the SiLU(z) gate.

    u, delta, z: (B, L, D); A: (D, N) (negative); Bm, Cm: (B, L, N), or (B, L, G, N) when the D channels form G
    groups of D/G with their own B and C; D, delta_bias: (D,) -> (B, L, D) float32.
    Runs in float32 whatever the autocast setting (the recurrence accumulates over thousands of steps).
    `memo`: a dict shared by the two runs of a checkpointed layer (the first fills it, the re-run in backward
    then skips the scan, whose output it does not need).
    `delta_proj` (D, R): delta is low-rank (B, L, R) — or (B, L, G, R) — and the scan applies Mamba's dt_proj
    weight itself, block by block (so the full-length delta and its gradient never exist). `keep` (B, L) bool: False
    marks absent tokens, whose dt is 0 (no decay, no input), as delta = -∞ would.
    `cpu_kernel`: on a CPU, run a block's inner work in the compiled C kernel of `scan_kernel` (None: when it
    builds and SSLKIT_SCAN_KERNEL is not 0; False: plain PyTorch; True: the kernel, or an error if it cannot build).
    """
    device = u.device.type
    bsz, length, d = u.shape
    groups = Bm.shape[2] if Bm.dim() == 4 else 1
    if use_kernel and device == "cuda" and (kernel := _mamba_ssm_scan()) is not None:
        if delta_proj is not None:
            low = delta.reshape(bsz, length, groups, -1)
            w = delta_proj.reshape(groups, d // groups, -1)
            delta = torch.einsum("blgr,gdr->blgd", low, w.to(low.dtype)).reshape(bsz, length, d)
        if keep is not None:
            delta = delta.masked_fill(~keep.unsqueeze(-1), -1e4)
        t = lambda x: x.float().transpose(1, 2).contiguous()  # noqa: E731
        g = lambda m: m.float().reshape(bsz, length, groups, -1).permute(0, 2, 3, 1).contiguous()  # noqa: E731
        with torch.autocast(device, enabled=False):
            out = kernel(t(u), t(delta), A.float(), g(Bm), g(Cm), None if D is None else D.float(),
                         None if z is None else t(z), None if delta_bias is None else delta_bias.float(),
                         delta_softplus=True)
        return out.transpose(1, 2)
    # a block holds `block` (batch × step) positions, so its states stay cache-sized whatever the batch
    chunk = max(1, min(chunk, block))
    block = max(chunk, block // max(1, bsz) // chunk * chunk)
    dg, n = d // groups, A.shape[1]
    lib = None
    if device == "cpu" and cpu_kernel is not False:
        lib = scan_kernel.load() if n <= scan_kernel.MAX_STATE else None
        if lib is None and cpu_kernel:
            reason = getattr(scan_kernel.load, "reason", "?") if n <= scan_kernel.MAX_STATE else f"d_state {n} > 64"
            raise RuntimeError(f"the CPU scan kernel is not available: {reason}")
    with torch.autocast(device, enabled=False):
        # channels as (G, 1, Dg) and B/C as (G, N, 1): views of the caller's fp32 tensors whenever their last dim is
        # contiguous (z and B, C are column slices of larger projections: no copies)
        last = lambda x: x if x.stride(-1) == 1 else x.contiguous()  # noqa: E731
        f = lambda x, w=dg: None if x is None else last(x.float()).view(bsz, length, groups, 1, w)  # noqa: E731
        m = lambda x: last(x.float()).view(bsz, length, groups, n, 1)  # noqa: E731
        c = lambda x: x.float().view(groups, 1, dg)  # noqa: E731
        zeros = u.new_zeros(d, dtype=torch.float32)
        proj = None if delta_proj is None else delta_proj.float().view(groups, dg, -1)
        y = _ChunkedScan.apply(f(u), f(delta, dg if proj is None else proj.shape[2]),
                               A.float().view(groups, dg, n).transpose(1, 2).contiguous(), m(Bm), m(Cm),
                               c(zeros if D is None else D), f(z), c(zeros if delta_bias is None else delta_bias), proj,
                               None if keep is None else keep.to(torch.float32), block, chunk, memo, lib)
    return y.view(bsz, length, d)
