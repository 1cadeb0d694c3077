"""The chunked selective scan equals the step-by-step recurrence (forward and gradients) and stays finite — also with
channel groups (both Mamba directions in one scan), a low-rank delta projected inside the scan, and absent tokens —
on both CPU paths: plain PyTorch and the compiled C kernel (`scan_kernel`; skipped where no C compiler builds it)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sslkit.domains.audio import scan_kernel
from sslkit.domains.audio.scan import selective_scan, selective_scan_reference

PATHS = [pytest.param(False, id="torch"),
         pytest.param(True, id="kernel", marks=pytest.mark.skipif(scan_kernel.load() is None,
                                                                  reason="the C scan kernel does not build here"))]


def reference(u, delta, A, Bm, Cm, D, z, bias):  # noqa: ANN001, ANN201
    """Mamba's S6 written out with the sequential recurrence (the definition the chunked scan must match)."""
    dt = F.softplus(delta + bias)
    return (selective_scan_reference(u, dt, A, Bm, Cm) + u * D) * F.silu(z)


def inputs(length: int, seed: int = 0, batch: int = 2, d: int = 6, n: int = 4, dt_scale: float = 1.0):  # noqa: ANN201
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, length, d, generator=g)
    delta = torch.randn(batch, length, d, generator=g) * dt_scale
    A = -torch.rand(d, n, generator=g) * 8 - 0.5
    Bm, Cm = torch.randn(batch, length, n, generator=g), torch.randn(batch, length, n, generator=g)
    D, z, bias = torch.randn(d, generator=g), torch.randn(batch, length, d, generator=g), torch.randn(d, generator=g) * 0.5
    return [t.requires_grad_() for t in (u, delta, A, Bm, Cm, D, z, bias)]


# lengths below, at and across chunk (8) and block (32) boundaries, none of them needing to be multiples
@pytest.mark.parametrize("kernel", PATHS)
@pytest.mark.parametrize("length", [1, 7, 8, 13, 32, 45, 100])
def test_chunked_scan_matches_sequential_reference_forward_and_gradients(length, kernel):
    # 20 channels: one whole 16-channel pass of the kernel and a partial one
    args = inputs(length, seed=length, d=20 if length == 45 else 6)
    u, delta, A, Bm, Cm, D, z, bias = args
    got = selective_scan(u, delta, A, Bm, Cm, D, z, bias, block=32, chunk=8, use_kernel=False, cpu_kernel=kernel)
    want = reference(*args)
    assert got.dtype == torch.float32 and got.shape == u.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    w = torch.randn(got.shape, generator=torch.Generator().manual_seed(1))
    g_got = torch.autograd.grad((got * w).sum(), args)
    g_want = torch.autograd.grad((want * w).sum(), args)
    for name, a, b in zip(("u", "delta", "A", "B", "C", "D", "z", "delta_bias"), g_got, g_want):
        scale = max(1.0, float(b.abs().max()))
        assert float((a - b).abs().max()) <= 1e-5 * scale, name


