"""DINO and SimCLR on the tiny recipe: which views meet which (checked against the loss written out by hand), the
teacher's EMA and temperature schedules, the frozen prototype layer, and SimCLR's NT-Xent on the projections."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sslkit.core.ema import momentum_schedule
from sslkit.core.recipes import load_recipe
from sslkit.domains.pathology.method import RECIPE_SCHEMA, build_method
from sslkit.domains.pathology.transforms import build_views


def _batch(method: str, recipe, n: int = 6) -> dict[str, torch.Tensor]:  # noqa: ANN001
    views = build_views(method, recipe.aug, masks=recipe.loss.ibot_weight > 0)
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(n):
        torch.manual_seed(i)
        items.append(views((torch.rand(3, 32, 32, generator=g) * 255).to(torch.uint8)))
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


@pytest.fixture
def tiny():  # noqa: ANN201
    return load_recipe(RECIPE_SCHEMA, "pathology", "tiny")


def test_dino_loss_is_the_cross_entropy_of_every_teacher_global_with_every_other_student_view(tiny) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    m = build_method(tiny).train()
    batch = _batch("dino", tiny)
    center = torch.randn(1, tiny.loss.out_dim) * 0.1
    m.loss.center.copy_(center)
    loss, metrics = m(batch)
    # written out: student sees 2 global + 2 local crops, the teacher the 2 global ones (view-major), pairs t != s
    b = batch["global"].shape[0]
    views = [batch["global"][:, i] for i in range(2)] + [batch["local"][:, i] for i in range(2)]
    with torch.no_grad():
        s = [m.head(m.encoder(m.encoder.preprocess(v))) for v in views]
        t = [m.teacher["head"](m.teacher["encoder"](m.encoder.preprocess(v))) for v in views[:2]]
    temp_t, temp_s = tiny.loss.warmup_teacher_temp, tiny.loss.student_temp      # step 0 of the warmup
    terms = [(-F.softmax((t[i] - center) / temp_t, -1) * F.log_softmax(s[j] / temp_s, -1)).sum(-1).mean()
             for i in range(2) for j in range(4) if i != j]
    torch.testing.assert_close(loss.detach(), torch.stack(terms).mean(), rtol=1e-4, atol=1e-5)
    assert len(terms) == 6 and b == 6
    # the centre moved towards the mean teacher output (momentum 0.9)
    want = 0.9 * center + 0.1 * torch.cat(t).mean(0, keepdim=True)
    torch.testing.assert_close(m.loss.center, want, rtol=1e-4, atol=1e-5)
    assert 0 < float(metrics["teacher_entropy"]) <= torch.log(torch.tensor(float(tiny.loss.out_dim)))


def test_teacher_gets_no_gradient_and_follows_the_student_by_the_ema_schedule(tiny) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    m = build_method(tiny)
    loss, _ = m(_batch("dino", tiny))
    loss.backward()
    assert all(p.grad is None for p in m.teacher.parameters())
    before = {k: v.clone() for k, v in m.teacher["encoder"].state_dict().items()}
    with torch.no_grad():
        for p in m.encoder.parameters():
            p.add_(1.0)
    m.after_step(2, tiny.train.steps)
    mom = momentum_schedule(2, tiny.train.steps, tiny.loss.ema_start, tiny.loss.ema_end)
    name = "vit.cls_token"
    torch.testing.assert_close(m.teacher["encoder"].state_dict()[name],
                               mom * before[name] + (1 - mom) * dict(m.encoder.named_parameters())[name])
    assert int(m.step) == 2 and 0.99 < mom < 1.0


def test_prototype_layer_is_frozen_for_the_first_steps_then_learns(tiny) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    m = build_method(tiny)
    v = m.head.last_layer.parametrizations.weight.original1
    batch = _batch("dino", tiny)
    m(batch)[0].backward()
    assert v.grad is not None and v.grad.abs().sum() == 0                      # step 0 < freeze_last_layer_steps=1
    assert any(p.grad.abs().sum() > 0 for p in m.encoder.parameters() if p.grad is not None)
    m.zero_grad()
    m.after_step(1, tiny.train.steps)
    m(batch)[0].backward()
    assert v.grad.abs().sum() > 0


def test_teacher_temperature_warms_up_linearly(tiny) -> None:  # noqa: ANN001
    tiny.loss.warmup_teacher_temp, tiny.loss.teacher_temp, tiny.loss.warmup_teacher_temp_steps = 0.02, 0.06, 4
    m = build_method(tiny)
    assert [round(m.loss.teacher_temperature(s), 4) for s in (0, 2, 4, 9)] == [0.02, 0.04, 0.06, 0.06]


def test_simclr_loss_is_nt_xent_of_the_projected_views(tiny) -> None:  # noqa: ANN001
    from sslkit.core.losses.nt_xent import nt_xent

    tiny.method = "simclr"
    torch.manual_seed(0)
    m = build_method(tiny).eval()          # BatchNorm in eval: the reference pass sees the same statistics
    batch = _batch("simclr", tiny)
    loss, metrics = m(batch)
    v = batch["views"]
    with torch.no_grad():
        z0 = m.projector(m.encoder(m.encoder.preprocess(v[:, 0])))
        z1 = m.projector(m.encoder(m.encoder.preprocess(v[:, 1])))
    torch.testing.assert_close(loss.detach(), nt_xent(z0, z1, tiny.loss.temperature), rtol=1e-4, atol=1e-5)
    assert 0.0 <= float(metrics["pair_top1"]) <= 1.0


def test_a_crop_smaller_than_the_patch_is_refused_before_training(tiny) -> None:  # noqa: ANN001
    from sslkit.core.errors import UserError

    tiny.aug.local_px = 4
    with pytest.raises(UserError, match="smaller than the ViT patch"):
        build_method(tiny)


def _train_dino(recipe, steps: int, batch: int = 16) -> list[tuple[float, float]]:  # noqa: ANN001
    """(loss, teacher entropy) per step of a short in-process DINO run on generated 32-px nuclei and stroma tiles."""
    import math

    from sslkit.domains.pathology.samples import _texture

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    tiles = torch.from_numpy(np.stack([_texture(rng, kind, 32) for kind in ("nuclei", "stroma") for _ in range(32)])
                             .transpose(0, 3, 1, 2).copy())
    model = build_method(recipe).train()
    views = build_views("dino", recipe.aug)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=recipe.train.lr, weight_decay=0.04)
    out = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = recipe.train.lr * min(1.0, (step + 1) / 5) * 0.5 * (1 + math.cos(math.pi * step / steps))
        items = [views(tiles[int(i)]) for i in torch.randint(len(tiles), (batch,))]
        loss, metrics = model({k: torch.stack([it[k] for it in items]) for k in items[0]})
        loss.backward()
        opt.step()
        opt.zero_grad()
        model.after_step(step + 1, steps)
        out.append((float(loss.detach()), float(metrics["teacher_entropy"])))
    return out


def test_dino_head_batchnorm_keeps_the_teacher_sharp_and_the_loss_below_ln_k(tiny) -> None:  # noqa: ANN001
    """A fresh ViT maps every tile to nearly the same vector, so the centred teacher targets drift to uniform and the
    loss to ln K (GlaS: 8.31 = ln 4096 for 270 steps). With BatchNorm in the head (DINO's use_bn_in_head) the
    teacher stays sharp and the student learns to match it: the loss falls well below ln K."""
    import math

    ln_k = math.log(tiny.loss.out_dim)
    tiny.loss.ema_start = 0.9          # a short run: the teacher follows within ~10 steps
    without = _train_dino(tiny, 36)
    tiny.loss.head_bn = True
    with_bn = _train_dino(tiny, 36)
    late = slice(-8, None)
    loss_without = np.mean([loss for loss, _ in without[late]])
    assert loss_without > ln_k - 0.6                                     # drifting back to ln K: uniform targets
    assert np.mean([e for _, e in with_bn[late]]) < np.mean([e for _, e in without[late]]) - 2.0   # a sharp teacher
    assert np.mean([loss for loss, _ in with_bn[late]]) < min(ln_k, loss_without) - 1.5   # the student matches it
    assert np.mean([loss for loss, _ in with_bn[late]]) < np.mean([loss for loss, _ in with_bn[:3]]) - 1.0
