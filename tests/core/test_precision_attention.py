"""`core.precision.attention`: materialised bf16 products on a CPU under bf16 autocast (PyTorch's fused CPU kernel
is slower there), the fused kernel everywhere else, the same values either way; and TERA's layer, which routes the
stock `nn.TransformerEncoderLayer` attention through it without changing its parameters or its fp32 results."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslkit.core import precision


def _qkv(b: int = 2, h: int = 3, t: int = 20, e: int = 16) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(b, h, t, e, generator=g, requires_grad=True) for _ in range(3))


def _keep(b: int = 2, t: int = 20) -> torch.Tensor:
    keep = torch.ones(b, 1, 1, t, dtype=torch.bool)
    keep[1, ..., 13:] = False                  # the second sequence has 7 padded keys
    return keep


@pytest.fixture
def sdpa_calls(monkeypatch: pytest.MonkeyPatch) -> list[torch.dtype]:
    """Records the dtype of every call to PyTorch's fused attention."""
    calls: list[torch.dtype] = []
    real = F.scaled_dot_product_attention

    def spy(q, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append(q.dtype)
        return real(q, *a, **kw)
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return calls


def test_bf16_autocast_on_cpu_materialises_and_matches_the_fused_fp32_result(sdpa_calls) -> None:  # noqa: ANN001
    q, k, v = _qkv()
    keep = _keep()
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    ref.square().sum().backward()
    ref_grads = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    sdpa_calls.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = precision.attention(q, k, v, keep)
    assert sdpa_calls == []                                   # no fused kernel under CPU bf16 autocast
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
    out.float().square().sum().backward()
    for x, g in zip((q, k, v), ref_grads):
        assert torch.isfinite(x.grad).all()
        assert (x.grad - g).norm() / g.norm() < 3e-2          # bf16 rounding, not another function


def test_fp32_and_long_sequences_use_the_fused_kernel(sdpa_calls, monkeypatch) -> None:  # noqa: ANN001
    q, k, v = _qkv()
    precision.attention(q, k, v, _keep())
    assert sdpa_calls == [torch.float32]                      # fp32: PyTorch's kernel (fastest there)
    monkeypatch.setattr(precision, "MATERIALISE_MAX", 20 * 20 - 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        precision.attention(q, k, v)
    assert len(sdpa_calls) == 2                               # scores larger than the cap are never materialised


def test_masked_keys_get_no_weight_in_the_materialised_path() -> None:
    q, k, v = _qkv()
    keep = _keep()
    v2 = v.detach().clone()
    v2[1, :, 13:] = 1e4                                       # values behind the mask must not leak into the output
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = precision.attention(q, k, v, keep)
        b = precision.attention(q, k, v2, keep)
    assert torch.equal(a, b)


def test_a_float_mask_is_added_to_the_scores_as_in_the_fused_kernel() -> None:
    q, k, v = _qkv()
    keep = _keep()
    bias = torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))
    bias[0, ..., 3] = 0.7                                     # a real additive bias on one key
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = precision.attention(q, k, v, bias)
        as_bool = precision.attention(q, k, v, keep)
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
    assert not torch.allclose(out.float(), as_bool.float(), atol=1e-3)   # the 0.7 counted


def test_tera_layer_is_the_stock_layer_in_fp32_and_skips_the_fused_kernel_in_bf16(sdpa_calls) -> None:  # noqa: ANN001
    pytest.importorskip("sslkit.domains.audio.model")
    from sslkit.domains.audio.model import TeraLayer

    torch.manual_seed(0)
    stock = nn.TransformerEncoderLayer(32, 4, 64, 0.0, activation="gelu", batch_first=True)
    ours = TeraLayer(32, 4, 64, 0.0, activation="gelu", batch_first=True)
    assert list(ours.state_dict()) == list(stock.state_dict())   # checkpoints and exports of either load in the other
    ours.load_state_dict(stock.state_dict())
    x = torch.randn(3, 10, 32)
    pad = torch.zeros(3, 10, dtype=torch.bool)
    pad[1, 7:] = True
    for mask in (pad, None):
        a, b = stock(x, src_key_padding_mask=mask), ours(x, src_key_padding_mask=mask)
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
        a.sum().backward()
        b.sum().backward()
        for (name, p), q in zip(stock.named_parameters(), ours.parameters()):
            torch.testing.assert_close(q.grad, p.grad, atol=1e-4, rtol=1e-4, msg=name)
        stock.zero_grad()
        ours.zero_grad()
    sdpa_calls.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ours(x, src_key_padding_mask=pad)
    assert sdpa_calls == [] and torch.isfinite(out).all()
    bias = torch.zeros(3, 10)
    bias[0, 2] = 0.5                                           # an additive key bias is not a padding mask: stock path
    torch.testing.assert_close(ours(x, src_key_padding_mask=bias), stock(x, src_key_padding_mask=bias))
