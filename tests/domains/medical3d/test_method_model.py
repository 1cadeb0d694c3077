"""Masks, cross-volume matching, encoders (every registered kind), Alice/SwinUNETR-SSL objectives, segmentation."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from sslkit.core.checkpoint import save_checkpoint
from sslkit.core.recipes import load_recipe
from sslkit.domains.medical3d.finetune import load_decoder
from sslkit.domains.medical3d.method import Alice, SwinSSL
from sslkit.domains.medical3d.model import ENCODERS, embed_volume
from sslkit.domains.medical3d.recipe import Medical3DRecipe
from sslkit.domains.medical3d.scoring import busiest_slices
from sslkit.domains.medical3d.segmentation import Segmenter, dice_ce_loss, dice_per_class
from sslkit.domains.medical3d.transforms import column_mask, matched_centers, rotate


def test_column_mask_ratio_and_depth_repeat() -> None:
    m = column_mask(3, 32, 8, 0.75, True, torch.device("cpu"))
    assert m.shape == (3, 1, 32, 32, 32)
    assert torch.allclose(m.mean(dim=(1, 2, 3, 4)), torch.full((3,), 0.75))
    assert torch.equal(m[..., :1].expand_as(m), m)                     # whole columns along Z


def test_matched_centers_follow_the_moment_frame() -> None:
    a = {"com": [10.0, 20.0, 30.0], "std": [1.0, 2.0, 3.0]}
    b = {"com": [50.0, 60.0, 70.0], "std": [2.0, 4.0, 6.0]}
    ca, cb = matched_centers(a, b, np.random.default_rng(0), 0.0, 32)
    z = (ca - np.array(a["com"])) / np.array(a["std"])
    np.testing.assert_allclose(cb, np.array(b["com"]) + z * np.array(b["std"]))


def test_rotation_labels_match_rot90() -> None:
    x = torch.randn(4, 1, 8, 8, 8)
    out, k = rotate(x)
    for i in range(4):
        assert torch.equal(out[i], torch.rot90(x[i], int(k[i]), dims=(1, 2)))


@pytest.mark.parametrize("kind,kwargs", [("conv3d", {"widths": [8, 16, 16, 32]}), ("swin", {"feature_size": 12})])
def test_registered_encoders_forward_backward(kind: str, kwargs: dict) -> None:
    assert set(ENCODERS) == {"conv3d", "swin"}
    enc = ENCODERS[kind](**kwargs)
    x = torch.randn(2, 1, 32, 32, 32, requires_grad=True)
    feats = enc.pyramid(x)
    assert [f.shape[1] for f in feats] == enc.channels and feats[-1].shape[2] == 32 // enc.stride
    z = enc(x)
    assert z.shape == (2, enc.out_dim) and torch.isfinite(z).all()
    z.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters() if p.grad is not None)
    vec, grid = embed_volume(enc.eval(), torch.randn(1, 1, 40, 32, 32), 32)   # padded to 2 tiles along x
    assert vec.shape == (enc.out_dim,) and grid.shape[1] == 2 * (32 // enc.stride)


def _tiny(name: str, **over) -> Medical3DRecipe:  # noqa: ANN003
    return load_recipe(Medical3DRecipe, "medical3d", name, [f"{k}={v}" for k, v in over.items()])


def test_alice_loss_terms_and_ema() -> None:
    torch.manual_seed(0)
    m = Alice(_tiny("tiny", **{"alice.ema_start": 1.0, "alice.ema_end": 1.0}))
    batch = {"query": torch.rand(2, 1, 32, 32, 32), "anchor": torch.rand(2, 1, 32, 32, 32)}
    loss, metrics = m(batch)
    assert torch.isfinite(loss) and set(metrics) == {"global", "patch", "recon", "teacher_entropy", "patch_prototypes_used"}
    assert 0.0 <= float(metrics["teacher_entropy"]) <= math.log(m.cfg.out_dim) + 1e-4   # of the sharpened targets
    assert 1 <= float(metrics["patch_prototypes_used"]) <= 2 * 2 * (32 // m.encoder.stride) ** 3
    expected = metrics["global"] + metrics["patch"] + 10 * metrics["recon"]   # λ1 = λ2 = 1, λ3 = 10
    assert torch.allclose(loss.detach(), expected, atol=1e-4)
    before = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    loss.backward()
    assert m.mask_token.grad is not None and m.teacher["encoder"].stages[0][0][0].weight.grad is None
    torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1).step()
    m.after_step(1, 10)
    assert all(torch.equal(before[k], v) for k, v in m.teacher.state_dict().items())  # m = 1: teacher untouched
    assert int(m.step) == 1


def test_alice_reconstruction_counts_masked_voxels_only() -> None:
    torch.manual_seed(0)
    m = Alice(_tiny("tiny", **{"alice.mask_ratio": 0.0}))
    _, metrics = m({"query": torch.rand(1, 1, 32, 32, 32), "anchor": torch.rand(1, 1, 32, 32, 32)})
    assert float(metrics["recon"]) == 0.0                              # nothing masked: nothing to reconstruct


def test_voxel_shuffle_head_lays_each_channel_out_in_its_own_cells() -> None:
    from sslkit.domains.medical3d.method import VoxelShuffleHead

    for c in (1, 3):
        head = VoxelShuffleHead(4, 2, channels=c)
        torch.nn.init.zeros_(head.proj.weight)
        with torch.no_grad():
            head.proj.bias.copy_(torch.arange(c * 8.0))
        out = head(torch.zeros(1, 4, 1, 1, 1))
        k, i, j, l_ = np.meshgrid(*(np.arange(n) for n in (c, 2, 2, 2)), indexing="ij")
        assert out.shape == (1, c, 2, 2, 2)           # proj channel k·s³ + i·s² + j·s + l -> voxel (i, j, l) of channel k
        assert np.array_equal(out[0].detach().numpy(), (k * 8 + i * 4 + j * 2 + l_).astype(np.float32))


def test_alice_and_swin_ssl_on_three_channels_reconstruct_every_channel() -> None:
    from sslkit.domains.medical3d.transforms import inpainting_cutout

    torch.manual_seed(0)
    m = Alice(_tiny("tiny", **{"model.in_channels": 3}))
    x = torch.rand(2, 3, 32, 32, 32)
    assert m.recon(m.encoder.pyramid(x)[-1]).shape == (2, 3, 32, 32, 32)
    loss, metrics = m({"query": x, "anchor": torch.rand(2, 3, 32, 32, 32)})
    loss.backward()
    assert torch.isfinite(loss) and m.encoder.stages[0][0][0].weight.grad.shape[1] == 3
    # the reconstruction error is a mean over channels: three copies of one channel score as that channel alone
    one = Alice(_tiny("tiny"))
    three = Alice(_tiny("tiny", **{"model.in_channels": 3}))
    one.load_state_dict({k: v[:, :1] if v.dim() == 5 and v.shape[1] == 3 else v
                         for k, v in three.state_dict().items() if not k.startswith("recon.")}, strict=False)
    with torch.no_grad():
        three.recon.proj.weight.copy_(one.recon.proj.weight.repeat(3, 1, 1, 1, 1))
        three.recon.proj.bias.copy_(one.recon.proj.bias.repeat(3))
        w = three.encoder.stages[0][0][0].weight
        w.copy_(one.encoder.stages[0][0][0].weight.repeat(1, 3, 1, 1, 1) / 3)
    y = torch.rand(1, 1, 32, 32, 32)
    torch.manual_seed(1)
    r1 = one({"query": y, "anchor": y})[1]["recon"]
    torch.manual_seed(1)
    r3 = three({"query": y.repeat(1, 3, 1, 1, 1), "anchor": y.repeat(1, 3, 1, 1, 1)})[1]["recon"]
    assert torch.allclose(r1, r3, rtol=1e-4)
    s = SwinSSL(_tiny("tiny-swin", **{"model.in_channels": 3}))
    loss, _ = s({"image": torch.rand(2, 3, 32, 32, 32)})
    assert torch.isfinite(loss)
    x = -torch.arange(1.0, 5.0).view(4, 1, 1, 1, 1).expand(4, 3, 32, 32, 32)   # noise lies in [0, 1]
    changed = inpainting_cutout(x) != x                                           # noise and pasted boxes
    assert changed.any() and torch.equal(changed[:, 0], changed[:, 1]) and torch.equal(changed[:, 0], changed[:, 2])


def test_patch_norm_reconstruction_target_standardises_each_masked_cell() -> None:
    from sslkit.domains.medical3d.transforms import cell_normalise

    x = torch.rand(2, 1, 36, 32, 32) * 5 + 3
    y = cell_normalise(x, 8)
    cells = y[:, :, :32].reshape(2, 1, 4, 8, 4, 8, 4, 8)
    assert torch.allclose(cells.mean(dim=(3, 5, 7)), torch.zeros(()), atol=1e-4)
    assert torch.allclose(cells.std(dim=(3, 5, 7), unbiased=False), torch.ones(()), atol=1e-3)
    assert torch.equal(y[:, :, 32:], x[:, :, 32:])                     # a margin that fills no whole cell: unchanged
    bright = {"query": torch.rand(1, 1, 32, 32, 32) + 50, "anchor": torch.rand(1, 1, 32, 32, 32) + 50}
    recon = {}
    for target in ("raw", "patch_norm"):
        torch.manual_seed(0)
        recon[target] = float(Alice(_tiny("tiny", **{"alice.recon_target": target}))(bright)[1]["recon"])
    assert recon["raw"] > 1000 and recon["patch_norm"] < 10   # the cells' brightness is not part of the target


def test_alice_unet_reconstruction_decoder_moves_to_finetuning(tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    m = Alice(_tiny("tiny", **{"alice.recon_decoder": "unet", "alice.centering": "sinkhorn"}))
    loss, metrics = m({"query": torch.rand(2, 1, 32, 32, 32), "anchor": torch.rand(2, 1, 32, 32, 32)})
    loss.backward()
    assert torch.isfinite(loss) and m.recon.stem.layer.conv1.conv.weight.grad is not None
    ckpt = tmp_path / "unet.pt"
    save_checkpoint(ckpt, {"model": m.state_dict()})
    seg = Segmenter(m.encoder, classes=3, base=m.recon.out.conv.conv.in_channels)
    moved = load_decoder(seg.decoder, ckpt)
    assert moved == len(seg.decoder.state_dict()) - 2                 # all but the output conv (1 vs 3 channels)
    assert torch.equal(seg.decoder.ups[0].transp_conv.conv.weight, m.recon.ups[0].transp_conv.conv.weight)
    assert load_decoder(Segmenter(m.encoder, 3, base=4).decoder, ckpt) == 0   # other widths: nothing moves
    four = Segmenter(m.encoder, classes=3, base=m.recon.out.conv.conv.in_channels, in_channels=4)
    assert load_decoder(four.decoder, ckpt) == moved                  # a 4-channel input: the stem widened
    torch.testing.assert_close(four.decoder.stem.layer.conv1.conv.weight.sum(1, keepdim=True),
                               m.recon.stem.layer.conv1.conv.weight)
    linear = tmp_path / "linear.pt"
    save_checkpoint(linear, {"model": Alice(_tiny("tiny")).state_dict()})
    assert load_decoder(seg.decoder, linear) == 0                            # a linear head: no decoder
    assert load_decoder(seg.decoder, tmp_path / "nowhere.pt") == 0          # no checkpoint


def test_swin_ssl_forward() -> None:
    torch.manual_seed(0)
    m = SwinSSL(_tiny("tiny-swin"))
    loss, metrics = m({"image": torch.rand(2, 1, 32, 32, 32)})
    assert torch.isfinite(loss) and 0.0 <= float(metrics["rot_acc"]) <= 1.0
    loss.backward()
    assert m.rotation_head.weight.grad is not None and m.recon.net[0].weight.grad is not None


def test_swin_ssl_terms_match_references_on_what_the_heads_saw(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each SwinUNETR-SSL term against a float64 reference computed from the tensors the heads produced: rotation CE
    on the true quarter-turns, NT-Xent with the two copies of a crop as positives (the other 2N-2 as negatives), L1
    between the reconstruction and the rotated crops *before* cutout; the total is their weighted sum."""
    import sslkit.domains.medical3d.method as method

    torch.manual_seed(0)
    rec = _tiny("tiny-swin", **{"swin.rot_weight": 0.7, "swin.contrast_weight": 1.3, "swin.recon_weight": 2.0,
                                "swin.temperature": 0.3})
    m = SwinSSL(rec)
    seen: dict[str, list] = {"rotate": [], "cut": []}
    real_rotate, real_cut = method.rotate, method.inpainting_cutout
    monkeypatch.setattr(method, "rotate", lambda x: seen["rotate"].append(real_rotate(x)) or seen["rotate"][-1])
    monkeypatch.setattr(method, "inpainting_cutout", lambda x, *a: seen["cut"].append(real_cut(x, *a)) or seen["cut"][-1])
    outs: dict[str, torch.Tensor] = {}
    for name in ("rotation_head", "contrastive_head", "recon"):
        getattr(m, name).register_forward_hook(lambda mod, i, o, name=name: outs.__setitem__(name, o.detach().double()))
    pyramid = m.encoder.pyramid
    monkeypatch.setattr(m.encoder, "pyramid", lambda x: (outs.__setitem__("input", x.detach()), pyramid(x))[1])
    x = torch.rand(3, 1, 32, 32, 32)
    loss, metrics = m({"image": x})

    (x1, r1), (x2, r2) = seen["rotate"]
    for xv, rv in ((x1, r1), (x2, r2)):
        assert all(torch.equal(xv[i], torch.rot90(x[i], int(rv[i]), dims=(1, 2))) for i in range(3))
    assert torch.equal(outs["input"], torch.cat(seen["cut"])) and not torch.equal(outs["input"], torch.cat([x1, x2]))
    k = torch.cat([r1, r2])
    logits = outs["rotation_head"]
    rot = -float(np.mean([float(torch.log_softmax(logits[i], 0)[k[i]]) for i in range(6)]))
    z = torch.nn.functional.normalize(outs["contrastive_head"], dim=1)
    con = 0.0
    for i in range(6):
        pos = math.exp(float(z[i] @ z[(i + 3) % 6]) / 0.3)
        den = sum(math.exp(float(z[i] @ z[j]) / 0.3) for j in range(6) if j != i)
        con -= math.log(pos / den) / 6
    recon = float((outs["recon"] - torch.cat([x1, x2]).double()).abs().mean())
    assert float(metrics["rot"]) == pytest.approx(rot, rel=1e-5)
    assert float(metrics["contrast"]) == pytest.approx(con, rel=1e-5)
    assert float(metrics["recon"]) == pytest.approx(recon, rel=1e-5)
    assert float(loss.detach()) == pytest.approx(0.7 * rot + 1.3 * con + 2.0 * recon, rel=1e-5)
    assert float(metrics["rot_acc"]) == pytest.approx(float((logits.argmax(1) == k).double().mean()))


