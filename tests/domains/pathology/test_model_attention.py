"""The tile encoder switches timm's attention path per forward: fused (scaled_dot_product_attention) in fp32,
materialised under bf16 autocast on a CPU (faster there, docs/performance.md) — with the same features."""
from __future__ import annotations

import torch

from sslkit.domains.pathology.model import ViTEncoder


def test_bf16_cpu_forward_uses_materialised_attention_and_gives_the_fp32_features() -> None:
    torch.manual_seed(0)
    enc = ViTEncoder("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2,
                     pool="cls+mean").eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        fp32 = enc(x)
        assert all(b.attn.fused_attn for b in enc.vit.blocks)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = enc(x).float()
        assert not any(b.attn.fused_attn for b in enc.vit.blocks)
        again = enc(x)
    assert all(b.attn.fused_attn for b in enc.vit.blocks)
    assert torch.equal(fp32, again)
    assert (bf16 - fp32).abs().max() < 0.05 * fp32.abs().max()
