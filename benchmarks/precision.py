"""bf16 autocast vs fp32 on this CPU for every domain's CPU recipe: training-step samples/s and the loss after N steps.

For each arm the domain's own `pretrain` command runs in-process on a small real data set (../shared/data where it
exists, the domain's generated data otherwise) up to the point where it calls `fit()`; there the method, data set and
settings it built are taken, and the real `fit()` trains copies of that method for N steps: fp32 with seeds 0 and 1
(the seed-to-seed spread: another initialisation, other masks and data order) and bf16 with seed 0, same batches as
fp32 seed 0. For the arms whose attention goes through `sslkit.core.precision.attention` (ssast, tera) also bf16 with
PyTorch's fused kernel forced (`bf16-fused`: what the materialised bf16 path is worth) and with the third session's
materialised formula (`bf16-previous`: what the additive mask and the scale on q are worth), same run. One table, one
run, the fp32 baseline measured beside each bf16 figure.

    .venv/bin/python benchmarks/precision.py [--arms tjepa-small,tera,...] [--steps 24] [--profile]
    # as recorded in docs/performance.md (611 s with --profile on 2 cores; ssast and tera since the fifth session:
    # --arms ssast,tera --steps 32 --profile, 72 s):
    .venv/bin/python benchmarks/precision.py --profile --steps 16 --steps-for dino=10 --steps-for tjepa=10 --steps-for alice=12

samples/s is the median over the steps after the first 3 of batch / (step time - data wait) (the compute step
that precision changes; data loading is the same in both); `wall` keeps the data wait in. loss@N is the mean
loss of the last 4 logged steps. `--profile` adds, per arm, the operator table of 5 bf16 and 5 fp32 steps
(torch.profiler self CPU time by operator class). Results are written per arm to WORK/<arm>.json as soon as the arm
finishes and reused on a rerun (delete the file to measure again); the table is printed from them.
Held-out data stays out: audio uses no recording of george or theo, pathology no image of GlaS fold 3.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

# arm -> (domain, recipe, extra --set)
ARMS: dict[str, tuple[str, str, list[str]]] = {
    "tjepa-small": ("tabular", "t-jepa-small", []),
    "tjepa": ("tabular", "t-jepa", []),
    "ssast": ("audio", "ssast-fsdd", []),
    "ssamba": ("audio", "ssamba-fsdd", []),
    "tera": ("audio", "tera-fsdd", []),
    "dino": ("pathology", "dino-tiny", ["train.num_workers=0"]),
    "alice": ("medical3d", "la2018", []),
    "scgc-star": ("graph", "scgc-star", []),
    "lidar": ("lidar", "pointpillars-tiny", []),
}
FUSED_ARMS = {"ssast", "tera"}     # attention through core.precision.attention: also measured with the fused kernel
DEFAULT_ARMS = "tjepa-small,tjepa,ssast,ssamba,tera,dino,alice,scgc-star,lidar"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- data: small, real where it exists, no held-out part
def _links(files: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        link = folder / f.name
        if not link.exists():
            link.symlink_to(f)
    return folder


def _sslkit(*args: str) -> None:
    import subprocess

    subprocess.run([sys.executable, "-m", "sslkit", *args], check=True, capture_output=True)


def data_for(domain: str, work: Path) -> list[str]:
    """Command-line data arguments for `sslkit <domain> pretrain`, prepared once under WORK/runs/data (git-ignored)."""
    d = work / "runs" / "data" / domain
    if domain == "tabular":
        if not (d / "adult.csv").is_file():
            _sslkit("tabular", "sample-data", str(d))
        return [str(d / "adult.csv"), "--target", "income", "--id", "id"]
    if domain == "audio":
        fsdd = SHARED / "audio" / "fsdd" / "recordings"
        if fsdd.is_dir():   # 400 clips of the 4 selection speakers (george and theo are held out elsewhere)
            clips = sorted(p for p in fsdd.glob("*.wav") if p.stem.split("_")[1] not in ("george", "theo"))
            return [str(_links(clips[::max(1, len(clips) // 400)][:400], d))]
        if not d.is_dir():
            _sslkit("audio", "sample-data", str(d))
        return [str(d)]
    if domain == "pathology":
        glas = SHARED / "pathology" / "glas"
        manifest = d / "tiles" / "manifest.parquet"
        if not manifest.is_file():
            if (glas / "labels.csv").is_file():
                import csv

                rows = [r for r in csv.DictReader((glas / "labels.csv").open()) if r["fold"] != "3"][:24]
                images = [str(glas / r["image"]) for r in rows]
                _sslkit("pathology", "tile", *images, "--out", str(d / "tiles"), "--native", "--tile-px", "224",
                        "--slide-mpp", "0.62", "--min-tissue", "0.1", "--overwrite")
            else:
                _sslkit("pathology", "sample-data", str(d / "slide"))
                _sslkit("pathology", "tile", str(d / "slide"), "--out", str(d / "tiles"), "--overwrite")
        return [str(manifest)]
    if domain == "medical3d":
        la = SHARED / "medical3d" / "la2018"
        if (la / "datalist.json").is_file():   # 12 training volumes (pretraining never reads the test list)
            dl = json.loads((la / "datalist.json").read_text())
            small = {"training": [{"image": str(la / e["image"])} for e in dl["training"][:12]]}
            d.mkdir(parents=True, exist_ok=True)
            (d / "datalist.json").write_text(json.dumps(small))
            return [str(d / "datalist.json")]
        if not d.is_dir():
            _sslkit("medical3d", "sample-data", str(d))
        return [str(d)]
    if domain == "graph":
        cora = SHARED / "graph" / "cora"
        if (cora / "edges.csv").is_file():
            return [str(cora), "--clusters", "7"]
        if not d.is_dir():
            _sslkit("graph", "sample-data", str(d))
        return [str(d), "--clusters", "2"]
    if domain == "lidar":
        if not (d / "velodyne").is_dir():
            _sslkit("lidar", "simulate", str(d), "--frames", "24", "--seed", "3", "--overwrite")
        return [str(d), "--labels", str(d / "label_2")]
    raise ValueError(domain)


# ---------------------------------------------------------------- capture what `pretrain` hands to fit()
def _captured_type() -> type:
    from sslkit.core.errors import Interrupted

    class Captured(Interrupted):
        """Raised by the stand-in fit(): the domain's pretrain stops where training would start (as an interruption,
        so the command keeps its run folder and the data cache in it)."""
    return Captured


def capture(domain: str, recipe: str, sets: list[str], data: list[str], out: Path, seed: int) -> dict[str, Any]:
    """Run `sslkit <domain> pretrain` in-process until fit(); returns its arguments (method, dataset, train, run, kw)."""
    import sslkit.core.loop as loop
    from sslkit.cli import app

    got: dict[str, Any] = {}
    captured = _captured_type()

    def stand_in(method: Any, dataset: Any, train: Any, run: Any, **kw: Any) -> Any:
        got.update(method=method, dataset=dataset, train=train, run=run, kw=kw, recipe=run.recipe_dict)
        raise captured("captured")

    real, loop.fit = loop.fit, stand_in
    args = [domain, "pretrain", *data, "--recipe", recipe, "--out", str(out), "--overwrite",
            "--set", f"train.seed={seed}", "--set", "train.device=cpu", *[x for s in sets for x in ("--set", s)]]
    try:
        app(args, standalone_mode=False)
    except BaseException:   # noqa: BLE001 - the command ends in an Exit after the capture; `got` says whether it got there
        pass
    finally:
        loop.fit = real
    if not got:
        raise RuntimeError(f"sslkit {' '.join(args)} ended before fit()")
    return got


# ---------------------------------------------------------------- one fit() per (precision, seed)
def materialise(method: Any) -> int:
    """Switch the method's attention modules to materialised softmax(QKᵀ)V (audio's `materialised`, timm's
    `fused_attn`): what `sslkit.core.precision.attention` does under bf16 on a CPU. Returns how many were switched."""
    n = 0
    for m in method.modules():
        if isinstance(getattr(m, "materialised", None), bool):
            m.materialised, n = True, n + 1
        elif isinstance(getattr(m, "fused_attn", None), bool):
            m.fused_attn, n = False, n + 1
    return n


def previous_attention(q: Any, k: Any, v: Any, mask: Any = None, dropout: float = 0.0) -> Any:
    """`core.precision.attention` as the third session left it: scaled scores, key mask by masked_fill (one more
    pass over the scores forward and one backward than the additive bias now used)."""
    import torch
    import torch.nn.functional as F
    from sslkit.core import precision

    bf16 = q.dtype == torch.bfloat16 or (torch.is_autocast_enabled("cpu") and
                                         torch.get_autocast_dtype("cpu") == torch.bfloat16)
    if q.device.type != "cpu" or not bf16 or q.shape[-2] * k.shape[-2] > precision.MATERIALISE_MAX:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(-1)
    return (F.dropout(weights, dropout) if dropout else weights) @ v


class attention_mode:  # noqa: N801 - a context manager used like a function
    """"fused": `core.precision.attention` calls PyTorch's fused kernel for every shape (as before #28's CPU path);
    "previous": its materialised path as the third session left it (`previous_attention`); else as built."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __enter__(self) -> None:
        import sslkit.domains.audio.model as audio
        from sslkit.core import precision

        self.saved = precision.MATERIALISE_MAX, precision.attention, audio.attention
        if self.mode == "fused":
            precision.MATERIALISE_MAX = 0
        elif self.mode == "previous":
            precision.attention = audio.attention = previous_attention

    def __exit__(self, *exc: Any) -> None:
        import sslkit.domains.audio.model as audio
        from sslkit.core import precision

        precision.MATERIALISE_MAX, precision.attention, audio.attention = self.saved


