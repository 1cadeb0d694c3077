"""T-JEPA pretraining speed on UCI Adult with the default recipe: sslkit's fit() vs a bare PyTorch loop.

Prints rows/s, achieved GFLOP/s (FLOPs counted by torch's FlopCounterMode on the real
steps) against a dense matmul measured in the same run, fp32 and bf16 autocast.

    .venv/bin/python benchmarks/tabular_speed.py [--steps 12] [--threads N] [--recipe t-jepa] [--parts] [--matmuls]

`--parts` also times the three parts of a T-JEPA step on their own in fp32 (target encoder forward, context
encoder forward + backward, predictor forward + backward), each with its GFLOP/s: where the time goes.
`--matmuls` records every matrix product of one fp32 step (forward and backward) and replays each shape on its own:
the GFLOP/s the step would reach if norms, softmax, activations and copies took no time (an upper bound).

Numbers on a shared machine move with the load; every ratio is taken within one run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def matmul_gflops(dtype: torch.dtype, n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def adult_arrays(recipe):  # noqa: ANN001, ANN201
    from sslkit.domains.tabular.samples import read_adult
    from sslkit.domains.tabular.preprocess_fit import fit_preprocessor

    table = read_adult()
    pre = fit_preprocessor(table.to_batches(), skip={"id": "id", "income": "target"}, categorical=[], numeric=[],
                           scaling=recipe.data.scaling, max_categories=recipe.data.max_categories)
    num, miss, cat = pre.encode(table)
    return pre, {"num": torch.from_numpy(num), "miss": torch.from_numpy(miss), "cat": torch.from_numpy(cat)}


def make_method(recipe, pre):  # noqa: ANN001, ANN201
    from sslkit.domains.tabular.method import build_method

    torch.manual_seed(0)
    return build_method(recipe, len(pre.numeric), pre.cardinalities)


def flops_per_step(recipe, pre, data, draws: int = 8) -> float:  # noqa: ANN001
    """Mean FLOPs of one forward+backward at the recipe's batch (mask sizes vary per step)."""
    from torch.utils.flop_counter import FlopCounterMode

    method = make_method(recipe, pre)
    bs = recipe.train.batch_size
    total = 0
    for i in range(draws):
        batch = {k: v[i * bs:(i + 1) * bs] for k, v in data.items()}
        with FlopCounterMode(display=False) as counter:
            loss, _ = method(batch)
            loss.backward()
        total += counter.get_total_flops()
    return total / draws


def bare_loop(recipe, pre, data, steps: int, bf16: bool) -> float:  # noqa: ANN001
    """Median seconds per step of the same method with a hand-written loop (AdamW, clip, EMA)."""
    method = make_method(recipe, pre)
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=recipe.train.lr, weight_decay=0.0)
    bs, n = recipe.train.batch_size, len(data["num"])
    order = torch.randperm(n)
    times = []
    for step in range(steps):
        t0 = time.perf_counter()
        idx = order[(step * bs) % (n - bs):][:bs]
        batch = {k: v[idx] for k, v in data.items()}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = method(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in method.parameters() if p.grad is not None], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.after_step(step + 1, steps)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


def sslkit_fit(recipe, pre, data, steps: int, precision: str) -> float:  # noqa: ANN001
    """Median seconds per step inside core.loop.fit (from its own metrics: includes data loading)."""
    from sslkit.core.loop import fit
    from sslkit.core.runs import Run
    from sslkit.domains.tabular.cache import EncodedRows, write_cache

    recipe = recipe.model_copy(deep=True)
    recipe.train.steps, recipe.train.log_every, recipe.train.checkpoint_every = steps, 1, 10**9
    recipe.train.precision = precision
    with tempfile.TemporaryDirectory() as tmp:
        run = Run.open(Path(tmp) / "run", domain="tabular", recipe=recipe, command=["bench"])
        from sslkit.domains.tabular.samples import read_adult

        write_cache(read_adult().to_batches(), pre, run.path("cache"))
        rows = EncodedRows(run.path("cache"))
        fit(make_method(recipe, pre), rows, recipe.train, run, collate_fn=rows.collate)
        per_step = [recipe.train.batch_size / r["samples_per_s"] for r in run.metrics() if "samples_per_s" in r]
    return statistics.median(per_step[2:])


