"""The LA2018 benchmark's table: `table.md`, `summary.json` and `trend.png` (test Dice against alice pretraining
steps) from the per-arm JSON records that `medical3d_la2018.py` writes. No torch: reads records only."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from medical3d_checkpoints import PERCENT  # noqa: E402

METRICS = ("dice", "jaccard", "hd95", "asd")


def published(readme: Path) -> dict[int, tuple[str, str]]:
    """{labelled volumes: (supervised V-Net Dice, best semi-supervised)} from the table in the data's README."""
    out = {}
    text = readme.read_text() if readme.is_file() else ""
    for m in re.finditer(r"^\|\s*(\d+)\s*\(\d+%\)\s*\|\s*([^|]+)\|\s*([^|]+)\|", text, re.M):
        out[int(m.group(1))] = (m.group(2).strip(), m.group(3).strip())
    return out


def fmt(values: list[float], metric: str) -> str:
    if not values:
        return "—"
    d = 1 if metric in PERCENT else 2
    return f"{np.mean(values):.{d}f}" + (f" ± {np.std(values, ddof=1):.{d}f}" if len(values) > 1 else "")


def pretraining(r: dict) -> int:
    """An arm's alice pretraining steps; 0 from scratch."""
    return 0 if r["settings"]["init"] == "scratch" else r["settings"]["pretrain_steps"]


def trend_points(results: list[dict], labelled: int, seed: int | None = 0) -> list[dict]:
    """The trend's arms: from scratch (pretraining 0) and from alice (no unlabelled images), `labelled` volumes,
    fine-tuning `seed` (None: every seed), sorted by pretraining steps."""
    points = [r for r in results if r["settings"]["init"] in ("scratch", "alice") and not r["settings"]["unlabelled"]
              and r["settings"]["labelled"] == labelled and seed in (None, r["settings"]["seed"])]
    return sorted(points, key=pretraining)


