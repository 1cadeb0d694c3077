"""fit(): exact resume, accumulation, NaN guard, signals, DDP equivalence."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from sslkit.core.errors import UserError
from sslkit.core.loop import fit, seed_everything
from sslkit.core.recipes import Recipe, TrainConfig
from sslkit.core.runs import Run


class Denoiser(nn.Module):
    """Per-sample mean loss with noise drawn in forward: exercises the per-step RNG."""

    def __init__(self, nan_at: int | None = None) -> None:
        super().__init__()
        self.encoder = nn.Linear(8, 4)
        self.head = nn.Linear(4, 8)
        self.nan_at, self.calls = nan_at, 0

    def forward(self, batch):  # noqa: ANN001, ANN201
        (x,) = batch
        self.calls += 1
        loss = ((self.head(self.encoder(x + 0.1 * torch.randn_like(x))) - x) ** 2).mean()
        if self.nan_at is not None and self.calls >= self.nan_at:
            loss = loss * float("nan")
        return loss, {"x_mean": x.mean()}


class DenoiseRecipe(Recipe):
    pass


DATA = TensorDataset(torch.randn(100, 8, generator=torch.Generator().manual_seed(0)))


def _train(out: Path, *, overwrite=True, resume=False, nan_at=None, **train_kw):  # noqa: ANN001, ANN202
    kw = dict(steps=30, batch_size=20, log_every=5, checkpoint_every=7, precision="fp32", lr=1e-2)
    t = TrainConfig(**{**kw, **train_kw.pop("train", {})})
    r = DenoiseRecipe(domain="toy", method="denoise", train=t)
    run = Run.open(out, domain="toy", recipe=r, overwrite=overwrite and not resume, resume=resume)
    seed_everything(0)
    m = Denoiser(nan_at)
    res = fit(m, DATA, t, run, resume=resume, **train_kw)
    return m, res, run


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_resume_gives_the_same_final_weights(tmp_path):
    full, _, run_full = _train(tmp_path / "full")
    _train(tmp_path / "split", until=13)
    ckpt = torch.load(tmp_path / "split" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 13
    resumed, res, run = _train(tmp_path / "split", resume=True)
    assert res.step == 30
    assert _same(full, resumed)
    # metrics after resume continue without duplicates and match the uninterrupted run
    steps = [r["step"] for r in run.metrics()]
    assert steps == sorted(set(steps))
    assert [r["loss"] for r in run.metrics()] == pytest.approx([r["loss"] for r in run_full.metrics()])
    assert (tmp_path / "split" / "plots" / "loss.png").stat().st_size > 1000


def test_weights_change_and_loss_falls(tmp_path):
    m, res, run = _train(tmp_path / "r", train={"steps": 60})
    losses = [r["loss"] for r in run.metrics()]
    assert losses[-1] < losses[0]
    assert res.step == 60


def test_accumulation_matches_one_big_batch(tmp_path):
    # noise drawn per micro-step differs, so compare without noise: a deterministic per-sample loss
    class Plain(Denoiser):
        def forward(self, batch):  # noqa: ANN001, ANN201
            (x,) = batch
            return ((self.head(self.encoder(x)) - x) ** 2).mean(), {}

    def train(**kw):  # noqa: ANN003, ANN202
        t = TrainConfig(steps=10, batch_size=20, precision="fp32", lr=1e-2, log_every=100, checkpoint_every=100, **kw)
        run = Run.open(tmp_path / str(kw), domain="toy", recipe=DenoiseRecipe(domain="toy", method="p", train=t))
        seed_everything(0)
        m = Plain()
        fit(m, DATA, t, run)
        return m

    a, b = train(), train(micro_batch_size=5)
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.allclose(x, y, atol=1e-5)


def test_nan_guard_stops_names_step_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(UserError) as err:
        _train(tmp_path / "r", nan_at=10)
    msg = str(err.value)
    assert "loss became nan at step 10" in msg and "last good checkpoint" in msg
    ckpt = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 7
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    events = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "non-finite"


def test_batch_larger_than_data_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="fewer than one global batch"):
        _train(tmp_path / "r", train={"batch_size": 200})
    assert not (tmp_path / "r").exists()


def test_sigterm_checkpoints_and_resume_finishes(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "sslkit", "toy", "pretrain", "--out", str(out),
           "--set", "train.steps=100000", "--set", "train.log_every=1", "--set", "train.checkpoint_every=100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "stopped by SIGTERM" in err and "--resume" in err
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert 0 < ckpt["step"] < 100000
    # and the resume finishes: the run ends at its final step, each step logged once, in order
    final = ckpt["step"] + 3
    res = subprocess.run([*cmd, "--resume", "--set", f"train.steps={final}"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == final
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, final + 1))
    assert (out / "encoder" / "encoder.safetensors").is_file()


def test_sigterm_to_the_process_group_with_data_workers_still_checkpoints(tmp_path):
    """`timeout` and Slurm signal the whole process group: the DataLoader workers get SIGTERM too (#24's benchmark lost
    a 9-minute run to 'DataLoader worker killed by signal' before the loop could checkpoint)."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "sslkit", "toy", "pretrain", "--out", str(out), "--set", "train.num_workers=1",
           "--set", "train.steps=100000", "--set", "train.log_every=1", "--set", "train.checkpoint_every=100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)     # the process and its worker, as `timeout` does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "stopped by SIGTERM" in err and "killed by signal" not in err
    assert 0 < torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] < 100000