def step_parts(recipe, pre, data, reps: int = 12) -> list[list[str]]:  # noqa: ANN001
    """Median ms, GFLOP and GFLOP/s of each part of a T-JEPA step (fp32); the parts share one list of mask draws."""
    from torch.utils.flop_counter import FlopCounterMode

    from sslkit.domains.tabular.method import jepa_masks

    m = make_method(recipe, pre)
    bs = recipe.train.batch_size
    num, miss, cat = (data[k][:bs] for k in ("num", "miss", "cat"))
    masks = [jepa_masks(m.context_encoder.n_features, m.masks.context, m.masks.target, m.masks.n_targets)
             for _ in range(reps)]
    ctx_width = m.context_encoder.dim

    def target(i: int) -> None:
        with torch.no_grad():
            m.encoder.tokens(num, miss, cat)

    def context(i: int) -> None:
        m.context_encoder.tokens(num, miss, cat, keep=masks[i][0]).sum().backward()

    def predictor(i: int) -> None:
        ctx_idx, tgt_idx = masks[i]
        x = torch.randn(bs, m.context_encoder.n_reg + len(ctx_idx), ctx_width, requires_grad=True)
        m.predictor(x, ctx_idx, tgt_idx).sum().backward()

    def whole(i: int) -> None:
        m({"num": num, "miss": miss, "cat": cat})[0].backward()

    rows = []
    for name, fn in (("whole step (its own mask draws)", whole), ("target encoder, forward", target),
                     ("context encoder, fwd+bwd", context), ("predictor, fwd+bwd", predictor)):
        times = []
        for i in range(reps):
            t0 = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - t0)
        sec = statistics.median(times[2:])
        flops = 0
        for i in range(4):
            with FlopCounterMode(display=False) as counter:
                fn(i)
            flops += counter.get_total_flops() / 4
        rows.append([name, sec, flops])
    parts = sum(r[1] for r in rows[1:])
    return [[name, f"{sec * 1e3:.0f}", f"{100 * sec / parts:.0f}%" if i else "-", f"{flops / 1e9:.2f}",
             f"{flops / sec / 1e9:.1f}"] for i, (name, sec, flops) in enumerate(rows)]


