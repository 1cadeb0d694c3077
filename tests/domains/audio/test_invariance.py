"""tera-inv: the speaker-like perturbations (augment.py) and TERA + VICReg over two views (invariance.py)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torchaudio.compliance.kaldi import mel_scale as mel

from sslkit.core.recipes import load_recipe
from sslkit.domains.audio.augment import mel_centres, perturb_voice, warp_index
from sslkit.domains.audio.method import RECIPE_SCHEMA, build_method

OFF = dict(sample_rate=8000, std=2.0, warp=0.0, tempo=0.0, gain_db=0.0, tilt_db=0.0, noise=0.0)


def gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def peak(n_mels: int = 40, at: int = 20, frames: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.zeros(1, frames, n_mels)
    x[..., at] = 1.0
    return x, torch.ones(1, frames, dtype=torch.bool)


def test_all_strengths_off_is_the_identity_and_padding_stays_zero():
    x = torch.randn(2, 30, 40)
    valid = torch.arange(30)[None] < torch.tensor([30, 12])[:, None]
    x = x * valid[..., None]
    y, ok = perturb_voice(x, valid, gens(1, 2), **OFF)
    torch.testing.assert_close(y, x)
    assert torch.equal(ok, valid)
    y, ok = perturb_voice(x, valid, gens(1, 2), **{**OFF, "warp": 0.2, "tempo": 0.2, "gain_db": 6, "noise": 0.1})
    assert (y[~ok] == 0).all() and not torch.allclose(y[ok], x[ok])


def test_mel_bins_are_kaldis_and_warp_reads_frequency_over_alpha():
    f = mel_centres(40, 8000)
    steps = torch.diff(mel(f))
    torch.testing.assert_close(steps, torch.full_like(steps, float(steps[0])))      # equally spaced in mel
    assert 20 < float(f[0]) < float(f[-1]) < 4000
    pos = warp_index(torch.tensor([1.0, 1.2], dtype=torch.float64), 40, 8000)
    torch.testing.assert_close(pos[0], torch.arange(40, dtype=torch.float64))
    # bin 30 under α = 1.2 reads the (fractional) bin whose centre frequency is f_30 / 1.2
    lo = mel(torch.tensor(20.0, dtype=torch.float64))
    want = (mel(f[30] / 1.2) - lo) / float(steps[0]) - 1.0
    assert abs(float(pos[1, 30]) - float(want)) < 1e-9 and float(pos[1, 30]) < 30


@pytest.mark.parametrize("alpha_side, direction", [(+1, 1), (-1, -1)])
def test_vtlp_moves_a_formant_up_for_alpha_above_one_and_down_below(alpha_side, direction):
    x, valid = peak(at=20)
    # warp = 0.3 and a generator whose draw lands on the wanted side of 1
    for seed in range(50):
        g = torch.Generator().manual_seed(seed)
        if (float(torch.rand(1, generator=g)) - 0.5) * alpha_side > 0.2:
            break
    y, _ = perturb_voice(x, valid, gens(seed), **{**OFF, "warp": 0.3})
    centre = float((y[0, 0] * torch.arange(40)).sum() / y[0, 0].sum())
    assert (centre - 20) * direction > 0.5


def test_tempo_changes_the_length_and_gain_is_the_db_formula():
    x, valid = peak(frames=60)
    valid[:, 40:] = False
    x = x * valid[..., None]
    for seed in range(20):
        tau = 0.7 + 0.6 * float(torch.rand(1, generator=torch.Generator().manual_seed(seed)))
        _, ok = perturb_voice(x, valid, gens(seed), **{**OFF, "tempo": 0.3})
        assert abs(int(ok.sum()) - (39 / tau + 1)) <= 1           # frame t reads source frame t·τ ≤ 39
    y, _ = perturb_voice(x, valid, gens(3), **{**OFF, "gain_db": 6.0})
    db = 6.0 * (2 * float(torch.rand(1, generator=torch.Generator().manual_seed(3))) - 1)
    torch.testing.assert_close(y[0, :40] - x[0, :40], torch.full((40, 40), db * math.log(10) / 10 / 4.0))


def test_a_clip_gets_the_same_view_alone_or_inside_a_batch():
    x = torch.randn(3, 30, 40)
    valid = torch.ones(3, 30, dtype=torch.bool)
    strong = {**OFF, "warp": 0.2, "tempo": 0.2, "gain_db": 6, "tilt_db": 6, "noise": 0.05}
    together, _ = perturb_voice(x, valid, gens(5, 6, 7), **strong)
    alone, _ = perturb_voice(x[1:2], valid[1:2], gens(6), **strong)
    torch.testing.assert_close(together[1:2], alone)


def tiny_inv(*sets: str):  # noqa: ANN201
    return load_recipe(RECIPE_SCHEMA, "audio", "tiny", ["method=tera-inv", *sets])


def batch(b: int = 4) -> dict:
    g = torch.Generator().manual_seed(0)
    fbank = torch.randn(b, 64, 32, generator=g)
    valid = torch.arange(64)[None, :] < torch.tensor([64, 50, 40, 30][:b])[:, None]
    return {"fbank": fbank * valid[..., None], "valid": valid, "seed": torch.arange(b) + 7}


def test_tera_inv_shares_teras_encoder_and_random_weights():
    torch.manual_seed(0)
    tera = build_method(load_recipe(RECIPE_SCHEMA, "audio", "tiny", ["method=tera"]), -4.0, 3.0)
    torch.manual_seed(0)
    inv = build_method(tiny_inv(), -4.0, 3.0)
    assert inv.encoder_spec() == tera.encoder_spec() and inv.encoder_spec()["kind"] == "tera"
    a, b = tera.encoder.state_dict(), inv.encoder.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_views_are_seeded_per_clip_and_differ_from_each_other():
    m = build_method(tiny_inv(), -4.0, 3.0)
    x = batch()
    (va, oka, alt_a, _), (vb, _, _, _) = m.views(x)
    again = m.views(x)[0]
    assert torch.equal(va, again[0]) and torch.equal(alt_a, again[2])
    assert not torch.allclose(va, vb)                              # two different voices of the same clip
    other = m.views({**x, "seed": x["seed"] + 1})[0][0]
    assert not torch.allclose(va, other)
    assert (va[~oka] == 0).all()


def test_loss_terms_and_gradients_reach_encoder_and_projector():
    m = build_method(tiny_inv("inv.weight=0.5"), -4.0, 3.0)
    loss, metrics = m(batch())
    assert torch.isfinite(loss) and set(metrics) >= {"l1", "inv", "inv_sim", "inv_var"}
    torch.testing.assert_close(loss, metrics["l1"] + 0.5 * metrics["inv"])
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.projector.parameters())
    # invariance alone (no reconstruction) still trains the encoder, not the reconstruction head
    m = build_method(tiny_inv("inv.recon_weight=0", "inv.weight=1"), -4.0, 3.0)
    m(batch())[0].backward()
    assert m.encoder.embed.weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in m.head.parameters())


def test_invariance_training_pulls_the_two_views_together():
    """A few Adam steps on one batch lower VICReg's invariance term (the views' embeddings move together)."""
    torch.manual_seed(0)
    m = build_method(tiny_inv("inv.recon_weight=0", "inv.weight=1"), -4.0, 3.0)
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    x = batch()
    first = None
    for _ in range(15):
        loss, metrics = m(x)
        first = float(metrics["inv_sim"]) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(m(x)[1]["inv_sim"]) < 0.5 * first


@pytest.mark.slow
def test_pretrain_tera_inv_end_to_end_exports_a_tera_encoder(clips: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sslkit.cli import app
    from sslkit.core.export import load_encoder

    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["audio", "pretrain", str(clips), "--recipe", "tiny", "--set", "method=tera-inv",
                                   "--set", "train.steps=3", "--set", "train.batch_size=4", "--set",
                                   "train.device=cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    enc = load_encoder(out / "encoder")
    assert enc.arch == "tera" and enc(torch.randn(2, 40, 32)).shape == (2, 32)
    assert "inv" in (out / "metrics.jsonl").read_text()