def _toy(out: Path, extra: list[str], nproc: int = 1) -> subprocess.CompletedProcess:
    base = ["-m", "sslkit", "toy", "pretrain", "--out", str(out), "--set", "train.precision=fp32", "--set", "train.device=cpu",
            "--set", "train.steps=20", "--set", "train.log_every=1", "--set", "train.batch_size=128", *extra]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *base]
    else:
        cmd = [sys.executable, *base]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def test_two_process_gloo_run_matches_one_process(tmp_path):
    """Same global batch, VICReg gathered across ranks: same loss curve and final weights."""
    one = _toy(tmp_path / "one", [])
    assert one.returncode == 0, one.stderr
    two = _toy(tmp_path / "two", [], nproc=2)
    assert two.returncode == 0, two.stderr
    curve = lambda d: [json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert curve(tmp_path / "one") == pytest.approx(curve(tmp_path / "two"), rel=1e-4)
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "one" / "encoder" / "encoder.safetensors"))
    b = load_file(str(tmp_path / "two" / "encoder" / "encoder.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4), k
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["world_size"] == 2


def test_devices_flag_launches_torchrun(tmp_path):
    out = subprocess.run([sys.executable, "-m", "sslkit", "toy", "pretrain", "--devices", "2", "--out", str(tmp_path / "r"),
                          "--set", "train.steps=4", "--set", "train.device=cpu"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert "launching 2 processes" in out.stderr
    assert out.stdout.strip() == str(tmp_path / "r")          # gloo's "[Gloo] Rank 0 is connected" goes to stderr
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["world_size"] == 2
    # a bad input under --devices: still one line and exit code 2 (every rank refuses it; rank 0 says so)
    out = subprocess.run([sys.executable, "-m", "sslkit", "toy", "pretrain", "--devices", "2", "--out", str(tmp_path / "r"),
                          "--set", "train.steps=4"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert [line for line in out.stderr.splitlines() if line.startswith("error:")] == [
        f"error: run folder {tmp_path / 'r'} already exists — pass --overwrite to replace it, --resume to continue it, "
        "or choose another --out"]


def test_resume_refuses_other_data_and_warns_when_files_changed(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("1")
    t = TrainConfig(steps=4, batch_size=20, precision="fp32")
    r = DenoiseRecipe(domain="toy", method="denoise", train=t)
    run = Run.open(tmp_path / "run", domain="toy", recipe=r, data_paths=[data])
    fit(Denoiser(), DATA, t, run)
    longer = DenoiseRecipe(domain="toy", method="denoise", train=t.model_copy(update={"steps": 8}))
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(UserError, match="was trained on .*data, not .*other — resume with the same data"):
        Run.open(tmp_path / "run", domain="toy", recipe=longer, data_paths=[other], resume=True)
    (data / "b.txt").write_text("2")
    Run.open(tmp_path / "run", domain="toy", recipe=longer, data_paths=[data], resume=True)
    assert "changed since" in capsys.readouterr().err


def test_warmup_longer_than_the_run_is_warned(tmp_path, capsys):
    _train(tmp_path / "w", train={"steps": 4, "warmup_steps": 10})
    err = " ".join(capsys.readouterr().err.split())
    assert "train.warmup_steps=10 is not below train.steps=4: the learning rate never reaches train.lr" in err


def test_launcher_reports_a_failing_rank_and_stops_the_others(capfd):
    """Rank 1 refuses its input while rank 0 would wait a minute: rank 1's line is shown, rank 0 is stopped."""
    from sslkit.core.launch import launch_local

    script = ("import os, sys, time\n"
              "if os.environ['RANK'] == '1':\n    print('error: rank one refused — fix it'); sys.exit(2)\n"
              "time.sleep(120)\nprint('rank 0 finished')")
    code = launch_local(2, [], program=(sys.executable, "-c", script))
    captured = capfd.readouterr()
    assert code == 2
    assert captured.err.strip() == "error: rank one refused — fix it"
    assert "rank 0 finished" not in captured.out


def test_tensorboard_events_are_written_when_asked(tmp_path):
    pytest.importorskip("tensorboard")
    _train(tmp_path / "tb", train={"steps": 10, "tensorboard": True})
    events = list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 100
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    acc.Reload()
    logged = [(r["step"], r["loss"]) for r in Run(tmp_path / "tb").metrics()]
    read = [(e.step, e.value) for e in acc.Scalars("loss")]
    assert [s for s, _ in read] == [s for s, _ in logged] == [5, 10]
    assert [v for _, v in read] == pytest.approx([v for _, v in logged], rel=1e-6)
    assert {"lr", "grad_norm", "x_mean"} <= set(acc.Tags()["scalars"])


def test_lars_and_infinite_schedule_train(tmp_path):
    _, res, run = _train(tmp_path / "lars", train={"steps": 20, "optimizer": "lars", "schedule": "infinite",
                                                   "lr": 0.05, "warmup_steps": 2})
    lrs = [r["lr"] for r in run.metrics()]
    assert res.step == 20 and lrs[0] > lrs[-1] > 0


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    from sslkit.core import distributed

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match="64 processes on this node but 1 GPU"):
        distributed._gpu_for(0)


def test_failed_start_leaves_no_stub_run_folder(tmp_path):
    with pytest.raises(UserError):
        _train(tmp_path / "stub", train={"batch_size": 500})
    assert not (tmp_path / "stub").exists()


@pytest.mark.parametrize("name", ["adamw", "adam"])
def test_adam_uses_the_fused_kernel_with_the_same_updates(name):
    from sslkit.core.optim import build_optimizer

    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    b = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    b.load_state_dict(a.state_dict())
    cfg = TrainConfig(optimizer=name, weight_decay=0.05)
    fused = build_optimizer(a, cfg, 1e-2)
    assert fused.defaults["fused"] is True
    groups = [dict(g, params=[pb for pa, pb in zip(a.parameters(), b.parameters()) for p in g["params"] if p is pa])
              for g in fused.param_groups]
    plain = type(fused)([{k: v for k, v in g.items() if k in ("params", "weight_decay")} for g in groups],
                        lr=1e-2, fused=False, foreach=False)
    x = torch.randn(16, 6)
    start = a[0].weight.detach().clone()
    for _ in range(5):
        for model, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    assert (a[0].weight - start).abs().max() > 1e-3  # the steps moved the weights
