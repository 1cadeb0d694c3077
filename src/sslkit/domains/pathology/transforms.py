"""Pathology views: HED stain jitter, LAB (RandStainNA-style) jitter, dihedral symmetries, blur, mild colour jitter.

Tissue has no canonical orientation, so the 8 symmetries of the square (90° rotations × a flip) are exact, lossless
augmentations. Stain variation between labs is the main nuisance in H&E: `hed_jitter` (Tellez et al. 2018) moves
each pixel's haematoxylin, eosin and DAB concentrations (colour deconvolution, Ruifrok & Johnston 2001, with
scikit-image's matrices) by a random scale and shift, ≈±0.05 per channel (the pathology card). No solarisation.

All randomness comes from torch's global generator, which `fit()` seeds per item from (seed, epoch, index): the views
of an item are the same on resume and under any number of processes. Views are uint8 tensors; the encoder's
`preprocess` normalises them on the device.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

# Ruifrok & Johnston's stain vectors as scikit-image's rgb2hed/hed2rgb use them (rows: H, E, DAB in RGB OD)
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
_LOG_ADJUST = math.log(1e-6)       # scikit-image scales optical density by −log(1e-6) so stains lie near [0, 1]


def rgb_to_hed(rgb: Tensor, clip: bool = True) -> Tensor:
    """RGB in [0, 1] (3, H, W) -> stain concentrations (3, H, W); equals skimage.color.rgb2hed, which clips them
    at 0. clip=False keeps the small negative values of colours outside the three stains' span, so that
    hed_to_rgb inverts it exactly."""
    od = torch.log(rgb.clamp_min(1e-6)) / _LOG_ADJUST
    stains = torch.einsum("chw,cd->dhw", od, HED_FROM_RGB.to(rgb.dtype))
    return stains.clamp_min(0.0) if clip else stains


def hed_to_rgb(stains: Tensor) -> Tensor:
    """Stain concentrations (3, H, W) -> RGB in [0, 1]; equals skimage.color.hed2rgb."""
    log_rgb = torch.einsum("dhw,dc->chw", stains * _LOG_ADJUST, RGB_FROM_HED.to(stains.dtype))
    return torch.exp(log_rgb).clamp(0.0, 1.0)


def hed_jitter(tile: Tensor, sigma: float, bias: float | None = None) -> Tensor:
    """uint8 (3, H, W) -> uint8: per stain channel c' = c·(1 + α) + β, α ~ U(−σ, σ), β ~ U(−bias, bias) (bias=σ).

    The output is kept in [1, 255], the input's optical-density range (no pixel becomes fully opaque). The stains are
    not clipped before the jitter, so σ = 0 returns the tile unchanged (clipping would recolour off-span pixels).
    """
    if sigma <= 0 and not bias:
        return tile
    bias = sigma if bias is None else bias
    alpha = 1.0 + (torch.rand(3, dtype=torch.float64) * 2 - 1) * sigma
    beta = (torch.rand(3, dtype=torch.float64) * 2 - 1) * bias
    stains = rgb_to_hed(tile.double() / 255.0, clip=False)
    stains = stains * alpha.view(3, 1, 1) + beta.view(3, 1, 1)
    return (hed_to_rgb(stains) * 255.0).round().clamp(1, 255).to(torch.uint8)


def lab_jitter(tile: Tensor, sigma: float) -> Tensor:
    """RandStainNA-style: in CIE L*a*b*, each channel's mean and spread over the tile are moved at random.

    x' = (x − μ)·(1 + α) + μ + β·R with α, β ~ U(−σ, σ) per channel and R = (100, 128, 128) the channel ranges.
    uint8 (3, H, W) -> uint8.
    """
    if sigma <= 0:
        return tile
    from skimage.color import lab2rgb, rgb2lab

    alpha = 1.0 + (torch.rand(3, dtype=torch.float64) * 2 - 1) * sigma
    beta = (torch.rand(3, dtype=torch.float64) * 2 - 1) * sigma * torch.tensor([100.0, 128.0, 128.0], dtype=torch.float64)
    lab = torch.from_numpy(rgb2lab(tile.permute(1, 2, 0).numpy()))           # (H, W, 3) float64
    mu = lab.mean(dim=(0, 1))
    lab = (lab - mu) * alpha + mu + beta
    lab[..., 0] = lab[..., 0].clamp(0.0, 100.0)
    rgb = torch.from_numpy(lab2rgb(lab.numpy())).permute(2, 0, 1)
    return (rgb * 255.0).round().clamp(0, 255).to(torch.uint8)


def dihedral(tile: Tensor, k: int, flip: bool) -> Tensor:
    """One of the 8 symmetries of the square: optional horizontal flip, then k quarter turns. Exact (no resampling)."""
    if flip:
        tile = tile.flip(-1)
    return torch.rot90(tile, k, dims=(-2, -1)) if k % 4 else tile


def random_resized_crop(tile: Tensor, out_px: int, scale: tuple[float, float],
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Tensor:
    """A crop covering a random share `scale` of the area at a random aspect `ratio`, resized to out_px²."""
    import torchvision.transforms.v2 as T
    import torchvision.transforms.v2.functional as F

    if scale[0] >= 1.0 and tile.shape[-1] == tile.shape[-2] == out_px:
        return tile
    top, left, h, w = T.RandomResizedCrop.get_params(tile, list(scale), list(ratio))
    return F.resized_crop(tile, top, left, h, w, [out_px, out_px], antialias=True)


class Augment:
    """One view: crop -> dihedral symmetry -> stain jitter -> mild colour jitter -> Gaussian blur.

    aug: the recipe's `aug` section (see method.PathologyAug). uint8 (3, P, P) -> uint8 (3, out_px, out_px).
    """

    def __init__(self, aug: Any, out_px: int, scale: tuple[float, float], blur_p: float | None = None) -> None:
        self.aug, self.out_px, self.scale = aug, out_px, tuple(scale)
        self.blur_p = aug.blur_p if blur_p is None else blur_p

    def __call__(self, tile: Tensor) -> Tensor:
        import torchvision.transforms.v2.functional as F

        a = self.aug
        x = random_resized_crop(tile, self.out_px, self.scale)  # type: ignore[arg-type]
        k = int(torch.randint(4, ()).item()) if a.rot90 else 0
        flip = bool(torch.rand(()) < 0.5) if a.flip else False
        x = dihedral(x, k, flip)
        if a.stain in ("hed", "hed+lab") and a.hed_sigma > 0:
            x = hed_jitter(x, a.hed_sigma, a.hed_bias)
        if a.stain in ("lab", "hed+lab") and a.lab_sigma > 0:
            x = lab_jitter(x, a.lab_sigma)
        if a.color_p > 0 and bool(torch.rand(()) < a.color_p):
            x = color_jitter(x, a.brightness, a.contrast, a.saturation, a.hue)
        if self.blur_p > 0 and bool(torch.rand(()) < self.blur_p):
            sigma = float(a.blur_sigma[0] + torch.rand(()) * (a.blur_sigma[1] - a.blur_sigma[0]))
            size = max(3, int(2 * math.ceil(2 * sigma) + 1))
            x = F.gaussian_blur(x, [size, size], [sigma, sigma])
        return x


# RGB <-> YIQ (NTSC): hue is the angle of the (I, Q) chroma, so a hue shift is a rotation in that plane
_YIQ_FROM_RGB = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_RGB_FROM_YIQ = torch.linalg.inv(_YIQ_FROM_RGB)
_GREY = torch.tensor([0.299, 0.587, 0.114])


def color_jitter(x: Tensor, brightness: float, contrast: float, saturation: float, hue: float) -> Tensor:
    """Mild brightness/contrast/saturation (factors 1 ± value) and hue (± value of a turn) in a random order,
    uint8 -> uint8, computed in float32 in one pass.

    Brightness, contrast and saturation are torchvision's formulas; hue is a rotation of the YIQ chroma plane, a
    linear 3×3 map. torchvision's HSV round trip cost ~0.8 ms per 112-px crop (6 views per tile in DINO); on an
    H&E tile a ±0.02 shift moves pixels by 3.3 grey levels on average there, and this rotation lands within 1.7 of
    it (the two hue definitions differ)."""
    y = x.float() / 255.0
    for i in torch.randperm(4).tolist():
        amount = (brightness, contrast, saturation, hue)[i]
        if amount <= 0:
            continue
        f = float((torch.rand(()) * 2 - 1) * amount)
        if i == 0:
            y = (y * (1.0 + f)).clamp(0.0, 1.0)
        elif i == 1:
            mean = torch.einsum("chw,c->", y, _GREY) / (y.shape[-1] * y.shape[-2])
            y = (mean + (1.0 + f) * (y - mean)).clamp(0.0, 1.0)
        elif i == 2:
            grey = torch.einsum("chw,c->hw", y, _GREY)
            y = (grey + (1.0 + f) * (y - grey)).clamp(0.0, 1.0)
        else:
            c, s = math.cos(2 * math.pi * f), -math.sin(2 * math.pi * f)     # the direction of torchvision's shift
            rot = torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
            y = torch.einsum("dc,chw->dhw", _RGB_FROM_YIQ @ rot @ _YIQ_FROM_RGB, y).clamp(0.0, 1.0)
    return (y * 255.0).round().to(torch.uint8)


class DinoViews:
    """DINO multi-crop: 2 global crops (global_px) + n_local local crops (local_px) of one tile.

    uint8 (3, P, P) -> {"global": uint8 (2, 3, G, G), "local": uint8 (n_local, 3, L, L)} (no "local" when 0), and
    "mask_seed": int64 () when `masks` (iBOT is on) — the seed of this item's iBOT patch masks (`patch_masks`), drawn
    after the crops (their random numbers are unchanged). The view module does not know the encoder's patch grid, so
    it draws the seed and `forward` lays the masks on the grid; they depend on (seed, epoch, index) alone, as the views.
    """

    def __init__(self, aug: Any, masks: bool = False) -> None:
        self.globals = [Augment(aug, aug.global_px, aug.global_scale, aug.global_blur_p[i]) for i in range(2)]
        self.local = Augment(aug, aug.local_px, aug.local_scale)
        self.n_local = aug.n_local
        self.masks = masks

    def __call__(self, tile: Tensor) -> dict[str, Tensor]:
        out = {"global": torch.stack([g(tile) for g in self.globals])}
        if self.n_local:
            out["local"] = torch.stack([self.local(tile) for _ in range(self.n_local)])
        if self.masks:
            out["mask_seed"] = torch.randint(0, 2**62, ())
        return out


def patch_masks(seeds: Tensor, n_views: int, n_patches: int, prob: float, ratio: tuple[float, float]) -> Tensor:
    """iBOT masks of n_views crops per item: int64 seeds (B,) -> bool (n_views·B, n_patches), view-major (view 0 of
    every item first, as the DINO method stacks its crops).

    Per crop, with probability `prob`, a share r ~ U(ratio) of its patches (at least 2, so a BatchNorm head sees more
    than one row) is masked, chosen uniformly at random (iBOT's "rand" masking; on the 7 × 7 grid of a 112-px crop a
    block mask would cover most of one side). Each item's masks come from a generator seeded with its own seed.
    """
    out = torch.zeros(n_views, len(seeds), n_patches, dtype=torch.bool)
    for i, seed in enumerate(seeds.tolist()):
        g = torch.Generator().manual_seed(int(seed))
        for v in range(n_views):
            draw = torch.rand(2, generator=g, dtype=torch.float64)
            perm = torch.randperm(n_patches, generator=g)
            if draw[0] < prob:
                r = ratio[0] + float(draw[1]) * (ratio[1] - ratio[0])
                out[v, i, perm[: min(n_patches, max(2, round(r * n_patches)))]] = True
    return out.flatten(0, 1)


class PairViews:
    """SimCLR: two independently augmented crops of one tile -> {"views": uint8 (2, 3, G, G)}."""

    def __init__(self, aug: Any) -> None:
        self.view = Augment(aug, aug.global_px, aug.simclr_scale)

    def __call__(self, tile: Tensor) -> dict[str, Tensor]:
        return {"views": torch.stack([self.view(tile), self.view(tile)])}


def build_views(method: str, aug: Any, masks: bool = False) -> DinoViews | PairViews:
    """The views of `method`; `masks`: DINO views also carry the seed of their iBOT masks (loss.ibot_weight > 0)."""
    return DinoViews(aug, masks) if method == "dino" else PairViews(aug)


def collate_views(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack each key's uint8 views over the batch with numpy: {"global": (B, 2, 3, G, G), ...}. torch.stack of uint8
    goes through the intra-op thread pool, which is slow on a busy CPU when it runs in the training process."""
    import numpy as np

    return {k: torch.from_numpy(np.stack([it[k].numpy() for it in items])) for k in items[0]}
