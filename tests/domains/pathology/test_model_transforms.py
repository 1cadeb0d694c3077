"""Tile encoders (every ENCODERS entry) and the pathology views: HED stain jitter against scikit-image's colour
deconvolution, optical density kept in range, exact dihedral symmetries, views reproducible under a seed."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sslkit.domains.pathology import transforms as T
from sslkit.domains.pathology.model import ENCODERS, IMAGENET_MEAN, IMAGENET_STD, ViTEncoder

TINY_VIT = {"arch": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2,
            "num_heads": 2}


def he_tile(seed: int = 0, px: int = 32) -> torch.Tensor:
    """An H&E-coloured uint8 (3, px, px) tile: pink with purple speckle."""
    rng = np.random.default_rng(seed)
    blend = rng.random((px, px, 1))
    img = np.array([225, 140, 185]) * (1 - blend) + np.array([110, 70, 160]) * blend + rng.normal(0, 4, (px, px, 3))
    return torch.from_numpy(np.clip(img, 0, 255).astype(np.uint8)).permute(2, 0, 1).contiguous()


@pytest.mark.parametrize("kind", sorted(ENCODERS))
@pytest.mark.parametrize("pool", ["cls", "cls+mean"])
def test_every_encoder_runs_forward_and_backward_without_nan(kind: str, pool: str) -> None:
    enc = ENCODERS[kind](**TINY_VIT, pool=pool)
    x = enc.preprocess(torch.stack([he_tile(0), he_tile(1)]))
    out = enc(x)
    assert out.shape == (2, 32 if pool == "cls" else 64) == (2, enc.out_dim)
    out.square().sum().backward()
    grads = [p.grad for p in enc.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(out).all() and out.std() > 0
    small = enc(enc.preprocess(torch.stack([he_tile(2, 16)])))        # DINO local crops: another size, same net
    assert small.shape == (1, enc.out_dim)


def test_preprocess_normalises_with_the_encoders_own_statistics() -> None:
    enc = ViTEncoder(**TINY_VIT)
    tiles = torch.stack([he_tile(3)])
    want = (tiles.float() / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(enc.preprocess(tiles), want)
    assert "mean" not in enc.state_dict()          # carried by the spec, not stored as weights
    with pytest.raises(ValueError, match="B, 3, H, W"):
        enc(torch.zeros(1, 1, 32, 32))


def test_hed_conversion_equals_scikit_image() -> None:
    from skimage.color import hed2rgb, rgb2hed

    rgb = he_tile(4).permute(1, 2, 0).numpy()
    ours = T.rgb_to_hed(torch.from_numpy(rgb).permute(2, 0, 1).double() / 255)
    np.testing.assert_allclose(ours.permute(1, 2, 0).numpy(), rgb2hed(rgb), atol=1e-10)
    back = T.hed_to_rgb(ours)
    np.testing.assert_allclose(back.permute(1, 2, 0).numpy(), hed2rgb(rgb2hed(rgb)), atol=1e-10)
    exact = T.hed_to_rgb(T.rgb_to_hed(torch.from_numpy(rgb).permute(2, 0, 1).double() / 255, clip=False))
    np.testing.assert_allclose(exact.permute(1, 2, 0).numpy(), rgb / 255, atol=1e-9)   # unclipped: a true inverse


def test_hed_jitter_keeps_optical_density_in_range_and_moves_stains_by_at_most_sigma() -> None:
    tile = he_tile(5)
    stains = T.rgb_to_hed(tile.double() / 255, clip=False)
    torch.manual_seed(0)
    torch.testing.assert_close(T.hed_jitter(tile, 0.0), tile)                  # sigma 0: untouched
    assert (T.hed_jitter(tile, 1e-9).int() - tile.int()).abs().max() <= 1     # ~0: rounding only
    sigma = 0.05
    for seed in range(20):
        torch.manual_seed(seed)
        out = T.hed_jitter(tile, sigma)
        assert out.dtype == torch.uint8 and out.shape == tile.shape
        od = -torch.log10(out.double() / 255)
        assert od.min() >= 0 and od.max() <= math.log10(255) + 1e-9       # no pixel becomes fully opaque
        moved = T.rgb_to_hed(out.double() / 255, clip=False)
        # c' = c(1 + a) + b with |a|, |b| <= sigma: the per-channel mean moves by at most sigma*mean + sigma (+ rounding)
        bound = sigma * stains.mean(dim=(1, 2)) + sigma + 0.01
        assert ((moved.mean(dim=(1, 2)) - stains.mean(dim=(1, 2))).abs() <= bound).all()
    torch.manual_seed(1)
    a = T.hed_jitter(tile, sigma)
    torch.manual_seed(2)
    assert not torch.equal(a, T.hed_jitter(tile, sigma))                       # it does jitter


def test_lab_jitter_is_identity_at_zero_and_stays_uint8() -> None:
    tile = he_tile(6)
    assert torch.equal(T.lab_jitter(tile, 0.0), tile)
    torch.manual_seed(0)
    out = T.lab_jitter(tile, 0.05)
    assert out.dtype == torch.uint8 and not torch.equal(out, tile)
    assert (out.int() - tile.int()).abs().float().mean() < 40


def test_dihedral_symmetries_are_exact_and_all_eight_differ() -> None:
    tile = he_tile(7)
    seen = set()
    for k in range(4):
        for flip in (False, True):
            out = T.dihedral(tile, k, flip)
            assert torch.equal(out.flatten(1).sort(dim=1).values, tile.flatten(1).sort(dim=1).values)  # same pixels
            seen.add(out.numpy().tobytes())
            undo = torch.rot90(out, -k, dims=(-2, -1))
            assert torch.equal(undo.flip(-1) if flip else undo, tile)                  # invertible, lossless
    assert len(seen) == 8
    assert torch.equal(T.dihedral(tile, 1, False)[:, 0, :], tile[:, :, -1])            # a quarter turn, anticlockwise


def _aug(**kw):  # noqa: ANN202
    from sslkit.domains.pathology.method import PathologyAug

    base = {"global_px": 32, "local_px": 16, "n_local": 3}
    return PathologyAug(**{**base, **kw})


def test_views_are_reproducible_under_a_seed_and_shaped_as_the_recipe_says() -> None:
    tile = he_tile(8)
    views = T.DinoViews(_aug())
    torch.manual_seed(11)
    a = views(tile)
    torch.manual_seed(11)
    b = views(tile)
    torch.manual_seed(12)
    c = views(tile)
    assert a["global"].shape == (2, 3, 32, 32) and a["local"].shape == (3, 3, 16, 16)
    assert a["global"].dtype == torch.uint8
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["global"], c["global"])
    pair = T.PairViews(_aug())(tile)["views"]
    assert pair.shape == (2, 3, 32, 32) and not torch.equal(pair[0], pair[1])
    assert "local" not in T.DinoViews(_aug(n_local=0))(tile)


def test_without_stain_augmentation_the_colours_are_untouched_by_jitter() -> None:
    """stain=none, no colour jitter, no blur, full-size crops: views are exact symmetries of the tile."""
    tile = he_tile(9)
    aug = _aug(stain="none", color_p=0.0, blur_p=0.0, global_blur_p=(0.0, 0.0), global_scale=(1.0, 1.0))
    g = T.DinoViews(aug)(tile)["global"]
    symmetries = {T.dihedral(tile, k, f).numpy().tobytes() for k in range(4) for f in (False, True)}
    assert all(v.numpy().tobytes() in symmetries for v in g)