def matmul_bound(recipe, pre, data, mm32: float, top: int = 8) -> tuple[list[list[str]], str]:  # noqa: ANN001
    """Every matrix product of one fp32 forward+backward step, each shape replayed on its own (same strides) and timed:
    the share of a 1024³ matmul that the step would reach if everything but its products took no time."""
    import collections

    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    products = {aten.mm.default: "mm", aten.addmm.default: "addmm", aten.bmm.default: "bmm",
                aten.baddbmm.default: "baddbmm"}

    class Record(TorchDispatchMode):
        calls: collections.Counter = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            if func in products:
                self.calls[(func, tuple((tuple(a.shape), a.stride()) for a in args if isinstance(a, torch.Tensor)))] += 1
            return func(*args, **(kwargs or {}))

    method = make_method(recipe, pre)
    batch = {k: v[:recipe.train.batch_size] for k, v in data.items()}
    with Record() as rec:
        method(batch)[0].backward()
    rows, total_flops, total_sec = [], 0.0, 0.0
    for (func, specs), n in rec.calls.items():
        args = [torch.empty_strided(shape, stride).normal_() for shape, stride in specs]
        a, b = args[-2], args[-1]
        flops = 2 * a.shape[-2] * a.shape[-1] * b.shape[-1] * (a.shape[0] if a.dim() == 3 else 1)
        for _ in range(3):
            func(*args)
        times = []
        for _ in range(15):
            t0 = time.perf_counter()
            func(*args)
            times.append(time.perf_counter() - t0)
        sec = statistics.median(times)
        total_flops, total_sec = total_flops + flops * n, total_sec + sec * n
        rows.append((sec * n, products[func], " @ ".join("×".join(map(str, a.shape)) for a in (a, b)), n, flops / sec / 1e9))
    rows.sort(reverse=True)
    table = [[name, shapes, str(n), f"{sec * 1e3:.1f}", f"{g:.1f}", f"{100 * g / mm32:.0f}%"]
             for sec, name, shapes, n, g in rows[:top]]
    summary = (f"all {len(rows)} product shapes of the step: {total_flops / 1e9:.2f} GFLOP in {total_sec * 1e3:.0f} ms = "
               f"{total_flops / total_sec / 1e9:.1f} GFLOP/s, {100 * total_flops / total_sec / 1e9 / mm32:.0f}% of the "
               "1024³ matmul: the most the step could reach if nothing else took time")
    return table, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--recipe", default="t-jepa")
    ap.add_argument("--skip-bf16", action="store_true")
    ap.add_argument("--parts", action="store_true", help="also time each part of a T-JEPA step (fp32)")
    ap.add_argument("--matmuls", action="store_true", help="also replay each matrix product of a step on its own (fp32)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from sslkit.core.console import print_table
    from sslkit.core.recipes import load_recipe
    from sslkit.domains.tabular.method import TabularRecipe

    recipe = load_recipe(TabularRecipe, "tabular", args.recipe)
    pre, data = adult_arrays(recipe)
    flops = flops_per_step(recipe, pre, data)
    bs = recipe.train.batch_size
    print(f"Adult: {len(data['num'])} rows, {len(pre.features)} features; recipe {args.recipe}: "
          f"{recipe.method}, batch {bs}, {flops / bs / 1e6:.1f} MFLOP per row (fwd+bwd); "
          f"torch threads {torch.get_num_threads()}", file=sys.stderr)
    mm32 = matmul_gflops(torch.float32)
    mm16 = matmul_gflops(torch.bfloat16)
    bf16_ok = torch.ops.mkldnn._is_mkldnn_bf16_supported() and not args.skip_bf16
    rows = [["matmul 1024³", "fp32", "-", f"{mm32:.1f}", "100%", "-"],
            ["matmul 1024³", "bf16", "-", f"{mm16:.1f}", f"{100 * mm16 / mm32:.0f}% of fp32", "-"]]
    results = {}
    for name, fn in (("bare loop", bare_loop), ("sslkit fit()", sslkit_fit)):
        for prec in (["fp32", "bf16"] if bf16_ok else ["fp32"]):
            sec = fn(recipe, pre, data, args.steps, prec == "bf16") if fn is bare_loop else fn(recipe, pre, data, args.steps, prec)
            results[(name, prec)] = sec
            ref = mm32 if prec == "fp32" else mm16
            ratio = results[("bare loop", prec)] / sec if name != "bare loop" else 1.0
            rows.append([name, prec, f"{bs / sec:,.0f}", f"{flops / sec / 1e9:.1f}", f"{100 * flops / sec / 1e9 / ref:.0f}%",
                         f"{ratio:.2f}×"])
            print(f"  {name} {prec}: {bs / sec:,.0f} rows/s", file=sys.stderr)
    print_table("T-JEPA pretraining speed on Adult (GFLOP/s vs the same-precision matmul; speed vs bare loop)",
                ["loop", "precision", "rows/s", "GFLOP/s", "of matmul", "vs bare"], rows)
    if bf16_ok:
        print(f"bf16 autocast speed-up in fit(): {results[('sslkit fit()', 'fp32')] / results[('sslkit fit()', 'bf16')]:.2f}×",
              file=sys.stderr)
    if args.parts and recipe.method == "t-jepa":
        print_table(f"Where a T-JEPA step's time goes (fp32, batch {bs}; matmul 1024³: {mm32:.1f} GFLOP/s)",
                    ["part", "ms", "of the parts", "GFLOP", "GFLOP/s"], step_parts(recipe, pre, data))
    if args.matmuls:
        table, summary = matmul_bound(recipe, pre, data, mm32)
        print_table(f"The step's slowest matrix products, each replayed alone (fp32, batch {bs})",
                    ["op", "shapes", "calls", "ms (all calls)", "GFLOP/s", "of matmul"], table)
        print(summary)


if __name__ == "__main__":
    main()
