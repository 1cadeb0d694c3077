"""Masks, corruption, encoders and the two SSL objectives."""
from __future__ import annotations

import pytest
import torch

from sslkit.domains.tabular.method import Scarf, ScarfConfig, TJepa, TJepaEMA, TJepaMasks, TJepaModel
from sslkit.domains.tabular.model import ENCODERS, FeatureTokenizer
from sslkit.domains.tabular.transforms import jepa_masks, scarf_corrupt

CARDS = [5, 3, 4]


def _batch(b: int = 32, n_num: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"num": torch.randn(b, n_num, generator=g), "miss": (torch.rand(b, n_num, generator=g) < 0.2).to(torch.uint8),
            "cat": torch.stack([torch.randint(0, c, (b,), generator=g) for c in CARDS], 1)}


@pytest.mark.parametrize("d", [2, 7, 14, 54])
def test_jepa_masks_disjoint_and_sized(d):
    torch.manual_seed(d)
    for _ in range(50):
        ctx, tgt = jepa_masks(d)
        assert tgt.shape[0] == 4 and len(ctx) >= 1
        assert not set(ctx.tolist()) & set(tgt.flatten().tolist())          # targets never in the context
        assert len(set(ctx.tolist())) == len(ctx) and all(len(set(t.tolist())) == tgt.shape[1] for t in tgt)
        if d >= 14:
            assert round(d * 0.136) <= len(ctx) <= round(d * 0.368)
            assert round(d * 0.156) <= tgt.shape[1] <= round(d * 0.622)


def test_scarf_corruption_rate_and_marginals():
    torch.manual_seed(0)
    b = _batch(512)
    num, miss, cat = scarf_corrupt(b["num"], b["miss"], b["cat"], 0.6)
    changed = (num != b["num"]).float().mean().item()
    assert 0.5 < changed < 0.65                        # 60% resampled (a donor may be the row itself)
    # every value comes from the same column of some row: the empirical marginal
    for j in range(num.shape[1]):
        assert set(num[:, j].tolist()) <= set(b["num"][:, j].tolist())
    for j in range(cat.shape[1]):
        assert set(cat[:, j].tolist()) <= set(b["cat"][:, j].tolist())


def test_tokenizer_missing_uses_its_own_vector():
    tok = FeatureTokenizer(2, [3], 8)
    num = torch.tensor([[0.0, 1.0]])
    a = tok(num, torch.tensor([[0, 0]], dtype=torch.uint8), torch.tensor([[2]]))
    b = tok(num, torch.tensor([[1, 0]], dtype=torch.uint8), torch.tensor([[2]]))
    assert torch.allclose(b[0, 0] - a[0, 0], tok.num_missing[0]) and torch.equal(a[0, 1:], b[0, 1:])


@pytest.mark.parametrize("kind", sorted(ENCODERS))
def test_every_encoder_forward_backward_finite(kind):
    enc = ENCODERS[kind](n_num=4, cardinalities=CARDS, **({"dim": 16, "depth": 2, "ffn": 32} if kind == "t-jepa" else {"hidden": 32}))
    z = enc(**{k: v for k, v in zip(("num", "miss", "cat"), _batch().values())})
    assert z.shape == (32, enc.out_dim) and torch.isfinite(z).all()
    z.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in enc.parameters() if p.requires_grad)


def _tjepa() -> TJepa:
    torch.manual_seed(0)
    return TJepa(4, CARDS, TJepaModel(dim=16, depth=2, ffn=32, pred_depth=2, pred_dim=8, pred_heads=2), TJepaMasks(), TJepaEMA())


def test_tjepa_target_gets_no_gradient_and_follows_ema():
    m = _tjepa()
    loss, metrics = m(_batch())
    loss.backward()
    assert all(p.grad is None for p in m.encoder.parameters())               # EMA target: stop-gradient
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.context_encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.predictor.parameters())
    with torch.no_grad():
        for p in m.context_encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in m.encoder.parameters()]
    m.after_step(0, 100)                                                      # m = 0.996
    for b, p, o in zip(before, m.encoder.parameters(), m.context_encoder.parameters()):
        torch.testing.assert_close(p, 0.996 * b + 0.004 * o)
    m.after_step(100, 100)                                                    # m = 1 at the end: frozen
    frozen = [p.clone() for p in m.encoder.parameters()]
    m.after_step(100, 100)
    assert all(torch.equal(a, b) for a, b in zip(frozen, m.encoder.parameters()))


