"""sslkit's T-JEPA step vs the authors' reference code (jose-melo/t-jepa) on the same configuration.

Both run the card's Jannis config (d=64, 16 encoder layers, 16 predictor layers of d=16,
batch 512, 4 target sets) on UCI Adult, in one process, steps interleaved so both see the
same machine load. The reference step is its own code path: its MaskCollator (per-row masks
drawn in Python), Encoder (one-hot via scikit-learn inside forward, gradient-clamp hooks),
Predictors, MSE, AdamW and its EMA loop. The reference trains in fp32 only; sslkit runs twice per
step, in fp32 and as the recipe's `train.precision` resolves on this machine (`auto`: bf16 autocast
where the CPU has AVX512-BF16/AMX, else fp32 — then only the fp32 arm runs). Each sslkit arm has
its own model and optimiser, fed the same rows. Needs a checkout of the reference repository:

    git clone https://github.com/jose-melo/t-jepa /tmp/tjepa_ref
    .venv/bin/python benchmarks/tabular_reference.py --ref /tmp/tjepa_ref [--steps 6]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import types
from argparse import Namespace
from pathlib import Path

import torch


def _reference_modules(ref: Path):  # noqa: ANN202
    sys.path.insert(0, str(ref))
    if "tabulate" not in sys.modules:
        try:
            import tabulate  # noqa: F401
        except ImportError:  # only used for printing parameter tables
            import importlib.machinery

            stub = types.ModuleType("tabulate")
            stub.__spec__ = importlib.machinery.ModuleSpec("tabulate", None)
            stub.tabulate = lambda *a, **k: ""  # type: ignore[attr-defined]
            sys.modules["tabulate"] = stub
    from src.encoder import Encoder
    from src.mask import MaskCollator
    from src.predictors import Predictors
    from src.utils.train_utils import apply_masks_from_idx

    return Encoder, MaskCollator, Predictors, apply_masks_from_idx


def reference_step_factory(ref: Path, n_num: int, cards: list[int], recipe):  # noqa: ANN001, ANN202
    import contextlib
    import io

    Encoder, MaskCollator, Predictors, apply_masks = _reference_modules(ref)
    m, d = recipe.model, n_num + len(cards)
    cardinalities = [(n_num + j, c) for j, c in enumerate(cards)]
    args = Namespace(n_cls_tokens=m.n_reg, model_act_func="relu")
    with contextlib.redirect_stdout(io.StringIO()):
        torch.manual_seed(0)
        ctx = Encoder(idx_num_features=list(range(n_num)), cardinalities=cardinalities, hidden_dim=m.dim,
                      num_layers=m.depth, num_heads=m.heads, p_dropout=0.0, layer_norm_eps=1e-5, gradient_clipping=1.0,
                      feature_type_embedding=True, feature_index_embedding=False, dim_feedforward=m.ffn,
                      device=torch.device("cpu"), args=args)
        tgt = copy.deepcopy(ctx)
        for p in tgt.parameters():
            p.requires_grad = False
        pred = Predictors(pred_type="transformer", hidden_dim=m.dim, pred_embed_dim=m.pred_dim, num_features=d,
                          num_layers=m.pred_depth, num_heads=m.pred_heads, p_dropout=0.0, layer_norm_eps=1e-5,
                          activation="relu", device=torch.device("cpu"), cardinalities=cardinalities,
                          pred_dim_feedforward=m.ffn)
        collate = MaskCollator(allow_overlap=False, min_context_share=recipe.masks.context[0],
                               max_context_share=recipe.masks.context[1], min_target_share=recipe.masks.target[0],
                               max_target_share=recipe.masks.target[1], num_preds=recipe.masks.n_targets, num_encs=1,
                               num_features=d, cardinalities=cardinalities)
    params = list(ctx.parameters()) + list(pred.parameters())
    opt = torch.optim.AdamW(params, lr=recipe.train.lr, weight_decay=0.0)
    loss_fn = torch.nn.MSELoss()

    def step(x: torch.Tensor, momentum: float) -> None:
        batch, masks_enc, masks_pred = collate([(row,) for row in x])
        with torch.no_grad():
            h = apply_masks(tgt(batch), masks_pred)
        z = pred(ctx(batch, masks_enc), masks_enc, masks_pred)
        loss = loss_fn(z, h)
        loss.backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            for q, k in zip(ctx.parameters(), tgt.parameters()):
                k.data.mul_(momentum).add_((1.0 - momentum) * q.detach().data)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ref", type=Path, required=True, help="checkout of github.com/jose-melo/t-jepa")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tabular_speed import adult_arrays, make_method

    from sslkit.core.console import print_table
    from sslkit.core.loop import use_bf16
    from sslkit.core.optim import build_optimizer
    from sslkit.core.recipes import load_recipe
    from sslkit.domains.tabular.method import TabularRecipe

    recipe = load_recipe(TabularRecipe, "tabular", "t-jepa")
    pre, data = adult_arrays(recipe)
    ref_step = reference_step_factory(args.ref, len(pre.numeric), pre.cardinalities, recipe)

    arms = {"sslkit T-JEPA, fp32": False}
    if use_bf16(recipe.train.precision, torch.device("cpu")):
        arms[f"sslkit T-JEPA, bf16 autocast (train.precision={recipe.train.precision})"] = True
    models = {}
    for name in arms:
        ours = make_method(recipe, pre)
        models[name] = (ours, build_optimizer(ours, recipe.train, recipe.train.lr))  # as fit() builds it
    bs, n = recipe.train.batch_size, len(data["num"])
    x_ref = torch.cat([data["num"], data["cat"].float()], dim=1)   # the reference takes one float matrix
    reference = "reference (jose-melo/t-jepa), fp32"
    times: dict[str, list[float]] = {reference: [], **{name: [] for name in arms}}
    for step in range(args.steps + 2):
        sl = slice((step * bs) % (n - bs), (step * bs) % (n - bs) + bs)
        t0 = time.perf_counter()
        ref_step(x_ref[sl], 0.996)
        times[reference].append(time.perf_counter() - t0)
        for name, (ours, opt) in models.items():
            torch.manual_seed(step)                     # the same masks for both sslkit arms
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=arms[name]):
                loss, _ = ours({k: v[sl] for k, v in data.items()})
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in ours.parameters() if p.grad is not None], 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            ours.after_step(step + 1, 1000)
            times[name].append(time.perf_counter() - t0)
        print(f"step {step}: " + ", ".join(f"{k.split(',')[0]} {v[-1]:.2f}s" for k, v in times.items()), file=sys.stderr)
    med = {k: statistics.median(v[2:]) for k, v in times.items()}
    ref = med[reference]
    rows = [[k, f"{v:.3f}", f"{bs / v:,.0f}", f"{ref / v:.2f}×"] for k, v in med.items()]
    print_table(f"T-JEPA step on Adult, card config, batch {bs}, {torch.get_num_threads()} threads (interleaved)",
                ["code", "s/step (median)", "rows/s", "speed vs reference"], rows)


if __name__ == "__main__":
    main()
