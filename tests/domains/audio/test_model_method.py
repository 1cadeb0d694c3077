"""Audio encoders (every entry of ENCODERS), masks, and the loss terms against hand computations."""
from __future__ import annotations

import math

import pytest
import torch

from sslkit.core.recipes import load_recipe
from sslkit.domains.audio.method import (RECIPE_SCHEMA, build_method, clip_generators, cluster_mask, info_nce,
                                         masked_mse, tera_alter)
from sslkit.domains.audio.model import ENCODERS

TINY = dict(n_mels=32, clip_frames=64, dim=32, depth=2, heads=2, mlp_ratio=2.0, patch_freq=8, patch_time=8,
            d_state=4, scan_block=16, scan_chunk=4, mean=-4.0, std=3.0)


def tiny(method: str, *sets: str):  # noqa: ANN201
    return load_recipe(RECIPE_SCHEMA, "audio", "tiny", [f"method={method}", *sets])


def batch(b: int = 3, t: int = 64, m: int = 32, lengths: tuple[int, ...] = (64, 40, 20)) -> dict:
    g = torch.Generator().manual_seed(0)
    fbank = torch.randn(b, t, m, generator=g)
    valid = torch.arange(t)[None, :] < torch.tensor(lengths[:b])[:, None]
    return {"fbank": fbank * valid[..., None], "valid": valid, "seed": torch.arange(b) + 100}


@pytest.mark.parametrize("kind", sorted(ENCODERS))
def test_every_encoder_runs_forward_backward_without_nan(kind):
    torch.manual_seed(0)
    enc = ENCODERS[kind](**TINY)
    x = batch()
    out = enc.embed_fbank(x["fbank"], x["valid"])
    assert out.shape == (3, 32) and torch.isfinite(out).all()
    out.pow(2).mean().backward()
    grads = [p.grad for n, p in enc.named_parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) > 0 for g in grads) >= len(grads) // 2
    raw = torch.randn(2, 50, 32) * 3 - 4                            # raw fbank, any length
    assert enc.eval()(raw).shape == (2, 32)


@pytest.mark.parametrize("kind", sorted(ENCODERS))
@pytest.mark.parametrize("pool", ["mean", "freq"])
def test_padding_is_invisible(kind, pool):
    """A clip embeds to the same vector alone (unpadded) or padded inside a batch."""
    torch.manual_seed(0)
    enc = ENCODERS[kind](**TINY, pool=pool).eval()
    x = batch()
    together = enc.embed_fbank(x["fbank"], x["valid"])
    alone = enc.embed_fbank(x["fbank"][1:2, :40])
    torch.testing.assert_close(together[1:2], alone, atol=1e-5, rtol=1e-4)
    width = 32 * 4 if pool == "freq" and kind != "tera" else 32      # 4 frequency rows of 8 mel bins
    assert together.shape == (3, width)


