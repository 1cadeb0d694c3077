"""3-D encoders: a residual conv net (Alice, CPU-friendly) and MONAI's Swin ViT (SwinUNETR-SSL).

Both expose `pyramid(x) -> [feature maps]` (strides 2, 4, 8, ...; channels in `.channels`)
for the segmentation decoder, and `forward(x) -> (B, D)` (global average pool of the
deepest map) for embeddings. Registered in `ENCODERS` for `sslkit.load_encoder`.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

SIZES = {"tiny": [16, 32, 64, 128], "small": [32, 64, 128, 256], "base": [48, 96, 192, 384]}


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 even under bf16 autocast (bf16 statistics gave 1e33 gradients on CPU)."""

    def forward(self, x: Tensor) -> Tensor:
        # written out: the fused CPU kernel's backward overflowed (1e33 weight gradients) on bf16-produced inputs
        with torch.autocast(x.device.type, enabled=False):
            b, c = x.shape[:2]
            g = x.float().reshape(b, self.num_groups, -1)
            g = (g - g.mean(-1, keepdim=True)) * torch.rsqrt(g.var(-1, unbiased=False, keepdim=True) + self.eps)
            shape = (1, c) + (1,) * (x.dim() - 2)
            y = g.reshape(x.shape) * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def _norm(c: int) -> nn.GroupNorm:
    import math

    return GroupNorm32(math.gcd(8, c), c)


class ResBlock3d(nn.Module):
    """Two 3×3×3 convs with GroupNorm/GELU and a residual: (B, C, X, Y, Z) -> same."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv3d(c, c, 3, padding=1, bias=False), _norm(c), nn.GELU(),
                                  nn.Conv3d(c, c, 3, padding=1, bias=False), _norm(c))
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.body(x))


class ConvEncoder3d(nn.Module):
    """Residual 3-D conv encoder: (B, 1, X, Y, Z) -> maps at strides 2, 4, ..., 2^L with `widths` channels.

    Inputs must be divisible by 2^L (L = len(widths)). Stands in for Alice's nnFormer (see METHODS.md CPU-lite).
    """

    def __init__(self, widths: list[int] | None = None, in_channels: int = 1, blocks: int = 1) -> None:
        super().__init__()
        widths = list(widths or SIZES["tiny"])
        self.channels = widths
        self.out_dim = widths[-1]
        self.stride = 2 ** len(widths)
        stages, prev = [], in_channels
        for w in widths:
            down = nn.Sequential(nn.Conv3d(prev, w, 2, stride=2, bias=False), _norm(w), nn.GELU())
            stages.append(nn.Sequential(down, *[ResBlock3d(w) for _ in range(blocks)]))
            prev = w
        self.stages = nn.ModuleList(stages)

    def pyramid(self, x: Tensor) -> list[Tensor]:
        """[(B, widths[i], X / 2^(i+1), ...)] for every stage."""
        feats = []
        for stage in self.stages:
            if x.shape[2:].numel() <= 4096:  # small maps run in fp32: bf16 oneDNN conv gave 1e33 weight gradients
                with torch.autocast(x.device.type, enabled=False):
                    x = stage(x.float())
            else:
                x = stage(x)
            feats.append(x)
        return feats

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1, X, Y, Z) -> (B, out_dim) pooled embedding."""
        return self.pyramid(x)[-1].mean(dim=(2, 3, 4))


class SwinEncoder3d(nn.Module):
    """MONAI's Swin ViT (as in SwinUNETR): (B, 1, X, Y, Z) -> 5 maps at strides 2..32, channels f·[1,2,4,8,16].

    Parameter names match `SwinUNETR.swinViT`, so weights move between the two.
    """

    def __init__(self, feature_size: int = 48, depths: list[int] | None = None, num_heads: list[int] | None = None,
                 window_size: int = 7, in_channels: int = 1) -> None:
        super().__init__()
        from monai.networks.nets.swin_unetr import SwinTransformer

        self.swinViT = SwinTransformer(in_chans=in_channels, embed_dim=feature_size, window_size=(window_size,) * 3,
                                       patch_size=(2, 2, 2), depths=depths or [2, 2, 2, 2],
                                       num_heads=num_heads or [3, 6, 12, 24], spatial_dims=3)
        self.channels = [feature_size * 2 ** i for i in range(5)]
        self.out_dim = self.channels[-1]
        self.stride = 32

    def pyramid(self, x: Tensor) -> list[Tensor]:
        return list(self.swinViT(x, normalize=True))

    def forward(self, x: Tensor) -> Tensor:
        return self.pyramid(x)[-1].mean(dim=(2, 3, 4))


def conv_encoder(widths: list[int] | None = None, in_channels: int = 1, blocks: int = 1) -> ConvEncoder3d:
    return ConvEncoder3d(widths, in_channels, blocks)


def swin_encoder(feature_size: int = 48, depths: list[int] | None = None, num_heads: list[int] | None = None,
                 window_size: int = 7, in_channels: int = 1) -> SwinEncoder3d:
    return SwinEncoder3d(feature_size, depths, num_heads, window_size, in_channels)


ENCODERS: dict[str, Callable[..., nn.Module]] = {"conv3d": conv_encoder, "swin": swin_encoder}


def input_conv(encoder: nn.Module) -> nn.Conv3d:
    """The convolution that reads the image (conv3d: the first downsampling; swin: the patch embedding)."""
    return next(m for m in encoder.modules() if isinstance(m, nn.Conv3d))


@torch.no_grad()
def embed_volume(encoder: nn.Module, image: Tensor, roi: int) -> tuple[Tensor, Tensor]:
    """One vector per volume: the encoder's deepest map over ROI tiles, stitched into a grid, then averaged.

    image (1, C, X, Y, Z) -> (vector (D,), per-patch grid (D, ceil(X/roi)·roi/s, ...) at encoder stride s).
    The volume is zero-padded to whole tiles; each tile is encoded on its own.
    """
    pads = [(-n) % roi for n in image.shape[2:]]
    x = nn.functional.pad(image, [0, pads[2], 0, pads[1], 0, pads[0]])
    n = [d // roi for d in x.shape[2:]]
    rows = []
    for i in range(n[0]):
        for j in range(n[1]):
            for k in range(n[2]):
                tile = x[:, :, i * roi:(i + 1) * roi, j * roi:(j + 1) * roi, k * roi:(k + 1) * roi]
                rows.append(encoder.pyramid(tile)[-1][0])
    d, g = rows[0].shape[0], rows[0].shape[1:]
    grid = torch.stack(rows).view(n[0], n[1], n[2], d, *g).permute(3, 0, 4, 1, 5, 2, 6)
    grid = grid.reshape(d, n[0] * g[0], n[1] * g[1], n[2] * g[2])
    return grid.float().mean(dim=(1, 2, 3)), grid.float()