# the path the model takes: B/C per channel group, delta = dt_low @ dt_projᵀ formed inside the scan, absent tokens
@pytest.mark.parametrize("kernel", PATHS)
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("length", [1, 13, 45, 100])
def test_grouped_low_rank_masked_scan_matches_reference(groups, length, kernel):
    g = torch.Generator().manual_seed(100 + length)
    b, d, n, rank = 2, 6, 4, 3
    u, z = torch.randn(b, length, d, generator=g), torch.randn(b, length, d, generator=g)
    low = torch.randn(b, length, groups, rank, generator=g)
    proj = torch.randn(d, rank, generator=g) * 0.5
    A = -torch.rand(d, n, generator=g) * 8 - 0.5
    Bm, Cm = torch.randn(b, length, groups, n, generator=g), torch.randn(b, length, groups, n, generator=g)
    D, bias = torch.randn(d, generator=g), torch.randn(d, generator=g) * 0.5
    keep = torch.rand(b, length, generator=g) > 0.3
    args = [t.requires_grad_() for t in (u, low, A, Bm, Cm, D, z, bias, proj)]
    got = selective_scan(*args[:8], block=32, chunk=8, use_kernel=False, delta_proj=proj, keep=keep,
                         cpu_kernel=kernel)
    delta = torch.einsum("blgr,gdr->blgd", low, proj.view(groups, d // groups, rank)).reshape(b, length, d)
    want = reference(u, delta.masked_fill(~keep.unsqueeze(-1), -1e4), A, Bm, Cm, D, z, bias)   # the model's old path
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    w = torch.randn(got.shape, generator=g)
    g_got = torch.autograd.grad((got * w).sum(), args)
    g_want = torch.autograd.grad((want * w).sum(), args)
    for name, x, y in zip(("u", "dt_low", "A", "B", "C", "D", "z", "delta_bias", "dt_proj"), g_got, g_want):
        assert float((x - y).abs().max()) <= 1e-5 * max(1.0, float(y.abs().max())), name


def test_conv_silu_equals_conv1d_then_silu():
    """A Mamba direction's conv + SiLU (shifted products, hand-written backward) equals PyTorch's padded conv1d
    followed by SiLU, output and gradients."""
    from sslkit.domains.audio.model import MambaDirection, _causal_conv, _ConvSiLU

    torch.manual_seed(0)
    m = MambaDirection(6, 4, 4, 2)
    for length in (1, 3, 20):
        u = torch.randn(2, length, 6, requires_grad=True)
        got = _ConvSiLU.apply(u, m.conv1d.weight[:, 0], m.conv1d.bias)
        want = F.silu(m.conv1d(u.transpose(1, 2))[..., :length].transpose(1, 2))
        torch.testing.assert_close(_causal_conv(u, m.conv1d.weight[:, 0], m.conv1d.bias),
                                   m.conv1d(u.transpose(1, 2))[..., :length].transpose(1, 2))
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        w = torch.randn(got.shape)
        g_got = torch.autograd.grad((got * w).sum(), [u, m.conv1d.weight, m.conv1d.bias])
        g_want = torch.autograd.grad((want * w).sum(), [u, m.conv1d.weight, m.conv1d.bias])
        for x, y in zip(g_got, g_want):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel", PATHS)
@pytest.mark.parametrize("block, chunk", [(1, 1), (5, 2), (16, 16), (64, 8), (256, 16)])
def test_block_and_chunk_sizes_do_not_change_the_result(block, chunk, kernel):
    u, delta, A, Bm, Cm, D, z, bias = inputs(70, seed=3)
    base = selective_scan(u, delta, A, Bm, Cm, D, z, bias, block=70, chunk=70, use_kernel=False, cpu_kernel=False)
    other = selective_scan(u, delta, A, Bm, Cm, D, z, bias, block=block, chunk=chunk, use_kernel=False,
                           cpu_kernel=kernel)
    torch.testing.assert_close(other, base, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel", PATHS)
def test_huge_steps_and_decays_stay_finite(kernel):
    """dt·A of -10⁴ (a state that forgets at once) must give zeros, never inf/NaN from exp of a large number."""
    u, delta, A, Bm, Cm, D, z, bias = inputs(50, seed=5, dt_scale=1e4)
    got = selective_scan(u, delta, A, Bm, Cm, D, z, bias, block=16, chunk=4, use_kernel=False, cpu_kernel=kernel)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, reference(u, delta, A, Bm, Cm, D, z, bias), atol=1e-3, rtol=1e-4)
    got.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (u, delta, A, Bm, Cm))


@pytest.mark.parametrize("kernel", PATHS)
def test_runs_in_float32_under_bf16_autocast(kernel):
    u, delta, A, Bm, Cm, D, z, bias = inputs(40, seed=7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = selective_scan(u.bfloat16(), delta.bfloat16(), A, Bm.bfloat16(), Cm.bfloat16(), D, z.bfloat16(), bias,
                             block=16, chunk=4, use_kernel=False, cpu_kernel=kernel)
    assert got.dtype == torch.float32
    want = reference(*(t.bfloat16().float() if t.dim() == 3 else t for t in (u, delta, A, Bm, Cm, D, z, bias)))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(scan_kernel.load() is None, reason="the C scan kernel does not build here")
def test_ssamba_encoder_is_the_same_with_and_without_the_kernel(monkeypatch):
    """The whole SSAMBA encoder (recomputed directions, padded clips of different lengths, d_state 16 — the
    kernel's compiled-for-16 copy — and 48 inner channels: three 16-channel passes): tokens and every parameter
    gradient agree between the C kernel and the PyTorch scan."""
    from sslkit.domains.audio.model import AudioEncoder

    torch.manual_seed(0)
    enc = AudioEncoder("ssamba", n_mels=32, clip_frames=64, dim=24, depth=2, patch_freq=8, patch_time=8,
                       d_state=16, scan_block=16, scan_chunk=4)
    g = torch.Generator().manual_seed(0)
    fbank = torch.randn(2, 64, 32, generator=g)
    valid = torch.arange(64)[None, :] < torch.tensor([[64], [37]])
    w = torch.randn(2, 32, 24, generator=g)   # a random projection: a norm of the tokens would cancel most gradients
    runs = []
    for off in ("1", "0"):
        with monkeypatch.context() as m:
            m.setenv("SSLKIT_SCAN_KERNEL", off)
            scan_kernel.load.cache_clear()
            try:
                enc.zero_grad()
                tokens = enc.tokens(fbank, valid)
                (tokens * w).sum().backward()
                runs.append((tokens.detach(), {n: p.grad.clone() for n, p in enc.named_parameters()
                                               if p.grad is not None}))
            finally:
                scan_kernel.load.cache_clear()
    (t_kernel, g_kernel), (t_torch, g_torch) = runs
    torch.testing.assert_close(t_kernel, t_torch, atol=1e-5, rtol=1e-5)
    assert g_kernel.keys() == g_torch.keys() and any("A_log" in n for n in g_kernel)
    for n in g_torch:   # each gradient to 1e-5 of its own largest entry (A_log's are ~1e-3 of the others')
        scale = float(g_torch[n].abs().max())
        assert scale > 0 and float((g_kernel[n] - g_torch[n]).abs().max()) <= 1e-5 * scale, n


def test_kernel_off_or_unbuildable_falls_back_to_pytorch(monkeypatch, tmp_path):
    """SSLKIT_SCAN_KERNEL=0, or a compiler that cannot build, leaves the scan on plain PyTorch with the same result;
    asking for the kernel then says why it is missing."""
    args = inputs(30, seed=9)
    want = selective_scan(*args, block=16, chunk=4, use_kernel=False, cpu_kernel=False)
    for env in ({"SSLKIT_SCAN_KERNEL": "0"}, {"CC": str(tmp_path / "no-such-cc"), "SSLKIT_CACHE_DIR": str(tmp_path)}):
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            scan_kernel.load.cache_clear()
            try:
                assert scan_kernel.load() is None
                got = selective_scan(*args, block=16, chunk=4, use_kernel=False)
                torch.testing.assert_close(got, want, atol=0, rtol=0)
                with pytest.raises(RuntimeError, match="not available"):
                    selective_scan(*args, block=16, chunk=4, use_kernel=False, cpu_kernel=True)
            finally:
                scan_kernel.load.cache_clear()


@pytest.mark.gpu
def test_cuda_scan_matches_reference():
    """On CUDA (with the mamba-ssm kernel when it imports, else the PyTorch scan) the result equals the reference."""
    args = [t.detach().cuda().requires_grad_() for t in inputs(300, seed=11)]
    got = selective_scan(*args)
    torch.testing.assert_close(got, reference(*args), atol=1e-4, rtol=1e-4)
    got.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in args)