def trend_plot(results: list[dict], labelled: int, reference: str, path: Path) -> Path | None:
    """Test Dice against alice pretraining steps (seed 0 joined by a line; the other seeds of the same pretraining
    as grey dots; the published supervised V-Net figure dashed). None with fewer than two points."""
    from sslkit.core.plots import pyplot, save_figure

    points = trend_points(results, labelled)
    if len(points) < 2:
        return None
    x = pretraining
    shown = {x(r) for r in points}
    others = [r for r in trend_points(results, labelled, None) if r["settings"]["seed"] != 0 and x(r) in shown]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    ax.plot([x(r) for r in points], [r["mean"]["dice"] for r in points], "o-", color="tab:blue", label="seed 0")
    if others:
        ax.plot([x(r) for r in others], [r["mean"]["dice"] for r in others], "o", color="0.6", ms=4,
                label="other seeds")
    try:
        ax.axhline(float(reference), color="tab:red", ls="--", lw=1, label=f"published V-Net ({reference})")
    except ValueError:
        pass
    scratch = [r["mean"]["dice"] for r in trend_points(results, labelled, None) if x(r) == 0]
    if scratch:                 # target 2: the mean over seeds from scratch, plus 5 points
        ax.axhline(np.mean(scratch) + 5, color="tab:green", ls=":", lw=1,
                   label=f"from scratch (mean of {len(scratch)} seed{'s' * (len(scratch) > 1)}) + 5: target 2")
    ax.set_xscale("symlog", linthresh=max(1, min(x(r) for r in points if x(r) > 0)))
    ax.set_xticks([x(r) for r in points], [str(x(r)) for r in points])
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.margins(x=0.08)
    ax.set_xlabel("alice pretraining steps (0: from scratch)")
    ax.set_ylabel("test Dice % (20 volumes)")
    ax.set_title(f"LA2018, {labelled} labelled volumes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def table(out: Path, data: Path, trend_labelled: int = 8) -> str:
    """table.md / summary.json / trend.png from every arm's JSON under `out`."""
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))
               if not p.name.startswith(("pretrain-", "summary"))]
    pre = {p.stem: json.loads(p.read_text()) for p in out.glob("pretrain-*.json")}
    ref = published(data / "README.md")
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in results:
        name = r["arm"].rsplit("-L", 1)[0]
        groups.setdefault((name, r["settings"]["labelled"]), []).append(r)
    lines = ["| labelled | arm | alice steps | seeds | Dice % | Jaccard % | HD95 mm | ASD mm | Dice per seed "
             "| V-Net (published) | best semi-sup. (published) | wall min / seed | data-wait |", "|" + "---|" * 13]
    summary = []
    for (name, n), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rs = sorted(rs, key=lambda r: r["settings"]["seed"])
        cells = {m: [r["mean"][m] for r in rs if m in r["mean"]] for m in METRICS}
        waits = [r["data_wait"] for r in rs if r.get("data_wait") is not None]
        sup, semi = ref.get(n, ("—", "—"))
        wall = np.mean([r["wall_s"] for r in rs]) / 60
        steps = "—" if rs[0]["settings"]["init"] == "scratch" else rs[0]["settings"]["pretrain_steps"]
        lines.append(f"| {n} | {name} | {steps} | {len(rs)} | " + " | ".join(fmt(cells[m], m) for m in METRICS)
                     + f" | {', '.join(f'{d:.1f}' for d in cells['dice'])} | {sup} | {semi} | {wall:.1f} | "
                     + (f"{100 * np.mean(waits):.0f}%" if waits else "—") + " |")
        summary.append({"arm": name, "labelled": n, "seeds": [r["settings"]["seed"] for r in rs],
                        **{m: cells[m] for m in METRICS}, "wall_s": [r["wall_s"] for r in rs],
                        "data_wait": waits, "published_vnet": sup, "published_semisup": semi})
    gains = []                  # pretrained minus from scratch, seed by seed (same labelled volumes, same seed)
    for (name, n), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        base = {r["settings"]["seed"]: r for r in groups.get(("scratch", n), [])}
        if rs[0]["settings"]["init"] == "scratch" or rs[0]["settings"]["unlabelled"]:
            continue
        per = [(r["settings"]["seed"], paired(r, base[r["settings"]["seed"]])) for r in rs
               if r["settings"]["seed"] in base]
        per = [(seed, d) for seed, d in per if d is not None]
        if per:
            gains.append(f"| {n} | {name} | " + ", ".join(f"s{seed} {d[0]:+.1f} ± {d[1]:.1f} ({d[2]}/{d[3]})"
                                                          for seed, d in per)
                         + f" | {np.mean([d[0] for _, d in per]):+.1f} |")
    if gains:
        lines += ["", "Pretrained minus from scratch, per fine-tuning seed (Dice points, paired over the test volumes: "
                  "mean ± standard error (volumes better / scored)):", "",
                  "| labelled | arm | per seed | mean over seeds |", "|---|---|---|---|", *gains]
    for r in results:           # the test scores of an arm's kept checkpoints, and of its last
        if not r.get("checkpoints"):
            continue
        last = next((int(x.split("=")[1]) for x in r["settings"]["sets"] if x.startswith("finetune.steps=")), None)
        lines += ["", f"{r['arm']}: test scores of its checkpoints (one run of {last} steps; the earlier ones are "
                  "readings before its learning rate annealed, not runs of that length):", "",
                  "| step | Dice % | Jaccard % | HD95 mm | ASD mm |", "|---|---|---|---|---|"]
        rows = sorted(((int(k), v) for k, v in r["checkpoints"].items()), key=lambda kv: kv[0]) + [(last, r["mean"])]
        for step, m in rows:
            lines.append(f"| {step} | " + " | ".join(f"{m[k]:.{1 if k in PERCENT else 2}f}" if k in m else "—"
                                                      for k in METRICS) + " |")
    trend = trend_points(results, trend_labelled)
    if len(trend) > 1:
        scratch = next((r for r in trend if r["settings"]["init"] == "scratch"), None)
        lines += ["", f"Dice against alice pretraining steps ({trend_labelled} labelled, fine-tuning seed 0; "
                  "trend.png):", "", "| pretraining steps | Dice % | − scratch, paired over the test volumes "
                  "| better on | HD95 mm | pretraining wall min (chain) | fine-tuning wall min |",
                  "|---|---|---|---|---|---|---|"]
        for r in trend:
            alice = r["settings"]["init"] != "scratch"
            steps = r["settings"]["pretrain_steps"] if alice else 0
            run = pre.get(Path(r["settings"]["pretrained"]).name, {}) if alice else {}
            chain_wall, link = 0.0, run
            while link:         # this run's wall and that of every run it continues
                chain_wall += link["wall_s"]
                link = pre.get((link.get("continued_from") or {}).get("run", ""), {})
            d = paired(r, scratch) if alice and scratch else None
            lines.append(f"| {steps} | {r['mean'].get('dice', float('nan')):.1f} | "
                         + (f"{d[0]:+.1f} ± {d[1]:.1f} | {d[2]} of {d[3]}" if d else "— | —")
                         + f" | {r['mean'].get('hd95', float('nan')):.2f} | "
                         + (f"{chain_wall / 60:.1f}" if alice else "—") + f" | {r['wall_s'] / 60:.1f} |")
        trend_plot(results, trend_labelled, ref.get(trend_labelled, ("—", "—"))[0], out / "trend.png")
    if pre:
        lines += ["", "| pretraining run | recipe | steps | continues | volumes | wall min | data-wait |",
                  "|---|---|---|---|---|---|---|"]
        for k, p in sorted(pre.items(), key=lambda kv: kv[1]["steps"]):
            w, src = p.get("data_wait"), p.get("continued_from")
            lines.append(f"| {k} | {p['recipe']} | {p['steps']} | {src['run'] if src else '—'} | {p['volumes']} | "
                         f"{p['wall_s'] / 60:.1f} | " + (f"{100 * w:.0f}%" if w is not None else "—") + " |")
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    (out / "summary.json").write_text(json.dumps({"arms": summary, "trend": [
        {"arm": r["arm"], "dice": r["mean"].get("dice"), "settings": r["settings"]} for r in trend],
        "pretraining": pre}, indent=2))
    return text


def paired(r: dict, base: dict) -> tuple[float, float, int, int] | None:
    """Dice of `r` minus `base` over the test volumes both scored: (mean, standard error, volumes better, volumes)."""
    a, b = r.get("per_volume", {}).get("dice", {}), base.get("per_volume", {}).get("dice", {})
    d = np.array([a[k] - b[k] for k in a if k in b])
    if len(d) < 2:
        return None
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))), int((d > 0).sum()), len(d)
