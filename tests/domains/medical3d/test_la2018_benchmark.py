"""The LA2018 benchmark script's bookkeeping, without training: which pretraining run continues which (the trend's
chain), that a rerun reuses or resumes instead of retraining, and the table / trend picture from arm records."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "benchmarks"
sys.path.insert(0, str(BENCH))
la2018 = pytest.importorskip("medical3d_la2018")
table_mod = pytest.importorskip("medical3d_la2018_table")


def test_chain_continues_the_next_shorter_count_and_keeps_the_main_run_fresh() -> None:
    assert la2018.chain(300, [0, 300, 1000, 3000, 3000]) == {300: None, 1000: 300, 3000: 1000}
    assert la2018.chain(10000, [0, 1000, 3000, 10000]) == {1000: None, 3000: 1000, 10000: None}
    assert la2018.chain(20, [0, 10, 20, 40]) == {10: None, 20: None, 40: 20}


def _bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, calls: list[list[str]], stop_at: int | None = None,
           arms: str = "scratch,alice"):
    """A Bench on a 3-volume datalist whose `sslkit` only records its arguments and writes what a run leaves."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "datalist.json").write_text(json.dumps({"training": [{"image": f"i{k}"} for k in range(3)], "test": []}))

    def fake(args: list, log: Path) -> float:
        args = [str(x) for x in args]
        calls.append(args)
        run = Path(args[args.index("--out") + 1])
        steps = int(next(x for x in args if x.startswith("train.steps=")).split("=")[1])
        if stop_at is not None and steps >= stop_at:
            (run / "checkpoints").mkdir(parents=True, exist_ok=True)     # interrupted: a checkpoint, no record
            (run / "checkpoints" / "last.pt").write_text(f"part of {steps}")
            raise SystemExit("interrupted")
        (run / "encoder").mkdir(parents=True, exist_ok=True)
        (run / "checkpoints").mkdir(exist_ok=True)
        (run / "checkpoints" / "last.pt").write_text(str(steps))
        (run / "manifest.json").write_text(json.dumps({"medical3d": {"volumes": 3}}))
        return 1.0

    monkeypatch.setattr(la2018, "sslkit", fake)
    a = argparse.Namespace(scale="cpu", data=data, out=tmp_path / "out", device="auto", roi=None, pre_steps=None,
                           ft_steps=None, passes=None, trend=None, alice_steps=None, spacing=None, set=[], ft_set=[],
                           max_minutes=None, arms=arms)
    return la2018.Bench(a)


def test_trend_pretraining_chains_and_reruns_reuse_or_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    bench = _bench(tmp_path, monkeypatch, calls, stop_at=3000)
    with pytest.raises(SystemExit):
        bench.alice_run(3000)           # 300 (fresh) -> 1000 (copy of 300) -> 3000 (copy of 1000), stopped
    assert [(c[c.index("--out") + 1].rsplit("/", 1)[1], "--resume" in c) for c in calls] == [
        ("pretrain-alice", False), ("pretrain-alice-1000", True), ("pretrain-alice-3000", True)]
    runs = bench.runs
    assert json.loads((runs / "pretrain-alice-3000" / "continued-from.json").read_text()) == \
        {"run": "pretrain-alice-1000", "steps": 1000}
    assert json.loads((bench.out / "pretrain-alice-1000.json").read_text())["continued_from"] == \
        {"run": "pretrain-alice", "steps": 300}

    calls.clear()
    bench = _bench(tmp_path, monkeypatch, calls)
    assert bench.alice_run(3000) == runs / "pretrain-alice-3000"
    assert len(calls) == 1 and "--resume" in calls[0]          # 300 and 1000 reused; 3000 resumed, not re-copied
    assert (runs / "pretrain-alice-3000" / "checkpoints" / "last.pt").read_text() == "3000"
    calls.clear()
    bench.alice_run(3000)
    bench.alice_run(1000)
    assert calls == []                  # finished runs with the same settings are not run again


def test_the_scales_trend_comes_with_the_alice_arms_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _bench(tmp_path, monkeypatch, [], arms="scratch,alice").s["trend"] == (0, 300, 1000, 3000)
    assert _bench(tmp_path, monkeypatch, [], arms="full").s["trend"] == ()      # the upper bound alone: no trend


def _arm(arm: str, init: str, seed: int, pre_steps: int, dice: list[float], labelled: int = 8) -> dict:
    per = {f"v{k}": d for k, d in enumerate(dice)}
    return {"arm": arm, "settings": {"init": init, "labelled": labelled, "seed": seed, "unlabelled": False,
                                     "pretrained": f"/x/runs/pretrain-alice{'' if pre_steps == 300 else f'-{pre_steps}'}",
                                     "pretrain_steps": pre_steps, "sets": ["finetune.steps=200"], "spacing": 1.25},
            "wall_s": 200.0, "data_wait": 0.01, "mean": {"dice": sum(dice) / len(dice), "hd95": 10.0},
            "per_volume": {"dice": per}}


def test_table_has_the_trend_with_paired_differences_chain_wall_and_a_picture(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    arms = [_arm("scratch-L8-s0", "scratch", 0, 300, [70, 80, 90]),
            _arm("scratch-L8-s1", "scratch", 1, 300, [60, 70, 80]),
            _arm("alice-L8-s0", "alice", 0, 300, [71, 79, 91]),
            _arm("alice-p3000-L8-s0", "alice", 0, 3000, [75, 85, 95]),
            _arm("alice-p3000-L8-s1", "alice", 1, 3000, [65, 75, 85])]
    for r in arms:
        (out / f"{r['arm']}.json").write_text(json.dumps(r))
    pre = {"pretrain-alice": (300, None), "pretrain-alice-1000": (1000, "pretrain-alice"),
           "pretrain-alice-3000": (3000, "pretrain-alice-1000")}
    for name, (steps, src) in pre.items():
        (out / f"{name}.json").write_text(json.dumps({"recipe": "la2018", "steps": steps, "volumes": 80, "wall_s": 60.0,
                                                      "data_wait": 0.01, "continued_from": src and {"run": src}}))
    text = table_mod.table(out, tmp_path)
    assert "| 3000 | 85.0 | +5.0 ± 0.0 | 3 of 3 | 10.00 | 3.0 | 3.3 |" in text    # chain wall: 3 runs of 1 min
    assert "| 0 | 80.0 | — | — |" in text and "| 300 | 80.3 | +0.3" in text
    assert "| 8 | alice-p3000 | 3000 | 2 | 80.0 ± 7.1 |" in text       # two seeds: mean ± std
    assert "| 8 | alice-p3000 | s0 +5.0 ± 0.0 (3/3), s1 +5.0 ± 0.0 (3/3) | +5.0 |" in text    # per seed vs scratch
    png = out / "trend.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "summary.json").read_text())["trend"][-1]["arm"] == "alice-p3000-L8-s0"
