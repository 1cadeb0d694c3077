"""train.precision: auto — the measured per-(domain, method) CPU table, fit() training in what it says (and saying so
in the manifest), and `sslkit doctor` listing it."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from sslkit.core import precision
from sslkit.core.errors import UserError
from sslkit.core.loop import fit, seed_everything, use_bf16
from sslkit.core.precision import Choice, decide
from sslkit.core.recipes import Recipe, TrainConfig
from sslkit.core.runs import Run

CPU = torch.device("cpu")


@pytest.fixture
def bf16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend this CPU has bf16 kernels (CPU autocast is correct, if slow, on any CPU)."""
    monkeypatch.setattr(precision, "bf16_supported", lambda device: True)


def test_auto_on_cpu_follows_the_measured_table_and_is_fp32_for_anything_unmeasured(bf16_cpu, monkeypatch) -> None:  # noqa: ANN001
    assert decide("auto", CPU, "nowhere", "unmeasured").precision == "fp32"
    assert "not measured" in decide("auto", CPU, "nowhere", "unmeasured").why
    monkeypatch.setitem(precision.CPU_AUTO, ("toy", "probe"), Choice("bf16", "1.9x measured"))
    monkeypatch.setitem(precision.CPU_AUTO, ("toy", "slow"), Choice("fp32", "0.8x measured"))
    assert decide("auto", CPU, "toy", "probe") == Choice("bf16", "1.9x measured")
    assert not use_bf16("auto", CPU, "toy", "slow")
    assert decide("fp32", CPU, "toy", "probe").precision == "fp32"          # an explicit setting wins both ways
    assert decide("bf16", CPU, "toy", "slow").precision == "bf16"


def test_explicit_bf16_without_kernels_is_a_user_error_and_auto_falls_back(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(precision, "bf16_supported", lambda device: False)
    with pytest.raises(UserError, match="train.precision=fp32"):
        decide("bf16", CPU, "tabular", "t-jepa")
    assert decide("auto", CPU, "tabular", "t-jepa").precision == "fp32"


def test_every_table_entry_names_a_shipped_method_and_gives_its_figure() -> None:
    from sslkit.core.recipes import shipped_recipes

    import yaml

    shipped = {(d, (yaml.safe_load(p.read_text()) or {}).get("method")) for d, _, p in shipped_recipes()}
    for key, choice in precision.CPU_AUTO.items():
        assert key in shipped, f"{key} is not a shipped (domain, method)"
        assert choice.precision in ("bf16", "fp32") and "x" in choice.why     # the measured speed ratio, e.g. 1.62x


class Probe(nn.Module):
    """Records the dtype its linear layer computes in."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(8, 8)
        self.seen: set[torch.dtype] = set()

    def forward(self, batch):  # noqa: ANN001, ANN201
        (x,) = batch
        y = self.encoder(x)
        self.seen.add(y.dtype)
        return (y.float() - x).pow(2).mean(), {}


class ProbeRecipe(Recipe):
    pass


def _fit(tmp: Path, precision_setting: str) -> tuple[Probe, Run]:
    t = TrainConfig(steps=3, batch_size=10, log_every=1, checkpoint_every=10, precision=precision_setting, device="cpu")
    run = Run.open(tmp, domain="toy", recipe=ProbeRecipe(domain="toy", method="probe", train=t), overwrite=True)
    seed_everything(0)
    m = Probe()
    fit(m, TensorDataset(torch.randn(40, 8)), t, run)
    return m, run


def test_fit_trains_in_the_chosen_precision_and_writes_why_to_the_manifest(tmp_path, bf16_cpu, monkeypatch) -> None:  # noqa: ANN001
    m, run = _fit(tmp_path / "a", "auto")                          # not in the table: fp32
    assert m.seen == {torch.float32} and run.manifest["precision"]["used"] == "fp32"
    monkeypatch.setitem(precision.CPU_AUTO, ("toy", "probe"), Choice("bf16", "2.0x faster, loss within spread"))
    m, run = _fit(tmp_path / "b", "auto")
    assert m.seen == {torch.bfloat16}
    assert run.manifest["precision"] == {"used": "bf16", "why": "2.0x faster, loss within spread"}
    m, run = _fit(tmp_path / "c", "fp32")
    assert m.seen == {torch.float32} and run.manifest["precision"]["used"] == "fp32"


def test_doctor_says_which_precision_each_domain_trains_in_and_why(bf16_cpu, monkeypatch) -> None:  # noqa: ANN001
    from sslkit.doctor import precision_plan

    monkeypatch.setitem(precision.CPU_AUTO, ("tabular", "t-jepa"), Choice("bf16", "1.7x faster"))
    plan = {(p["domain"], p["method"]): p for p in precision_plan(CPU)}
    assert {d for d, _ in plan} == {"medical3d", "pathology", "audio", "graph", "lidar", "tabular"}
    assert plan[("tabular", "t-jepa")]["precision"] == "bf16" and plan[("tabular", "t-jepa")]["why"] == "1.7x faster"
    assert "t-jepa-small" in plan[("tabular", "t-jepa")]["recipes"]
    assert all(p["why"] for p in plan.values())