@pytest.mark.parametrize("kind", sorted(ENCODERS))
def test_pooled_clip_embedding_segments_std_layers(kind):
    """pool_segments / pool_stats / pool_layers: the widths add up, padding stays invisible, and the parts are what
    they say (segment means average to the clip mean for equal parts; the last layer's block is the default one)."""
    torch.manual_seed(0)
    enc = ENCODERS[kind](**TINY, pool_stats="meanstd", pool_segments=3, pool_layers=2).eval()
    x = batch()
    together = enc.embed_fbank(x["fbank"], x["valid"])
    assert together.shape == (3, (3 + 1) * 32 * 2)                  # (segments + std) · D · layers
    torch.testing.assert_close(together[1:2], enc.embed_fbank(x["fbank"][1:2, :40]), atol=1e-5, rtol=1e-4)
    enc.pool_stats, enc.pool_layers = "mean", 1
    segs = enc.embed_fbank(x["fbank"][:1]).view(3, 32)              # 64 frames: steps split 3 parts
    enc.pool_segments = 1
    plain = enc.embed_fbank(x["fbank"][:1])[0]
    steps = 64 if kind == "tera" else 8
    sizes = torch.tensor([sum(1 for i in range(steps) if i * 3 // steps == k) for k in range(3)], dtype=torch.float32)
    torch.testing.assert_close((segs * sizes[:, None]).sum(0) / steps, plain, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(segs[0], segs[2])                     # the parts differ: order in time is kept


def test_pool_tokens_std_by_hand():
    from sslkit.domains.audio.model import pool_tokens

    x = torch.tensor([[[1.0], [3.0], [5.0], [100.0]]])             # 4 steps, the last is padding
    present = torch.tensor([[True, True, True, False]])
    out = pool_tokens(x, present, 1, False, True, 1)
    torch.testing.assert_close(out, torch.tensor([[3.0, math.sqrt(8 / 3)]]))
    out = pool_tokens(x[:, :1], present[:, :1], 1, False, False, 3)  # 1 step, 3 parts: empty parts = clip mean
    torch.testing.assert_close(out, torch.tensor([[1.0, 1.0, 1.0]]))


@pytest.mark.parametrize("kind", sorted(ENCODERS))
def test_waveform_input_equals_its_fbank(kind):
    from sslkit.domains.audio.features import AudioData, compute_fbank

    cfg = AudioData(n_mels=32, clip_frames=64)
    enc = ENCODERS[kind](**TINY, features=cfg.feature_spec()).eval()
    wave = torch.sin(torch.arange(8000) * 0.3)[None].repeat(2, 1) * torch.tensor([[0.5], [0.1]])
    fb = torch.stack([compute_fbank(w, cfg) for w in wave])
    torch.testing.assert_close(enc(wave), enc(fb))
    longer = enc(torch.randn(1, 300, 32))                           # longer than clip_frames: positions stretched
    assert torch.isfinite(longer).all()


def test_cluster_mask_count_blocks_and_only_real_patches():
    grid_f, grid_t = 8, 64
    full = torch.ones(grid_f * grid_t, dtype=torch.bool)
    full[40 * grid_f :] = False                                     # padded tail of the clip
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        ids = cluster_mask(full, grid_f, 100, [3, 4, 5], True, g)
        assert ids.numel() == round(100 * 320 / 512) and ids.unique().numel() == ids.numel()
        assert full[ids].all()
    # clustered: masked patches have many masked 4-neighbours (3×3 blocks: 2.67 on average), random ones few
    def neighbours(ids: torch.Tensor) -> float:
        m = torch.zeros(grid_t, grid_f, dtype=torch.bool)
        m.view(-1)[ids] = True
        n = torch.zeros(grid_t, grid_f)
        n[1:] += m[:-1]; n[:-1] += m[1:]; n[:, 1:] += m[:, :-1]; n[:, :-1] += m[:, 1:]
        return float(n[m].mean())
    all_full = torch.ones(grid_f * grid_t, dtype=torch.bool)
    clustered = cluster_mask(all_full, grid_f, 45, [3], True, torch.Generator().manual_seed(0))
    scattered = cluster_mask(all_full, grid_f, 45, [3], False, torch.Generator().manual_seed(0))
    assert neighbours(clustered) >= 2.0 > 1.0 > neighbours(scattered)


def test_one_block_is_a_k_by_k_square():
    full = torch.ones(8 * 64, dtype=torch.bool)
    for seed in range(20):
        ids = cluster_mask(full, 8, 16, [4], True, torch.Generator().manual_seed(seed))
        t, f = ids // 8, ids % 8
        if int(t.max() - t.min()) == 3 and int(f.max() - f.min()) == 3:   # the first block was not clipped
            assert ids.numel() == 16
            return
    pytest.fail("no unclipped 4×4 block in 20 draws")


def test_info_nce_equals_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 4, 6, generator=g), torch.randn(2, 4, 6, generator=g)
    sel = torch.tensor([[True] * 4, [True, True, True, False]])     # the second clip has 3 masked patches
    nce, acc = info_nce(pred, target, sel)
    clip_nce, clip_acc = [], []                                     # a mean per clip, then over the clips
    for b, m in ((0, 4), (1, 3)):
        terms, hits = [], []
        for i in range(m):
            logits = [float(target[b, i] @ pred[b, j]) for j in range(m)]
            terms.append(-(logits[i] - math.log(sum(math.exp(v) for v in logits))))
            hits.append(max(range(m), key=lambda j: logits[j]) == i)
        clip_nce.append(sum(terms) / m)
        clip_acc.append(sum(hits) / m)
    assert float(nce) == pytest.approx(sum(clip_nce) / 2, rel=1e-5)
    assert float(acc) == pytest.approx(sum(clip_acc) / 2)
    sq = ((pred - target) ** 2).mean(-1)
    assert float(masked_mse(pred, target, sel)) == pytest.approx(float(sq[0].mean() + sq[1, :3].mean()) / 2, rel=1e-6)


def test_tera_alterations_and_l1_only_on_altered_positions():
    recipe = tiny("tera", "mask.noise_p=0.0")
    x = torch.randn(64, 32)
    for seed in range(10):
        altered, label = tera_alter(x, 50, recipe.mask, torch.Generator().manual_seed(seed))
        changed = (altered != x).any(-1, keepdim=True).expand_as(x) & (altered != x)
        assert not (changed & ~label).any()                         # everything altered is labelled ...
        assert not label[50:].any()                                 # ... and nothing on padding is
        band = label[:50].all(0)                                    # frequency band: contiguous, <= 20 % of 32 bins
        if band.any():
            cols = band.nonzero().squeeze(1)
            assert int(cols.max() - cols.min()) + 1 == cols.numel() <= int(32 * 0.2)
        rows = label.all(1)[:50].sum()                             # time: 15 % of 50 frames in spans of 7 (overlaps merge)
        assert rows <= round(50 * 0.15 / 7) * 7 or band.all()
    torch.manual_seed(0)
    method = build_method(recipe, -4.0, 3.0)
    b = batch()
    loss, metrics = method(b)
    altered, label, valid = method._alter(b)
    pred = method.head(method.encoder.tokens(altered, valid))
    err = (pred - b["fbank"]).abs()
    hand = sum(err[i][label[i]].mean() for i in range(3)) / 3     # per clip, then over the clips
    assert loss.item() == pytest.approx(hand.item(), rel=1e-5)
    assert not (label & ~valid[..., None]).any()


@pytest.mark.parametrize("method_name", ["ssamba", "ssast"])
def test_masked_patch_objective_trains_and_uses_two_masks(method_name):
    torch.manual_seed(0)
    method = build_method(tiny(method_name), -4.0, 3.0)
    b = batch()
    loss, metrics = method(b)
    again, _ = method(b)
    assert loss.item() == again.item()                           # per-clip seeds: the same masks every time
    assert set(metrics) == {"nce", "mse", "nce_acc"}
    assert loss.item() == pytest.approx(float(metrics["nce"]) + 10 * float(metrics["mse"]), rel=1e-5)
    loss.backward()
    assert float(method.encoder.mask_embed.grad.abs().sum()) > 0
    g0, g1 = clip_generators(b, 0)[0], clip_generators(b, 1)[0]
    assert torch.randint(10**9, (1,), generator=g0) != torch.randint(10**9, (1,), generator=g1)
    opt = torch.optim.Adam(method.parameters(), 3e-3)
    first = loss.item()
    for _ in range(15):
        opt.zero_grad()
        loss, metrics = method(b)
        loss.backward()
        opt.step()
    assert loss.item() < first and float(metrics["nce_acc"]) > 1 / 8
    view = method.eval().visualise(b)
    assert view["fbank"].shape == view["mask"].shape == view["recon"].shape == (64, 32)
    assert view["mask"].any() and torch.equal(view["recon"][~view["mask"]], view["fbank"][~view["mask"]])


def test_recomputed_mamba_directions_give_the_same_gradients():
    """Each Mamba direction is re-run in backward (only its inputs kept; the scan itself is not re-run): the
    gradients equal those of keeping every activation."""
    from sslkit.domains.audio.model import BiMamba

    torch.manual_seed(0)
    enc = ENCODERS["ssamba"](**TINY)
    x = batch()
    grads = []
    for recompute in (False, True):
        for m in enc.modules():
            if isinstance(m, BiMamba):
                m.recompute = recompute
        enc.zero_grad()
        enc.embed_fbank(x["fbank"], x["valid"]).pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-6, rtol=1e-5, msg=n)