def test_segmenter_and_dice() -> None:
    seg = Segmenter(ENCODERS["conv3d"](widths=[8, 8, 16, 16]), classes=3, base=8)
    logits = seg(torch.randn(1, 1, 32, 32, 32))
    assert logits.shape == (1, 3, 32, 32, 32)
    label = torch.randint(0, 3, (1, 32, 32, 32))
    label[0, :4] = -1                                                   # ignored voxels
    perfect = torch.nn.functional.one_hot(label.clamp_min(0), 3).movedim(-1, 1).float() * 50
    loss, soft = dice_ce_loss(perfect, label)
    assert soft > 0.999 and loss < 0.01
    pred = np.array([[[1, 1, 2, 0]]])
    ref = np.array([[[1, 0, 2, 2]]])
    d = dice_per_class(pred, ref, 3)
    assert d[0] == pytest.approx(2 * 1 / 3) and d[1] == pytest.approx(2 * 1 / 3)  # hand-computed


def test_hd95_is_the_surface_distance_in_mm() -> None:
    from sslkit.domains.medical3d.segmentation import surface_distances

    r = np.sqrt(((np.indices((40, 40, 40)) - 20) ** 2).sum(0))
    label = np.where(r < 12, 1, 0) + (r < 4)                       # class 1: a shell, class 2: its core
    pred = np.where(r < 9, 1, 0) + (r < 4)                         # the shell 3 voxels thinner, the core exact
    hd = surface_distances(pred, label, 3, [1.5, 1.5, 1.5])[0]
    assert 4.0 <= hd[0] <= 5.0 and hd[1] == 0.0                   # 3 voxels × 1.5 mm
    assert surface_distances(pred, label, 3, [3.0, 3.0, 3.0])[0][0] == pytest.approx(2 * hd[0])
    none = surface_distances(np.where(pred == 2, 0, pred), label, 3, [1.0, 1.0, 1.0])[0]
    assert np.isnan(none[1]) and not np.isnan(none[0])            # class 2 missed: NaN (its Dice is 0)
    half = np.zeros(label.shape, bool)
    half[:20] = True
    assert surface_distances(pred, label, 3, [1.5] * 3, half)[0][0] == pytest.approx(hd[0], abs=1.5)