def test_tjepa_learns_to_predict_targets():
    m = _tjepa()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for step in range(60):
        torch.manual_seed(step)
        loss, _ = m(_batch(64, seed=step % 4))
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.after_step(step, 60)
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:5]) / 5


def test_scarf_loss_at_init_and_training():
    torch.manual_seed(0)
    m = Scarf(4, CARDS, ScarfConfig(hidden=32, depth=2))
    loss, metrics = m(_batch(64))
    assert 0 < loss.item() < 2 * torch.log(torch.tensor(127.0)).item()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = loss.item()
    for step in range(40):
        torch.manual_seed(step)
        loss, _ = m(_batch(64, seed=step % 4))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_bmm_attention_matches_sdpa():
    from sslkit.domains.tabular.model import attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(8, 2, 15, 32, requires_grad=True) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    out = attention(q, k, v)
    assert torch.allclose(out, ref, atol=1e-5)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    for got, want in zip(grads, torch.autograd.grad(ref, (q, k, v), g)):
        assert torch.allclose(got, want, atol=1e-5)
    q, k, v = q.detach(), k.detach(), v.detach()
    # not a copy of the values: attention mixes the positions
    assert not torch.allclose(attention(q, k, v), v, atol=1e-2)


def test_piecewise_linear_encoding_by_hand():
    from sslkit.domains.tabular.model import normal_edges, piecewise_linear

    edges = torch.tensor([0.0, 1.0, 2.0, 4.0])
    x = torch.tensor([[-1.0], [0.5], [1.5], [3.0], [5.0]])
    expected = torch.tensor([[-1.0, 0, 0], [0.5, 0, 0], [1, 0.5, 0], [1, 1, 0.5], [1, 1, 1.5]])
    assert torch.allclose(piecewise_linear(x, edges)[:, 0], expected)
    e = normal_edges(4)
    assert torch.allclose(e[1:-1], torch.tensor([-0.6745, 0.0, 0.6745]), atol=1e-4) and e[0] == -5.2 and e[-1] == 5.2


def test_piecewise_tokenizer_bends_with_the_value():
    torch.manual_seed(0)
    tok = FeatureTokenizer(1, [], 8, num_bins=8)
    miss = torch.zeros(3, 1, dtype=torch.uint8)
    t = tok(torch.tensor([[-1.0], [0.0], [1.0]]), miss, torch.zeros(3, 0, dtype=torch.long))[:, 0]
    # a linear tokenizer gives equal steps (t1 - t0 == t2 - t1); piecewise-linear bins do not
    assert not torch.allclose(t[1] - t[0], t[2] - t[1], atol=1e-4)
    with pytest.raises(ValueError, match="num_bins"):
        FeatureTokenizer(1, [], 8, num_bins=1)


def test_data_edges_give_every_frequent_amount_its_own_bin():
    import numpy as np

    from sslkit.domains.tabular.model import data_edges, piecewise_linear

    rng = np.random.default_rng(0)
    # capital_gain-like: 92% zeros, 40 distinct amounts, a few missing values (NaN, left out)
    amounts = np.sort(rng.normal(2.0, 0.5, 40))
    x = np.where(rng.random(5000) < 0.92, 0.0, amounts[rng.integers(0, 40, 5000)])
    x[:10] = np.nan
    e = data_edges(x, 64)
    assert e.shape == (65,) and (np.diff(e) > 0).all()
    codes = piecewise_linear(torch.tensor(np.r_[0.0, amounts], dtype=torch.float32)[:, None], torch.tensor(e))[:, 0]
    assert len(torch.unique(codes.round(decimals=4), dim=0)) == 41              # every amount distinguishable
    # shared normal-quantile bins leave the 40 amounts in a few bins (that is what data edges fix)
    from sslkit.domains.tabular.model import normal_edges
    shared = piecewise_linear(torch.tensor(amounts, dtype=torch.float32)[:, None], normal_edges(16))[:, 0]
    assert int((shared.std(0) > 0).sum()) <= 4
    # few distinct values: padded below the minimum, still increasing
    e = data_edges(np.array([1.0, 2.0, 2.0, 3.0]), 16)
    assert e.shape == (17,) and (np.diff(e) > 0).all() and e[-1] == 3.0


