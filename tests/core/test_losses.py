"""Core losses against hand-computed values and loop-based reference formulas."""
from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import Tensor, nn

from sslkit.core.losses import (
    LOSSES,
    BarlowTwinsLoss,
    DECLoss,
    DINOLoss,
    IBOTPatchLoss,
    KoLeoLoss,
    sinkhorn_knopp,
    MaskedReconstructionLoss,
    MatryoshkaLoss,
    NegativeCosineLoss,
    NTXentLoss,
    VICRegLoss,
    byol_loss,
    covariance,
    invariance,
    nt_xent,
    student_t_assignment,
    target_distribution,
    variance,
)



@pytest.fixture(autouse=True)
def _float64() -> Iterator[None]:
    """The references below are plain-Python float64; compare at that precision."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _rows(t: Tensor) -> list[list[float]]:
    return t.tolist()


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


# ---------------------------------------------------------------- NT-Xent


def _nt_xent_loops(z0: Tensor, z1: Tensor, tau: float) -> float:
    views = _rows(z0) + _rows(z1)
    n = z0.shape[0]
    total = 0.0
    for i, anchor in enumerate(views):
        positive = (i + n) % (2 * n)
        denom = sum(math.exp(_cos(anchor, views[k]) / tau) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(_cos(anchor, views[positive]) / tau) / denom)
    return total / (2 * n)


@pytest.mark.parametrize("n,tau", [(2, 0.5), (5, 0.1), (16, 1.0)])
def test_nt_xent_identical_embeddings_give_log_2n_minus_1(n: int, tau: float) -> None:
    z = torch.randn(1, 8).repeat(n, 1)
    assert NTXentLoss(temperature=tau)(z, z.clone()).item() == pytest.approx(math.log(2 * n - 1), rel=1e-9)


def test_nt_xent_hand_computed() -> None:
    # views a0=(1,0), b0=(0,1), a1=(1,0), b1=(0,1); tau=1: each anchor sees its positive at
    # cos 1 and two negatives at cos 0 -> -log(e / (e + 2)) = log(1 + 2/e).
    z = torch.eye(2)
    assert nt_xent(z, z.clone(), temperature=1.0).item() == pytest.approx(math.log(1 + 2 / math.e))


def test_nt_xent_matches_loop_reference() -> None:
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    expected = _nt_xent_loops(z0, z1, 0.2)
    assert NTXentLoss(temperature=0.2)(z0, z1).item() == pytest.approx(expected, rel=1e-9)
    assert nt_xent(z0, z1, 0.2).item() == pytest.approx(expected, rel=1e-9)


def test_nt_xent_scale_invariant_and_symmetric() -> None:
    z0, z1 = torch.randn(4, 3), torch.randn(4, 3)
    base = nt_xent(z0, z1)
    assert nt_xent(3.0 * z0, 0.5 * z1).item() == pytest.approx(base.item())
    assert nt_xent(z1, z0).item() == pytest.approx(base.item())


def test_nt_xent_shape_errors() -> None:
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        NTXentLoss()(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        NTXentLoss()(torch.randn(4), torch.randn(4))
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(temperature=0.0)


# ---------------------------------------------------------------- VICReg


def _vicreg_loops(z0: Tensor, z1: Tensor, eps: float = 1e-4) -> dict[str, float]:
    def var_term(z: list[list[float]]) -> float:
        cols = list(zip(*z))
        return sum(max(0.0, 1.0 - math.sqrt(statistics.variance(c) + eps)) for c in cols) / len(cols)

    def cov_term(z: list[list[float]]) -> float:
        cols = list(zip(*z))
        d, total = len(cols), 0.0
        for i in range(d):
            for j in range(d):
                if i != j:
                    total += statistics.covariance(cols[i], cols[j]) ** 2
        return total / d

    a, b = _rows(z0), _rows(z1)
    mse = sum((x - y) ** 2 for ra, rb in zip(a, b) for x, y in zip(ra, rb)) / (len(a) * len(a[0]))
    return {"invariance": mse, "variance": (var_term(a) + var_term(b)) / 2, "covariance": cov_term(a) + cov_term(b)}


def test_vicreg_hand_computed() -> None:
    # z0: each column has unbiased variance 2 (std > 1, no variance penalty) and
    # Cov_01 = 2, so c(z0) = (2² + 2²) / 2 = 4. z1 = 0: v = 1 − √1e-4 = 0.99, c = 0.
    z0 = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    z1 = torch.zeros(2, 2)
    terms = VICRegLoss().components(z0, z1)
    assert terms["invariance"].item() == pytest.approx(1.0)
    assert terms["variance"].item() == pytest.approx(0.495)
    assert terms["covariance"].item() == pytest.approx(4.0)
    assert VICRegLoss()(z0, z1).item() == pytest.approx(25 * 1.0 + 25 * 0.495 + 1 * 4.0)


def test_vicreg_matches_loop_reference() -> None:
    g = torch.Generator().manual_seed(1)
    z0, z1 = 0.5 * torch.randn(7, 4, generator=g), 0.5 * torch.randn(7, 4, generator=g)
    ref = _vicreg_loops(z0, z1)
    terms = VICRegLoss().components(z0, z1)
    for name in ref:
        assert terms[name].item() == pytest.approx(ref[name], rel=1e-9)
    assert invariance(z0, z1).item() == pytest.approx(ref["invariance"])
    assert ((variance(z0) + variance(z1)) / 2).item() == pytest.approx(ref["variance"])
    assert (covariance(z0) + covariance(z1)).item() == pytest.approx(ref["covariance"])
    loss = VICRegLoss(sim_weight=2.0, var_weight=3.0, cov_weight=5.0)(z0, z1)
    assert loss.item() == pytest.approx(2 * ref["invariance"] + 3 * ref["variance"] + 5 * ref["covariance"])


def test_vicreg_errors() -> None:
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        VICRegLoss()(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="at least 2"):
        VICRegLoss()(torch.randn(1, 3), torch.randn(1, 3))


# ---------------------------------------------------------------- Barlow Twins


def _barlow_loops(z0: Tensor, z1: Tensor, lam: float) -> float:
    def standardise(col: tuple[float, ...]) -> list[float]:
        mu, sd = statistics.fmean(col), statistics.pstdev(col)
        return [(x - mu) / sd for x in col]

    a = [standardise(c) for c in zip(*_rows(z0))]
    b = [standardise(c) for c in zip(*_rows(z1))]
    n, total = z0.shape[0], 0.0
    for i in range(len(a)):
        for j in range(len(b)):
            c = sum(x * y for x, y in zip(a[i], b[j])) / n
            total += (1 - c) ** 2 if i == j else lam * c**2
    return total


def test_barlow_twins_hand_computed() -> None:
    # Standardised columns are ±1; c = [[1, -1], [1, -1]] -> (1-1)² + (1+1)² + λ(1 + 1).
    z0 = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    z1 = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    assert BarlowTwinsLoss(lambda_offdiag=5e-3, eps=0.0)(z0, z1).item() == pytest.approx(4 + 2 * 5e-3)


def test_barlow_twins_matches_loop_reference_and_identity() -> None:
    g = torch.Generator().manual_seed(2)
    z0, z1 = torch.randn(9, 4, generator=g), torch.randn(9, 4, generator=g)
    assert BarlowTwinsLoss(eps=0.0)(z0, z1).item() == pytest.approx(_barlow_loops(z0, z1, 5e-3), rel=1e-9)
    # identical views: c is the correlation matrix, its diagonal is 1, only the redundancy term remains
    corr = torch.corrcoef(z0.T)
    expected = 5e-3 * (corr.pow(2).sum() - corr.diagonal().pow(2).sum()).item()
    assert BarlowTwinsLoss(eps=0.0)(z0, z0.clone()).item() == pytest.approx(expected, rel=1e-9)


def test_barlow_twins_errors() -> None:
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        BarlowTwinsLoss()(torch.randn(4, 3), torch.randn(3, 3))
    with pytest.raises(ValueError, match="N >= 2"):
        BarlowTwinsLoss()(torch.randn(1, 3), torch.randn(1, 3))


# ---------------------------------------------------------------- BYOL


def test_byol_values() -> None:
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    z = torch.tensor([[2.0, 0.0], [0.0, -1.0], [0.0, 1.0]])
    # cosines 1, -1, 0 -> losses 0, 4, 2 -> mean 2
    assert NegativeCosineLoss()(p, z).item() == pytest.approx(2.0)


def test_byol_equals_normalised_squared_distance_and_stops_target_gradient() -> None:
    p = torch.randn(5, 6, requires_grad=True)
    z = torch.randn(5, 6, requires_grad=True)
    pn, zn = p / p.norm(dim=1, keepdim=True), z / z.norm(dim=1, keepdim=True)
    expected = (pn - zn).pow(2).sum(dim=1).mean()
    loss = byol_loss(p, z)
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert z.grad is None


def test_byol_shape_error() -> None:
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        NegativeCosineLoss()(torch.randn(4, 3), torch.randn(4, 4))


# ---------------------------------------------------------------- DINO


def test_dino_hand_computed_two_dims() -> None:
    # temperatures 1, centre 0. Pair (t0, s1): teacher softmax [1/4, 3/4], student uniform
    # -> CE = ln 2. Pair (t1, s0): teacher uniform, student log-probs ln(1/4), ln(3/4)
    # -> CE = (ln 4 + ln 4/3) / 2. Loss = mean of the two.
    loss_fn = DINOLoss(out_dim=2, student_temp=1.0, teacher_temp=1.0, warmup_teacher_temp=1.0)
    t0, t1 = torch.tensor([[0.0, math.log(3.0)]]), torch.zeros(1, 2)
    s0, s1 = torch.tensor([[0.0, math.log(3.0)]]), torch.zeros(1, 2)
    expected = (math.log(2.0) + 0.5 * (math.log(4.0) + math.log(4.0 / 3.0))) / 2
    assert loss_fn([s0, s1], [t0, t1]).item() == pytest.approx(expected)


def _dino_loops(student: list[Tensor], teacher: list[Tensor], center: Tensor, tau_s: float, tau_t: float) -> float:
    def softmax(row: list[float], tau: float) -> list[float]:
        m = max(row)
        e = [math.exp((x - m) / tau) for x in row]
        return [x / sum(e) for x in e]

    losses = []
    for ti, t in enumerate(teacher):
        for si, s in enumerate(student):
            if ti == si:
                continue
            per_sample = []
            for trow, srow in zip(_rows(t), _rows(s)):
                pt = softmax([x - c for x, c in zip(trow, center[0].tolist())], tau_t)
                ps = softmax(srow, tau_s)
                per_sample.append(-sum(a * math.log(b) for a, b in zip(pt, ps)))
            losses.append(sum(per_sample) / len(per_sample))
    return sum(losses) / len(losses)


def test_dino_matches_loop_reference_with_local_crops() -> None:
    g = torch.Generator().manual_seed(3)
    teacher = [torch.randn(4, 5, generator=g) for _ in range(2)]
    student = [torch.randn(4, 5, generator=g) for _ in range(4)]  # 2 global + 2 local crops
    loss_fn = DINOLoss(out_dim=5)
    loss_fn.center.copy_(torch.randn(1, 5, generator=g))
    expected = _dino_loops(student, teacher, loss_fn.center.clone(), 0.1, 0.04)
    assert loss_fn.eval()(student, teacher).item() == pytest.approx(expected, rel=1e-9)


def test_dino_explicit_pairs() -> None:
    t, s = torch.randn(3, 4), torch.randn(3, 4)
    loss_fn = DINOLoss(out_dim=4, student_temp=1.0, teacher_temp=1.0, warmup_teacher_temp=1.0).eval()
    expected = -(torch.softmax(t, 1) * torch.log_softmax(s, 1)).sum(1).mean()
    assert loss_fn([s], [t], pairs=[(0, 0)]).item() == pytest.approx(expected.item())


def test_dino_center_update_follows_formula() -> None:
    loss_fn = DINOLoss(out_dim=3, center_momentum=0.9)
    t0, t1 = torch.randn(4, 3), torch.randn(4, 3)
    s = [torch.randn(4, 3), torch.randn(4, 3)]
    loss_fn(s, [t0, t1])
    first = 0.1 * torch.cat([t0, t1]).mean(0, keepdim=True)
    assert torch.allclose(loss_fn.center, first)
    t2, t3 = torch.randn(4, 3), torch.randn(4, 3)
    before = [loss_fn.teacher_probs(t) for t in (t2, t3)]   # with the centre the call will use, before it moves
    loss_fn(s, [t2, t3])
    second = 0.9 * first + 0.1 * torch.cat([t2, t3]).mean(0, keepdim=True)
    assert torch.allclose(loss_fn.center, second)
    assert all(torch.equal(a, b) for a, b in zip(loss_fn.last_targets, before, strict=True))   # the targets used
    loss_fn.eval()(s, [torch.randn(4, 3), torch.randn(4, 3)])
    assert torch.allclose(loss_fn.center, second)  # evaluation does not move the centre


def test_dino_teacher_is_sharpened_not_uniform_and_gets_no_gradient() -> None:
    g = torch.Generator().manual_seed(4)
    loss_fn = DINOLoss(out_dim=16, center_momentum=0.0)
    teacher = [torch.randn(8, 16, generator=g, requires_grad=True) for _ in range(2)]
    student = [torch.randn(8, 16, generator=g, requires_grad=True) for _ in range(2)]
    loss_fn(student, teacher).backward()
    probs = loss_fn.teacher_probs(teacher[0])  # centre is now the teacher mean
    assert probs.max(dim=1).values.min().item() > 2.0 / 16
    student_probs = torch.softmax(student[0].detach() / 0.1, dim=1)
    entropy = lambda p: -(p * p.log()).sum(1).mean()  # noqa: E731
    assert entropy(probs) < entropy(student_probs)  # τ_t = 0.04 sharper than τ_s = 0.1
    assert all(t.grad is None for t in teacher)
    assert all(s.grad is not None for s in student)


def test_dino_sinkhorn_targets_use_every_prototype_equally() -> None:
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(16, 8, generator=g)
    teacher[:, 0] += 5.0                                   # every sample prefers prototype 0: centring-free collapse
    probs = sinkhorn_knopp(teacher, temp=0.1, iters=50)
    assert torch.allclose(probs.sum(1), torch.ones_like(probs[:, 0]), atol=1e-5)          # a distribution per sample
    assert torch.allclose(probs.sum(0), torch.full_like(probs[0], 16 / 8), atol=0.1)  # equal prototype mass
    assert probs.argmax(1).unique().numel() > 1                            # not all samples on prototype 0
    loss_fn = DINOLoss(out_dim=8, centering="sinkhorn")
    assert torch.allclose(loss_fn.teacher_probs(teacher), sinkhorn_knopp(teacher, 0.04))
    student = torch.randn(16, 8, generator=g, requires_grad=True)
    loss_fn([student], [teacher], pairs=[(0, 0)]).backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    with pytest.raises(ValueError, match="centering"):
        DINOLoss(out_dim=8, centering="mean")


def test_dino_teacher_temperature_schedule() -> None:
    loss_fn = DINOLoss(out_dim=2, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_steps=10)
    assert loss_fn.teacher_temperature(0) == pytest.approx(0.04)
    assert loss_fn.teacher_temperature(5) == pytest.approx(0.055)
    assert loss_fn.teacher_temperature(10) == pytest.approx(0.07)
    assert loss_fn.teacher_temperature(1000) == pytest.approx(0.07)
    with pytest.raises(ValueError, match="step="):
        loss_fn([torch.randn(2, 2)] * 2, [torch.randn(2, 2)] * 2)


def test_dino_errors() -> None:
    loss_fn = DINOLoss(out_dim=4)
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        loss_fn([torch.randn(2, 3)] * 2, [torch.randn(2, 3)] * 2)
    with pytest.raises(ValueError, match="no \\(teacher, student\\) pairs"):
        loss_fn([torch.randn(2, 4)], [torch.randn(2, 4)])
    with pytest.raises(ValueError, match="out of range"):
        loss_fn([torch.randn(2, 4)], [torch.randn(2, 4)], pairs=[(0, 1)])
    with pytest.raises(ValueError, match="batch sizes"):
        loss_fn([torch.randn(2, 4)], [torch.randn(3, 4)], pairs=[(0, 0)])


# ---------------------------------------------------------------- masked reconstruction


def test_masked_mse_and_l1_hand_computed() -> None:
    pred = torch.zeros(1, 3, 2)
    target = torch.tensor([[[1.0, 3.0], [2.0, 2.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, True, False]])
    # masked patches: mse (1+9)/2 = 5 and (4+4)/2 = 4 -> 4.5; l1 (1+3)/2 = 2 and 2 -> 2
    assert MaskedReconstructionLoss()(pred, target, mask).item() == pytest.approx(4.5)
    assert MaskedReconstructionLoss(kind="l1")(pred, target, mask.int()).item() == pytest.approx(2.0)


def test_masked_norm_pix() -> None:
    # patch [1, 2, 3]: mean 2, unbiased var 1 -> target [-1, 0, 1] / √(1 + eps)
    target = torch.tensor([[[1.0, 2.0, 3.0]]])
    pred = torch.tensor([[[-1.0, 0.0, 1.0]]]) / math.sqrt(1 + 1e-6)
    loss = MaskedReconstructionLoss(norm_pix=True)(pred, target, torch.ones(1, 1))
    assert loss.item() == pytest.approx(0.0, abs=1e-12)


def test_masked_ignores_visible_patches() -> None:
    pred = torch.randn(2, 5, 4, requires_grad=True)
    target = torch.randn(2, 5, 4)
    mask = torch.rand(2, 5) > 0.5
    mask[0, 0], mask[0, 1] = True, False
    loss_fn = MaskedReconstructionLoss()
    loss = loss_fn(pred, target, mask)
    changed = pred.detach().clone()
    changed[~mask] = 1e3
    assert loss_fn(changed, target, mask).item() == pytest.approx(loss.item())
    loss.backward()
    assert pred.grad[~mask].abs().sum() == 0
    manual = sum(((pred[b, i] - target[b, i]) ** 2).mean().item() for b in range(2) for i in range(5) if mask[b, i])
    assert loss.item() == pytest.approx(manual / int(mask.sum()))


def test_masked_errors() -> None:
    loss_fn = MaskedReconstructionLoss()
    with pytest.raises(ValueError, match="no masked position"):
        loss_fn(torch.randn(1, 2, 3), torch.randn(1, 2, 3), torch.zeros(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(B, N, P\)"):
        loss_fn(torch.randn(1, 2, 3), torch.randn(1, 2, 4), torch.ones(1, 2))
    with pytest.raises(ValueError, match=r"\(B, N\)"):
        loss_fn(torch.randn(1, 2, 3), torch.randn(1, 2, 3), torch.ones(2, 1))
    with pytest.raises(ValueError, match="'mse' or 'l1'"):
        MaskedReconstructionLoss(kind="huber")  # type: ignore[arg-type]


# ---------------------------------------------------------------- DEC


def test_student_t_hand_computed_and_alpha_reference() -> None:
    # distances² 0 and 1, α=1: kernels 1 and 1/2 -> q = [2/3, 1/3]
    q = student_t_assignment(torch.zeros(1, 2), torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    assert q.tolist()[0] == pytest.approx([2 / 3, 1 / 3])
    z, mu, alpha = torch.randn(5, 3), torch.randn(4, 3), 2.5
    expected = []
    for zi in _rows(z):
        row = []
        for mj in _rows(mu):
            sq_dist = sum((a - b) ** 2 for a, b in zip(zi, mj))
            row.append((1 + sq_dist / alpha) ** (-(alpha + 1) / 2))
        expected.append([k / sum(row) for k in row])
    got = student_t_assignment(z, mu, alpha).tolist()
    for grow, erow in zip(got, expected):
        assert grow == pytest.approx(erow, rel=1e-9)


def test_target_distribution_hand_computed_and_sharper() -> None:
    q = torch.tensor([[0.6, 0.4], [0.3, 0.7]])
    # f = [0.9, 1.1]; row 0: [0.36/0.9, 0.16/1.1] = [0.4, 0.14545...] -> renormalised
    w0 = [0.36 / 0.9, 0.16 / 1.1]
    w1 = [0.09 / 0.9, 0.49 / 1.1]
    p = target_distribution(q).tolist()
    assert p[0] == pytest.approx([w / sum(w0) for w in w0])
    assert p[1] == pytest.approx([w / sum(w1) for w in w1])

    q = student_t_assignment(torch.randn(32, 4), torch.randn(5, 4))
    p = target_distribution(q)
    assert torch.allclose(q.sum(1), torch.ones(32)) and torch.allclose(p.sum(1), torch.ones(32))
    entropy = lambda x: -(x * x.log()).sum(1)  # noqa: E731
    # dividing by f_j can move single rows either way; on average P is more confident
    assert p.max(1).values.mean() > q.max(1).values.mean()
    assert entropy(p).mean() < entropy(q).mean()
    # with equal cluster frequencies p ∝ q², sharper row by row: [0.36, 0.16] / 0.52
    balanced = target_distribution(torch.tensor([[0.6, 0.4], [0.4, 0.6]]))
    assert balanced[0].tolist() == pytest.approx([0.36 / 0.52, 0.16 / 0.52])


def test_dec_loss_is_kl_p_q() -> None:
    q = torch.tensor([[0.6, 0.4], [0.3, 0.7]], requires_grad=True)
    p = target_distribution(q.detach())
    expected = 0.0
    for prow, qrow in zip(p.tolist(), q.tolist()):
        expected += sum(pi * math.log(pi / qi) for pi, qi in zip(prow, qrow)) / 2  # batchmean over 2 rows
    assert DECLoss()(q).item() == pytest.approx(expected)
    assert DECLoss()(q, p).item() == pytest.approx(expected)
    assert DECLoss()(q, q.detach()).item() == pytest.approx(0.0, abs=1e-12)
    DECLoss()(q).backward()
    assert q.grad is not None


def test_dec_errors() -> None:
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        DECLoss()(torch.rand(4))
    with pytest.raises(ValueError, match="same shape"):
        DECLoss()(torch.rand(4, 2), torch.rand(4, 3))
    with pytest.raises(ValueError, match="same D"):
        student_t_assignment(torch.randn(4, 3), torch.randn(2, 4))


# ---------------------------------------------------------------- Matryoshka


def test_matryoshka_weighted_sum_of_prefix_losses() -> None:
    squared = lambda a, b: (a - b).pow(2).sum()  # noqa: E731
    z0, z1 = torch.ones(1, 4), torch.zeros(1, 4)
    # prefixes of 2 and 4 dims -> 2 and 4; weights 1 and 0.5 -> 2 + 2
    assert MatryoshkaLoss(squared, dims=[2, 4], weights=[1.0, 0.5])(z0, z1).item() == pytest.approx(4.0)
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    expected = _nt_xent_loops(a[:, :2], b[:, :2], 0.5) + _nt_xent_loops(a[:, :8], b[:, :8], 0.5)
    assert MatryoshkaLoss(NTXentLoss(), dims=[2, 8])(a, b).item() == pytest.approx(expected, rel=1e-9)


def test_matryoshka_errors() -> None:
    with pytest.raises(ValueError, match="exceeds the embedding size D=4"):
        MatryoshkaLoss(NTXentLoss(), dims=[2, 8])(torch.randn(3, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="one weight per dim"):
        MatryoshkaLoss(NTXentLoss(), dims=[2, 4], weights=[1.0])
    with pytest.raises(ValueError, match="distinct positive"):
        MatryoshkaLoss(NTXentLoss(), dims=[0, 4])


# ---------------------------------------------------------------- every registered loss


def _registry_cases() -> dict[str, tuple[Callable[[], nn.Module], Callable[[], tuple[Tensor, ...]]]]:
    pair = lambda: (torch.randn(8, 6, requires_grad=True), torch.randn(8, 6, requires_grad=True))  # noqa: E731
    return {
        "nt_xent": (NTXentLoss, pair),
        "vicreg": (VICRegLoss, pair),
        "barlow_twins": (BarlowTwinsLoss, pair),
        "byol": (NegativeCosineLoss, pair),
        "dino": (lambda: DINOLoss(out_dim=6), lambda: ([*pair()], [*pair()])),
        "masked_reconstruction": (
            MaskedReconstructionLoss,
            lambda: (
                torch.randn(2, 5, 3, requires_grad=True),
                torch.randn(2, 5, 3),
                torch.tensor([[1, 0, 1, 0, 0]] * 2),
            ),
        ),
        "dec": (DECLoss, lambda: (torch.softmax(torch.randn(8, 3), 1).requires_grad_(),)),
        "matryoshka": (lambda: MatryoshkaLoss(NTXentLoss(), dims=[2, 6]), pair),
        "ibot": (lambda: IBOTPatchLoss(out_dim=6), lambda: (
            torch.randn(3, 6, requires_grad=True), torch.randn(3, 6), torch.tensor([[1, 0, 1], [0, 1, 0]]).bool())),
        "koleo": (KoLeoLoss, lambda: (torch.randn(8, 6, requires_grad=True),)),
    }


def test_every_registered_loss_has_a_case() -> None:
    assert set(_registry_cases()) == set(LOSSES)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_registered_loss_is_finite_and_backpropagates(name: str) -> None:
    build, inputs = _registry_cases()[name]
    loss_fn = build()
    assert isinstance(loss_fn, LOSSES[name]) and isinstance(loss_fn, nn.Module)
    args = inputs()
    loss = loss_fn(*args)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    flat = [x for a in args for x in (a if isinstance(a, list) else [a])]
    leaves = [x for x in flat if x.is_leaf and x.requires_grad]
    grads = [x.grad for x in leaves if x.grad is not None]
    assert grads, f"{name}: no gradient reached the inputs"
    assert all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    doc = (sys.modules[LOSSES[name].__module__].__doc__ or "") + (LOSSES[name].__doc__ or "")
    assert "arXiv:" in doc, f"{name}: docstring must name the paper"


# ---------------------------------------------------------------- distributed gathering (2 CPU ranks, gloo)


def _distributed_worker(
    rank: int, world: int, init_file: str, z0: Tensor, z1: Tensor, t: list[Tensor], out: dict[int, dict]
) -> None:
    """One gloo rank: the local half of the batch through the gathering losses and the DINO centre."""
    import torch.distributed as dist

    torch.set_default_dtype(torch.float64)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    n = z0.shape[0] // world
    local = slice(rank * n, (rank + 1) * n)
    results: dict[str, object] = {}
    gathering = (("nt_xent", NTXentLoss(gather_distributed=True)), ("vicreg", VICRegLoss(gather_distributed=True)))
    for name, loss_fn in gathering:
        a, b = z0[local].clone().requires_grad_(), z1[local].clone().requires_grad_()
        loss = loss_fn(a, b)
        loss.backward()
        # DDP averages gradients over ranks: compare grad / world with the single-process gradient
        results[name] = (loss.item(), a.grad / world, b.grad / world)
    dino = DINOLoss(out_dim=t[0].shape[1])
    dino([v[local] for v in t], [v[local] for v in t])
    results["center"] = dino.center.clone()
    results["sinkhorn"] = sinkhorn_knopp(t[0][local], 0.1)
    out[rank] = results
    dist.destroy_process_group()


def test_gather_distributed_matches_single_process(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(6)
    z0, z1 = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    t = [torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)]
    out = mp.Manager().dict()
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), z0, z1, t, out), nprocs=2, join=True)

    for name, loss_fn in (("nt_xent", NTXentLoss()), ("vicreg", VICRegLoss())):
        a, b = z0.clone().requires_grad_(), z1.clone().requires_grad_()
        loss = loss_fn(a, b)
        loss.backward()
        per_rank = [out[r][name] for r in range(2)]
        assert sum(r[0] for r in per_rank) / 2 == pytest.approx(loss.item(), rel=1e-9)
        assert torch.allclose(torch.cat([r[1] for r in per_rank]), a.grad)
        assert torch.allclose(torch.cat([r[2] for r in per_rank]), b.grad)
    expected_center = 0.1 * torch.cat(t).mean(0, keepdim=True)
    assert torch.allclose(out[0]["center"], expected_center) and torch.allclose(out[1]["center"], expected_center)
    # Sinkhorn-Knopp over 2 ranks = over the whole batch in one process
    assert torch.allclose(torch.cat([out[r]["sinkhorn"] for r in range(2)]), sinkhorn_knopp(t[0], 0.1))


@pytest.mark.parametrize("loss_cls", [VICRegLoss, BarlowTwinsLoss])
def test_batch_statistics_stay_float32_under_bf16_autocast(loss_cls: type[nn.Module]) -> None:
    torch.set_default_dtype(torch.float32)
    g = torch.Generator().manual_seed(7)
    x, z1 = torch.randn(16, 12, generator=g), torch.randn(16, 12, generator=g)
    layer = nn.Linear(12, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z0 = layer(x)
        assert z0.dtype == torch.bfloat16
        loss = loss_cls()(z0, z1)
    # same inputs, computed outside autocast: bf16 must not leak into the statistics
    reference = loss_cls()(z0.float(), z1)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