def train_arm(got: dict[str, Any], precision: str, steps: int, out: Path, profile: bool = False,
              attention: str = "as-built") -> dict[str, Any]:
    """A copy of the captured method trained `steps` steps by the real fit(); per-step loss and compute samples/s.
    `attention`: "materialised" switches the copy's attention modules first (see `materialise`); "fused" and
    "previous" change what `core.precision.attention` does during the arm (see `attention_mode`)."""
    from sslkit.core.loop import fit
    from sslkit.core.runs import Run

    domain = got["recipe"]["domain"]
    schema = importlib.import_module(f"sslkit.domains.{domain}.method").RECIPE_SCHEMA
    train = got["train"].model_copy(update={
        "precision": precision, "steps": steps, "log_every": 1, "checkpoint_every": 10**9, "device": "cpu",
        "warmup_steps": min(got["train"].warmup_steps, steps // 4)})
    recipe = schema.model_validate(got["recipe"]).model_copy(update={"train": train})
    run = Run.open(out, domain=domain, recipe=recipe, command=["benchmarks/precision.py"], data_paths=[], overwrite=True)
    method = copy.deepcopy(got["method"])
    switched = materialise(method) if attention == "materialised" else 0
    prof = None
    t0 = time.perf_counter()
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        prof = torch_profile(activities=[ProfilerActivity.CPU])
        prof.__enter__()
    try:
        with attention_mode(attention):
            result = fit(method, got["dataset"], train, run, **got["kw"])
    finally:
        if prof is not None:
            prof.__exit__(None, None, None)
    seconds = time.perf_counter() - t0
    recs = [r for r in run.metrics() if "loss" in r]
    steady = recs[3:] or recs
    compute = [r["samples_per_s"] / max(1e-9, 1 - r["data_wait"]) for r in steady]
    out_rec = {"precision": precision, "seed": train.seed, "steps": result.step, "seconds": seconds,
               "samples_per_s": statistics.median(compute), "wall_samples_per_s": statistics.median(
                   r["samples_per_s"] for r in steady), "data_wait": statistics.median(r["data_wait"] for r in steady),
               "loss": [r["loss"] for r in recs], "loss_at_n": statistics.fmean(r["loss"] for r in recs[-4:]),
               "attention_modules_switched": switched}
    if prof is not None:
        out_rec["ops"] = op_classes(prof)
    return out_rec


OP_CLASSES: list[tuple[str, tuple[str, ...]]] = [
    ("attention", ("scaled_dot_product", "_flash_attention", "_efficient_attention", "softmax")),
    ("matmul/conv", ("addmm", "aten::mm", "bmm", "matmul", "linear", "mkldnn", "conv", "baddbmm", "_slow_conv")),
    ("norm", ("layer_norm", "group_norm", "batch_norm", "native_layer_norm", "rsqrt", "var")),
    ("dtype conversion", ("aten::to", "_to_copy", "copy_", "clone", "contiguous")),
    ("optimizer", ("_fused_adam", "_foreach", "adam", "sgd", "clip_grad", "norm")),
    ("activation", ("gelu", "silu", "relu", "sigmoid", "tanh", "exp", "log_softmax", "softplus")),
    ("elementwise", ("add", "mul", "sub", "div", "pow", "where", "neg", "sqrt", "abs", "clamp", "fill", "zero",
                     "masked", "lerp")),
    ("reduction", ("sum", "mean", "max", "min", "cumsum", "logsumexp")),
    ("index/gather", ("index", "gather", "scatter", "embedding", "select", "slice", "cat", "stack", "sort", "topk")),
]


def op_class(name: str) -> str:
    low = name.lower()
    for cls, keys in OP_CLASSES:
        if any(k in low for k in keys):
            return cls
    return "other"


def op_classes(prof: Any) -> dict[str, Any]:
    """Self CPU time per operator class and the 20 costliest operators (ms, over the profiled steps)."""
    events = [e for e in prof.key_averages() if not e.key.startswith(("ProfilerStep", "Optimizer.", "autograd::"))]
    by_class: dict[str, float] = {}
    for e in events:
        by_class[op_class(e.key)] = by_class.get(op_class(e.key), 0.0) + e.self_cpu_time_total / 1000
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:20]
    return {"classes_ms": dict(sorted(by_class.items(), key=lambda kv: -kv[1])),
            "top_ms": [[e.key, round(e.self_cpu_time_total / 1000, 1), e.count] for e in top]}


# ---------------------------------------------------------------- the table
def verdict(r: dict[str, Any]) -> tuple[float, float, float, str]:
    f0, f1, b0 = r["fp32"], r["fp32-seed1"], r["bf16"]
    speed = b0["samples_per_s"] / f0["samples_per_s"]
    spread = abs(f1["loss_at_n"] - f0["loss_at_n"])
    dev = abs(b0["loss_at_n"] - f0["loss_at_n"])
    same = dev <= max(spread, 1e-3 * abs(f0["loss_at_n"]))
    pick = "bf16" if speed >= 1.05 and same else "fp32"
    return speed, spread, dev, pick


def _other(r: dict[str, Any], f0: dict[str, Any]) -> str:
    """bf16 speed with another attention path: fused kernel forced (`bf16-fused`), the third session's materialised
    formula (`bf16-previous`), or materialised (`bf16-mat`, the third session's records)."""
    parts = [f"{label} {r[key]['samples_per_s'] / f0['samples_per_s']:.2f}x, loss {r[key]['loss_at_n']:.4f}"
             for key, label in (("bf16-fused", "fused"), ("bf16-previous", "previous"), ("bf16-mat", "materialised"))
             if key in r]
    return "; ".join(parts) or "-"


def table(results: dict[str, dict[str, Any]]) -> None:
    from sslkit.core.console import print_table

    rows = []
    for arm, r in results.items():
        if not all(k in r for k in ("fp32", "fp32-seed1", "bf16")):
            continue
        speed, spread, dev, pick = verdict(r)
        f0, f1, b0 = r["fp32"], r["fp32-seed1"], r["bf16"]
        rows.append([arm, r["recipe"], f"{f0['samples_per_s']:.1f}", f"{b0['samples_per_s']:.1f}", f"{speed:.2f}x",
                     f"{f0['loss_at_n']:.4f}", f"{f1['loss_at_n']:.4f}", f"{b0['loss_at_n']:.4f}",
                     f"{dev:.4f} / {spread:.4f}", pick,
                     _other(r, f0),
                     f"{f0['seconds'] + f1['seconds'] + b0['seconds']:.0f}"])
    print_table(f"bf16 autocast vs fp32 training step on this CPU ({os.cpu_count()} cores), samples/s of the step and "
                "loss after N steps", ["arm", "recipe", "fp32 /s", "bf16 /s", "bf16 speed", "loss fp32 s0",
                                       "fp32 s1", "bf16 s0", "|bf16-fp32| / seed spread", "auto",
                                       "bf16 other attention", "wall s"], rows)
    for arm, r in results.items():
        for key in ("bf16", "fp32"):
            ops = r.get(key, {}).get("ops")
            if ops:
                total = sum(ops["classes_ms"].values())
                parts = ", ".join(f"{c} {100 * v / total:.0f}%" for c, v in ops["classes_ms"].items() if v / total >= 0.02)
                print(f"{arm} {key} profile ({total:.0f} ms self CPU): {parts}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", default=DEFAULT_ARMS)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--steps-for", action="append", default=[], help="ARM=N: another step count for one arm")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--profile", action="store_true", help="also profile 3 steps in each precision")
    ap.add_argument("--work", type=Path, default=REPO / "benchmarks" / "results" / "precision")
    ap.add_argument("--table-only", action="store_true")
    a = ap.parse_args()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    a.work.mkdir(parents=True, exist_ok=True)
    steps_for = {k: int(v) for k, v in (s.split("=") for s in a.steps_for)}
    results: dict[str, dict[str, Any]] = {}
    for arm in a.arms.split(","):
        domain, recipe, sets = ARMS[arm]
        path = a.work / f"{arm}.json"
        r = json.loads(path.read_text()) if path.is_file() else {"arm": arm, "domain": domain, "recipe": recipe}
        results[arm] = r
        if a.table_only:
            continue
        steps = steps_for.get(arm, a.steps)
        plan: list[tuple[str, str, int, bool, str]] = [
            ("fp32", "fp32", 0, False, "as-built"), ("bf16", "bf16", 0, False, "as-built"),
            ("fp32-seed1", "fp32", 1, False, "as-built")]
        if arm in FUSED_ARMS:   # bf16 with PyTorch's fused attention kernel (what the materialised CPU path replaced)
            plan += [("bf16-fused", "bf16", 0, False, "fused"), ("bf16-previous", "bf16", 0, False, "previous")]
        if a.profile:
            plan += [("bf16-profile", "bf16", 0, True, "as-built"), ("fp32-profile", "fp32", 0, True, "as-built")]
        todo = [p for p in plan if p[0] not in r]
        if not todo:
            continue
        try:
            run_arm(arm, r, todo, steps, a.work, path)
        except Exception as exc:  # one broken arm must not cost the others their (locked, timed) turn
            log(f"{arm} failed: {type(exc).__name__}: {exc}")
    table(results)


def run_arm(arm: str, r: dict[str, Any], todo: list, steps: int, work: Path, path: Path) -> None:
    """Set the arm's pretrain up (per seed) and train each planned (precision, seed); saves after each."""
    import torch

    domain, recipe, sets = ARMS[arm]
    data = data_for(domain, work)
    captured: dict[int, dict[str, Any]] = {}
    for key, precision, seed, prof, attention in todo:
        if seed not in captured:
            t0 = time.perf_counter()
            captured[seed] = capture(domain, recipe, sets, data, work / "runs" / f"{arm}-capture-{seed}", seed)
            log(f"{arm}: pretrain set up (seed {seed}) in {time.perf_counter() - t0:.0f}s")
        res = train_arm(captured[seed], precision, 3 + 2 if prof else steps, work / "runs" / f"{arm}-{key}", prof,
                        attention)
        if prof:
            r.setdefault(precision, {})["ops"] = res["ops"]
            r[key] = {"seconds": res["seconds"]}
        else:
            r[key] = {**r.get(key, {}), **res}
        r["threads"] = torch.get_num_threads()
        path.write_text(json.dumps(r, indent=1))
        log(f"{arm} {key}: {res.get('samples_per_s', 0):.1f} samples/s, loss@N {res.get('loss_at_n', 0):.4f}, "
            f"{res['seconds']:.0f}s")


if __name__ == "__main__":
    main()