def test_data_bin_edges_are_fitted_in_both_encoders_and_saved():
    import numpy as np

    model = TJepaModel(dim=16, depth=1, heads=2, ffn=16, pred_dim=8, pred_depth=1, num_bins=8, bin_edges="data")
    m = TJepa(4, CARDS, model, TJepaMasks(), TJepaEMA())
    b = _batch(256)
    m.fit_bin_edges(b["num"].numpy(), b["miss"].numpy())
    e = m.context_encoder.tokenizer.edges
    assert e.shape == (4, 9) and torch.equal(e, m.encoder.tokenizer.edges) and not torch.equal(e[0], e[1])
    assert "tokenizer.edges" in m.encoder.state_dict()
    enc = ENCODERS["t-jepa"](**m.kwargs)
    enc.load_state_dict(m.encoder.state_dict())
    assert torch.equal(enc.tokenizer.edges, e)
    # shared normal bins stay out of the state dict (encoders exported before the option still load)
    plain = TJepa(4, CARDS, TJepaModel(dim=16, depth=1, heads=2, ffn=16, pred_dim=8, pred_depth=1, num_bins=8),
                  TJepaMasks(), TJepaEMA())
    assert "tokenizer.edges" not in plain.encoder.state_dict() and "bin_edges" not in plain.kwargs
    assert np.isfinite(m.encoder(b["num"], b["miss"], b["cat"]).numpy()).all()


def test_block_last_positions_equal_the_full_block_and_the_predictor_uses_them():
    from sslkit.domains.tabular.model import Block, TJepaPredictor

    torch.manual_seed(0)
    block = Block(16, 4, 32)
    x = torch.randn(5, 9, 16)
    torch.testing.assert_close(block(x, last=3), block(x)[:, -3:])
    pred = TJepaPredictor(10, 32, dim=16, depth=2, heads=4).eval()
    ctx, ctx_idx, tgt_idx = torch.randn(4, 5, 32), torch.tensor([0, 2, 4, 6]), torch.tensor([[1, 3], [5, 7], [8, 9]])
    full = pred.embed(ctx) + torch.cat([torch.zeros(1, 16), pred.pos[ctx_idx]])
    masks = (pred.mask_token + pred.pos[tgt_idx]).unsqueeze(1).expand(3, 4, 2, 16).reshape(12, 2, 16)
    seq = torch.cat([full.repeat(3, 1, 1), masks], dim=1)
    for blk in pred.blocks:
        seq = blk(seq)
    torch.testing.assert_close(pred(ctx, ctx_idx, tgt_idx), pred.out(pred.norm(seq[:, -2:])).reshape(3, 4, 2, 32))


def test_batch_target_norm_leaves_only_what_tells_rows_apart():
    """Without normalisation, predicting each target feature's mean over the rows already gives a small loss
    (the shortcut a collapsing encoder takes); with loss.target_norm=batch that same guess (zero after
    standardising across rows) scores exactly 1, so only row-specific predictions lower it."""
    from sslkit.domains.tabular.method import TJepaLoss

    batch = _batch(64)

    class RowMean(torch.nn.Module):   # the per-feature mean of the raw targets, the same for every row
        def forward(self, ctx, ctx_idx, tgt_idx):  # noqa: ANN001, ANN201
            t = m.encoder.tokens(batch["num"], batch["miss"], batch["cat"])[:, 1 + tgt_idx].transpose(0, 1)
            return t.mean(1, keepdim=True).expand_as(t)

    class Zeros(torch.nn.Module):
        def forward(self, ctx, ctx_idx, tgt_idx):  # noqa: ANN001, ANN201
            return torch.zeros(tgt_idx.shape[0], ctx.shape[0], tgt_idx.shape[1], ctx.shape[-1])

    losses, spreads = {}, {}
    for norm, guess in (("none", RowMean()), ("batch", Zeros())):
        torch.manual_seed(0)
        m = TJepa(4, CARDS, TJepaModel(dim=16, depth=1, heads=2, ffn=16, pred_dim=8, pred_depth=1), TJepaMasks(),
                  TJepaEMA(), TJepaLoss(target_norm=norm))
        m.predictor = guess
        torch.manual_seed(1)
        loss, metrics = m(batch)
        losses[norm], spreads[norm] = loss.item(), metrics["target_std"].item()
    assert losses["none"] < 0.5
    assert abs(losses["batch"] - 1.0) < 1e-3
    # the logged target_std is the raw targets' spread in both cases (the collapse diagnostic), never the normalised 1
    assert spreads["batch"] == pytest.approx(spreads["none"], rel=1e-5) and spreads["batch"] < 0.9