def test_finetune_encoder_lr_mult_reaches_the_optimizer():
    from torch import nn

    from sslkit.core.optim import build_optimizer
    from sslkit.core.recipes import TrainConfig
    from sslkit.domains.medical3d.segmentation import SegmentationTask

    class Seg(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Linear(4, 4)
            self.head = nn.Linear(4, 2)

    task = SegmentationTask(Seg(), {}, encoder_lr_mult=0.1, weight_decay=0.01)
    opt = build_optimizer(task, TrainConfig(), 1e-3)
    mults = {id(p): g["lr_mult"] for g in opt.param_groups for p in g["params"]}
    assert all(mults[id(p)] == 0.1 for p in task.encoder.parameters())
    assert all(mults[id(p)] == 1.0 for p in task.model.head.parameters())


def test_single_volume_split_label_fraction_is_a_slab_in_the_training_half() -> None:
    """One labelled volume: the held-out half never changes; fewer labels = a narrower slab inside the other half."""
    from pathlib import Path

    from sslkit.domains.medical3d.finetune import split

    entry = [(Path("v.nii.gz"), {"shape": (80, 64, 64)})]
    _, _, train, held = split(entry, None)
    assert train == [(0, 40)] and held == [(40, 80)]
    for frac, width in ((0.1, 8), (0.25, 20), (0.02, 2)):
        _, _, [(lo, hi)], held_f = split(entry, None, frac)
        assert held_f == held and hi - lo == width and 0 <= lo and hi <= 40
        assert abs((lo + hi) / 2 - 20) <= 1          # centred in the training half
    odd = [(Path("v.nii.gz"), {"shape": (35, 64, 64)})]            # 0.5 × 35 rounds to 18, one slice past the middle
    _, _, [(lo, hi)], [(h0, _)] = split(odd, None)
    assert (lo, hi) == (0, 17) and h0 == 17


def test_foreground_mask_clears_predictions_in_air_only() -> None:
    """finetune.foreground_mask: tissue predicted where the image is air becomes background; enclosed dark voxels stay;
    for region outputs every region's probability goes to 0 there."""
    from sslkit.domains.medical3d.segmentation import clear_outside, decode

    image = np.zeros((12, 12, 12), np.float32)
    image[2:10, 2:10, 2:10] = 0.8
    image[5:7, 5:7, 5:7] = 0.0                      # a dark hole inside (a ventricle scaled to 0)
    probs = np.zeros((3, *image.shape), np.float32)
    probs[2] = 0.9                                  # tissue everywhere, also in the air
    out = decode(clear_outside(probs.copy(), image))
    assert (out[2:10, 2:10, 2:10] == 2).all()       # inside, hole included, unchanged
    assert out.sum() == 2 * 8**3                    # everything outside the filled box is background
    regions = clear_outside(probs.copy(), image, sigmoid=True)
    assert regions[:, 0, 0, 0].max() == 0 and regions[2, 5, 5, 5] == 0.9


def test_overlay_slices_pass_through_the_labels() -> None:
    """segmentation.png cuts where the held-out labels are: an off-centre sphere is in both views, not a blank middle."""
    label = np.zeros((20, 30, 40), np.int64)
    x, y, z = np.ogrid[:20, :30, :40]
    label[(x - 12) ** 2 + (y - 6) ** 2 + (z - 31) ** 2 <= 9] = 1
    z, y = busiest_slices(label)
    assert (z, y) == (31, 6)
    assert label[:, :, z].any() and label[:, y, :].any()
    assert not label[:, :, 40 // 2].any()                     # the old middle slice showed no label at all
    assert busiest_slices(np.zeros((4, 6, 8), np.int64)) == (4, 3)   # nothing labelled: the middle


def test_exported_swin_encoder_loads_into_monai_swinunetr(tmp_path) -> None:  # noqa: ANN001
    """The README's recipe for fine-tuning in one's own MONAI code: the exported safetensors go straight into
    SwinUNETR with strict=False, and its swinViT then computes what sslkit's encoder computes."""
    from monai.networks.nets import SwinUNETR
    from safetensors.torch import load_file

    from sslkit.core.export import export_encoder

    torch.manual_seed(0)
    m = SwinSSL(_tiny("tiny-swin"))
    export_encoder(m.encoder, m.encoder_spec(), tmp_path / "enc")
    net = SwinUNETR(in_channels=1, out_channels=3, feature_size=12)
    missing, unexpected = net.load_state_dict(load_file(str(tmp_path / "enc" / "encoder.safetensors")), strict=False)
    assert not unexpected and missing and not [k for k in missing if k.startswith("swinViT.")]
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        for a, b in zip(net.swinViT(x, normalize=True), m.encoder.eval().pyramid(x)):
            torch.testing.assert_close(a, b)


def test_mirroring_tta_makes_the_prediction_flip_equivariant() -> None:
    """Averaged over every flip of the axes, the prediction of a flipped volume is the flipped prediction (one window,
    so the window grid is symmetric too); a single pass of an untrained network is not."""
    from sslkit.domains.medical3d.model import ConvEncoder3d
    from sslkit.domains.medical3d.segmentation import decode, probabilities

    torch.manual_seed(0)
    net = Segmenter(ConvEncoder3d([8, 16]), classes=3, base=8).eval()
    image = np.random.default_rng(0).random((32, 32, 32)).astype(np.float32)
    cpu = torch.device("cpu")
    agree = {}
    for tta in (False, True):
        a = decode(probabilities(net, image, 32, 0.25, cpu, False, tta))
        b = decode(probabilities(net, np.flip(image, 0).copy(), 32, 0.25, cpu, False, tta))
        agree[tta] = float((np.flip(a, 0) == b).mean())
    assert agree[True] > 0.999 and agree[False] < 0.99, agree


def brats_finetune(**kw):  # noqa: ANN003, ANN201
    from sslkit.domains.medical3d.recipe import FinetuneConfig

    return FinetuneConfig(regions={"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}, region_training=True, **kw)


def test_region_layout_paints_brats_regions_innermost_last() -> None:
    """BraTS values 0, 1, 2, 4 (classes 0..3): WT adds edema (2), TC necrosis (1), ET enhancing (4), painted in that
    order; membership is the union each region names. Regions that cannot be painted back are refused."""
    from sslkit.core.errors import UserError
    from sslkit.domains.medical3d.labels import region_layout
    from sslkit.domains.medical3d.recipe import FinetuneConfig

    values = [0, 1, 2, 4]
    members, paint = region_layout(brats_finetune(), values)
    assert paint == [(0, 2), (1, 1), (2, 3)]
    np.testing.assert_array_equal(members, [[0, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
    shuffled = FinetuneConfig(regions={"ET": [4], "WT": [1, 2, 4], "TC": [1, 4]}, region_training=True)
    assert region_layout(shuffled, values)[1] == [(1, 2), (2, 1), (0, 3)]        # size decides, not the order given
    assert region_layout(FinetuneConfig(regions={"WT": [1, 2, 4]}), values) == (None, None)   # scored only
    for regions, message in (({}, "needs finetune.regions"),
                             ({"A": [1, 2], "B": [2, 4]}, "A and B overlap"),
                             ({"WT": [1, 2], "TC": [1]}, "values [4] lie in no region"),
                             ({"WT": [1, 2, 4], "ET": [4]}, "WT adds [1, 2]"),
                             ({"WT": [1, 2, 4], "TC": [1, 2, 4]}, "WT and TC overlap")):
        with pytest.raises(UserError, match=re.escape(message)):
            region_layout(FinetuneConfig(regions=regions, region_training=True), values)


def test_region_loss_targets_are_the_unions_and_ignore_unlabelled_voxels() -> None:
    """Logits that are right for every region give a Dice near 1 and a small loss; the same logits against another
    labelling score lower; voxels labelled -1 do not count, whatever the logits there."""
    from sslkit.domains.medical3d.segmentation import region_loss

    members = torch.tensor([[0, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.float32)
    label = torch.randint(0, 4, (2, 6, 6, 6))
    right = (members[label].movedim(-1, 1) * 2 - 1) * 12.0                  # +12 inside each region, -12 outside
    loss, soft = region_loss(right, label, members)
    assert soft > 0.999 and loss < 0.01
    other = torch.randint(0, 4, (2, 6, 6, 6))
    assert region_loss(right, other, members)[0] > 0.5
    masked = label.clone()
    masked[:, :3] = -1
    scrambled = right.clone()
    scrambled[:, :, :3] *= -1                                                  # wrong everywhere that is ignored
    assert region_loss(scrambled, masked, members)[0] < 0.01


def test_predict_paints_regions_largest_first() -> None:
    """Nested slabs: a voxel where WT, TC and ET are all over 0.5 is enhancing, where only WT is edema, where WT and
    TC necrosis; under 0.5 everywhere background. The same with TTA (the slabs are mirror-symmetric)."""
    from sslkit.domains.medical3d.segmentation import decode, probabilities

    class Fixed(torch.nn.Module):           # by distance d from the middle of x: WT d < 12, TC d < 8, ET d < 4
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            d = (torch.arange(x.shape[2]) - (x.shape[2] - 1) / 2).abs().view(1, 1, -1, 1, 1)
            d = d.expand(x.shape[0], 1, *x.shape[2:])
            return torch.cat([(d < r).float() * 8 - 4 for r in (12, 8, 4)], 1)

    image, cpu = np.zeros((32, 16, 16), np.float32), torch.device("cpu")
    want = np.array([0] * 4 + [2] * 4 + [1] * 4 + [3] * 8 + [1] * 4 + [2] * 4 + [0] * 4)[:, None, None]
    for tta in (False, True):
        pred = decode(probabilities(Fixed(), image, 32, 0.25, cpu, False, tta, sigmoid=True), [(0, 2), (1, 1), (2, 3)])
        assert pred.dtype == np.int16 and (pred == want).all()


def test_segmenter_prior_sets_every_output_to_start_at_it() -> None:
    from sslkit.domains.medical3d.model import ConvEncoder3d

    torch.manual_seed(0)
    net = Segmenter(ConvEncoder3d([8, 16]), classes=3, base=8, prior=0.1)
    with torch.no_grad():
        p = net(torch.zeros(1, 1, 16, 16, 16)).sigmoid()
    assert abs(float(p.mean()) - 0.1) < 0.05


def test_largest_component_keeps_the_object_and_drops_stray_parts() -> None:
    """A two-class object and a stray blob of one of its classes: the blob goes, the object keeps both classes; parts
    touching only by a corner count as one (26-connectivity); a single part is returned as it is."""
    from sslkit.domains.medical3d.segmentation import largest_component

    pred = np.zeros((20, 20, 20), np.int16)
    pred[2:10, 2:10, 2:10] = 1
    pred[4:8, 4:8, 4:8] = 2
    pred[15:18, 15:18, 15:18] = 2                     # stray, 27 voxels
    pred[10, 10, 10] = 1                              # touches the object's corner
    out = largest_component(pred)
    assert out.dtype == pred.dtype and not out[15:18, 15:18, 15:18].any()
    np.testing.assert_array_equal(out[:15, :15, :15], pred[:15, :15, :15])
    assert largest_component(out) is out
