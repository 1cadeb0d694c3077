"""Frozen-embedding evaluation of audio encoders: labels, clip embeddings, probes, baselines.

Labels come from a CSV (path,label) or a regex over the file name; a `--group-pattern` (a speaker, a voice) turns the
split into leave-one-group-out, so "a digit said by a voice never heard" is what is measured. Every table has the
same two baselines as the encoder, with the same probes: MFCC statistics (mean and std over time of 20 MFCCs and
their deltas, from the same fbank) and the same encoder with random weights.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from sslkit.core.errors import UserError
from sslkit.core.evaluation import PROBE_C_GRID, logistic_probe

if TYPE_CHECKING:
    import torch

    from sslkit.domains.audio.io import Source

N_MFCC = 20


# ---- labels and groups ---------------------------------------------------------------------


def labels_from_csv(path: Path, sources: list["Source"]) -> list[str | None]:
    """One label per source from a CSV/TSV with `path` and `label` columns; a row is matched to a source by the path
    as given, then the resolved path, then a unique file name. Rows naming a file that does not exist are an error;
    rows for existing files that were not given are ignored (labels for a whole corpus, a subset evaluated)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--labels {path} does not exist — give a CSV with 'path' and 'label' columns")
    text = path.read_text(encoding="utf-8-sig")
    delimiter = "\t" if path.suffix.lower() == ".tsv" or "\t" in text.split("\n", 1)[0] else ","
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    columns = [(c or "").strip() for c in reader.fieldnames or []]
    if "path" not in columns or "label" not in columns:
        raise UserError(f"--labels {path} needs 'path' and 'label' columns, it has: {', '.join(columns) or 'none'} — "
                        "add a header row path,label")
    by_id = {s.id: k for k, s in enumerate(sources)}
    by_real = {str(s.path.resolve()): k for k, s in enumerate(sources)}
    names: dict[str, list[int]] = {}
    for k, s in enumerate(sources):
        names.setdefault(s.path.name, []).append(k)
    labels: list[str | None] = [None] * len(sources)
    missing = []
    for row in reader:
        row = {(a or "").strip(): (b or "").strip() for a, b in row.items()}
        p, label = row.get("path", ""), row.get("label", "")
        if not p:
            continue
        rel = Path(p) if Path(p).is_absolute() else path.parent / p
        k = by_id.get(p, by_real.get(str(rel.resolve()), by_real.get(str(Path(p).resolve()))))
        if k is None and len(names.get(Path(p).name, [])) == 1:
            k = names[Path(p).name][0]
        if k is None:
            if not (rel.exists() or Path(p).exists()):     # a row for a file not given but present is fine
                missing.append(p)
        elif label:
            labels[k] = label
    if missing:
        raise UserError(f"--labels {path} names {len(missing)} file(s) that do not exist (first: {missing[0]}; "
                        "relative paths are read from the CSV's folder) — fix the paths or drop the rows")
    return labels


def from_pattern(pattern: str, sources: list["Source"], flag: str) -> list[str | None]:
    """The regex's first group (else the whole match) searched in each file name; None where it does not match."""
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise UserError(f"{flag} {pattern!r} is not a valid regular expression ({exc}) — fix it") from None
    out: list[str | None] = []
    for s in sources:
        m = rx.search(s.path.name)
        out.append(None if m is None else (m.group(1) if rx.groups else m.group(0)))
    if all(v is None for v in out):
        raise UserError(f"{flag} {pattern!r} matches none of the {len(sources)} file names (e.g. {sources[0].path.name})"
                        " — it is searched in the file name only")
    return out


# ---- embeddings ----------------------------------------------------------------------------


def clip_windows_all(fbanks: Sequence["torch.Tensor"], mean: float, std: float,
                     clip_frames: int) -> tuple["torch.Tensor", "torch.Tensor", np.ndarray]:
    """Every clip (raw fbank (T, M)) normalised and cut into windows of clip_frames, as in pretraining: windows
    (W, clip_frames, M), their valid-frame mask (W, clip_frames) and the clip each window belongs to (W,)."""
    import torch

    from sslkit.domains.audio.data import clip_windows
    from sslkit.domains.audio.features import normalise

    windows, valid, owner = [], [], []
    for c, f in enumerate(fbanks):
        w, v, _ = clip_windows(normalise(f, mean, std), clip_frames)
        windows.append(w)
        valid.append(v)
        owner += [c] * len(w)
    return torch.cat(windows), torch.cat(valid), np.asarray(owner)


def embed_clips(encoder: Any, fbanks: Sequence["torch.Tensor"], mean: float, std: float, clip_frames: int,
                batch_size: int = 32, device: str = "cpu") -> np.ndarray:
    """(N, D): each clip's windows (`clip_windows_all`) embedded with `encoder.embed_fbank` and averaged weighted by
    their real frames."""
    x, m, owner_arr = clip_windows_all(fbanks, mean, std, clip_frames)
    out = embed_windows(encoder, x, m, batch_size, device)
    weight = m.sum(1).double().numpy()
    total = np.zeros((len(fbanks), out.shape[1]))
    np.add.at(total, owner_arr, out * weight[:, None])
    return (total / np.bincount(owner_arr, weights=weight, minlength=len(fbanks))[:, None]).astype(np.float32)


def embed_windows(encoder: Any, x: "torch.Tensor", valid: "torch.Tensor", batch_size: int = 32,
                  device: str = "cpu") -> np.ndarray:
    """(W, T, M) normalised windows with (W, T) masks -> (W, D) via encoder.embed_fbank, in batches, no grad."""
    import torch

    encoder = encoder.to(device).eval()
    parts = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            z = encoder.embed_fbank(x[i: i + batch_size].to(device), valid[i: i + batch_size].to(device))
            parts.append(z.float().cpu().numpy())
    return np.concatenate(parts).astype(np.float64)


def mfcc_stats(fbanks: Sequence["torch.Tensor"]) -> np.ndarray:
    """(N, 4 * N_MFCC): mean and std over time of MFCCs (DCT-II of the log-mel fbank, as Kaldi's MFCC without
    liftering) and of their deltas — the classic fixed-length summary of a clip."""
    import torch
    import torchaudio.functional as AF

    rows = []
    dct = AF.create_dct(N_MFCC, fbanks[0].shape[1], norm="ortho")   # (M, N_MFCC)
    for f in fbanks:
        c = f.float() @ dct                                   # (T, N_MFCC)
        d = AF.compute_deltas(c.T.unsqueeze(0)).squeeze(0).T  # deltas along time
        feats = torch.cat([c, d], dim=1)
        rows.append(torch.cat([feats.mean(0), feats.std(0, unbiased=False)]).numpy())
    return np.stack(rows).astype(np.float64)


# ---- probes --------------------------------------------------------------------------------


def parse_probe_c(text: str) -> float | None:
    """`--probe-c`: 'auto' (None: chosen per fit by an inner split of the training clips) or a positive number."""
    if text.strip().lower() == "auto":
        return None
    try:
        c = float(text)
    except ValueError:
        c = float("nan")
    if not c > 0 or c == float("inf"):
        raise UserError(f"--probe-c {text!r} is not 'auto' or a positive number — e.g. --probe-c auto or --probe-c 0.01")
    return c


def _probe(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, seed: int, k: int,
           c: float | None = 1.0, g_tr: np.ndarray | None = None) -> dict:
    """The core's linear probe (C fixed, or with c=None chosen inside the training clips, whole groups per inner
    fold) and cosine kNN; accuracies and the C used."""
    from sklearn.neighbors import KNeighborsClassifier

    linear, c_used = logistic_probe(x_tr, y_tr, c=c, seed=seed, groups=g_tr)
    knn = KNeighborsClassifier(n_neighbors=min(k, len(x_tr)), metric="cosine").fit(x_tr, y_tr)
    return {"linear": float((linear.predict(x_te) == y_te).mean()), "knn": float((knn.predict(x_te) == y_te).mean()),
            "C": c_used}


def _summary(per: Sequence[dict]) -> dict[str, Any]:
    """Mean ± std of the accuracies over seeds or groups, and every C the linear probe used."""
    from sslkit.core.evaluation import mean_std

    return {**{m: mean_std(p[m] for p in per) for m in ("linear", "knn")}, "C": [p["C"] for p in per]}


def split_scores(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, seeds: Sequence[int],
                 k: int = 20, c: float | None = 1.0) -> dict[str, Any]:
    """A fixed split (e.g. FSDD's conventional one): linear and kNN accuracy, mean ± std over probe seeds."""
    return _summary([_probe(x[train], y[train], x[test], y[test], s, k, c) for s in seeds])


def random_split_scores(x: np.ndarray, y: np.ndarray, seeds: Sequence[int], k: int = 20,
                        test_size: float = 0.2, c: float | None = 1.0) -> dict[str, Any]:
    """A stratified 80/20 split per seed; mean ± std over seeds."""
    from sklearn.model_selection import train_test_split

    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < 2:
        raise UserError(f"label {classes[counts.argmin()]!r} has only 1 clip; a stratified split needs 2 per label — "
                        "add clips or drop the label")
    per = []
    idx = np.arange(len(y))
    for s in seeds:
        try:
            tr, te = train_test_split(idx, test_size=test_size, random_state=s, stratify=y)
        except ValueError as exc:
            raise UserError(f"cannot split {len(y)} clips of {len(classes)} labels 80/20 ({exc}) — add clips") from None
        per.append(_probe(x[tr], y[tr], x[te], y[te], s, k, c))
    return _summary(per)


def group_scores(x: np.ndarray, y: np.ndarray, groups: np.ndarray, k: int = 20,
                 c: float | None = 1.0) -> dict[str, Any]:
    """Leave-one-group-out: train on every other group, test on the held-out one; mean ± std over groups (with
    c=None the probe's C is chosen inside the training groups, by whole groups).

    The probes are deterministic (lbfgs, exact kNN, group folds), so probe seeds would repeat the same numbers: one
    pass."""
    per: dict[str, dict] = {}
    for g in np.unique(groups):
        test = groups == g
        if len(np.unique(y[~test])) < 2:
            continue
        per[str(g)] = _probe(x[~test], y[~test], x[test], y[test], 0, k, c, groups[~test])
    if not per:
        raise UserError("leave-one-group-out needs at least 2 labels among the other groups for some group — check "
                        "--group-pattern")
    return {**_summary(list(per.values())), "per_group": per}


def check_labels(y: np.ndarray, groups: np.ndarray | None) -> None:
    if len(np.unique(y)) < 2:
        raise UserError(f"the labels name {len(np.unique(y))} class(es); evaluation needs at least 2 — check the "
                        "labels or the pattern")
    if groups is not None and len(np.unique(groups)) < 2:
        raise UserError(f"--group-pattern finds {len(np.unique(groups))} group(s); leave-one-group-out needs at least 2 "
                        "— check the pattern")


def table_rows(results: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    def fmt(ms: tuple[float, float]) -> str:
        return f"{100 * ms[0]:.1f} ± {100 * ms[1]:.1f}"

    def cs(values: list[float]) -> str:
        lo, hi = min(values), max(values)
        return f"{lo:g}" if lo == hi else f"{lo:g}–{hi:g}"

    return ["features", "linear probe acc %", "probe C", "kNN acc %"], [
        [n, fmt(r["linear"]), cs(r["C"]), fmt(r["knn"])] for n, r in results.items()]


# ---- the `evaluate` command ----------------------------------------------------------------


def labelled_sources(sources: list["Source"], labels: Path | None, label_pattern: str | None,
                     group_pattern: str | None) -> tuple[list["Source"], list[str], list[str] | None]:
    """The sources that have a label (and a group, with --group-pattern), with them; the rest warned about."""
    from sslkit.core.console import warn

    if (labels is None) == (label_pattern is None):
        raise UserError("give the labels either as --labels CSV (path,label) or as --label-pattern REGEX, not "
                        f"{'both' if labels else 'neither'}")
    y = labels_from_csv(labels, sources) if labels is not None else from_pattern(label_pattern, sources, "--label-pattern")
    g = from_pattern(group_pattern, sources, "--group-pattern") if group_pattern else [""] * len(sources)
    keep = [i for i in range(len(sources)) if y[i] is not None and g[i] is not None]
    if not keep:
        raise UserError("no clip has both a label and a group — check --labels/--label-pattern and --group-pattern")
    left = len(sources) - len(keep)
    if left:
        first = next(s.id for i, s in enumerate(sources) if i not in set(keep))
        warn(f"{left} of {len(sources)} clip(s) have no label{' or no group' if group_pattern else ''} and are left "
             f"out (first: {first})")
    return ([sources[i] for i in keep], [str(y[i]) for i in keep],
            [str(g[i]) for i in keep] if group_pattern else None)


def score(x: np.ndarray, y: np.ndarray, groups: np.ndarray | None, seeds: int, k: int,
          c: float | None = 1.0) -> dict[str, Any]:
    return (group_scores(x, y, groups, k, c) if groups is not None
            else random_split_scores(x, y, range(seeds), k, c=c))


def evaluate_run(run: Any, encoder: Any, cfg: Any, mean: float, std: float, sources: list["Source"], *,
                 labels: Path | None, label_pattern: str | None, group_pattern: str | None, seeds: int, k: int,
                 baselines: bool, batch_size: int, device: str, strict: bool,
                 probe_c: float | None = None) -> tuple[dict, Path]:
    """Embed, probe, compare; the table on stderr, evaluation.json and plots/embeddings.png in the run."""
    import json

    from sslkit.core.console import info, print_table
    from sslkit.core.files import atomic_write_text
    from sslkit.domains.audio.io import iter_fbanks
    from sslkit.domains.audio.plots import label_map

    kept, y_all, g_all = labelled_sources(sources, labels, label_pattern, group_pattern)
    used, fbanks, report = iter_fbanks(kept, cfg, strict=strict, min_frames=1)
    report.warn_all(cfg, 1)
    pos = {s.id: i for i, s in enumerate(kept)}
    y = np.asarray([y_all[pos[s.id]] for s in used])
    groups = np.asarray([g_all[pos[s.id]] for s in used]) if g_all is not None else None
    check_labels(y, groups)
    method = run.recipe_dict["method"]
    split = (f"leave-one-group-out over {len(np.unique(groups))} groups (mean ± std over groups)" if groups is not None
             else f"stratified 80/20, {seeds} seed{'s' if seeds != 1 else ''} (mean ± std over seeds)")
    info(f"evaluating {len(y)} clips, {len(np.unique(y))} labels; {split}")
    sets = {f"{method} embeddings": embed_clips(encoder, fbanks, mean, std, cfg.clip_frames, batch_size, device)}
    if baselines:
        sets["MFCC statistics"] = mfcc_stats(fbanks)
        sets[f"{method}, random weights"] = embed_clips(random_encoder(run, mean, std), fbanks, mean, std,
                                                         cfg.clip_frames, batch_size, device)
    results = {name: score(x, y, groups, seeds, k, probe_c) for name, x in sets.items()}
    columns, rows = table_rows(results)
    print_table(f"audio evaluation: {method}, {len(y)} clips, {split}", columns, rows)
    payload = {"method": method, "clips": int(len(y)), "labels": sorted(set(y.tolist())), "split": split,
               "group_pattern": group_pattern, "label_source": str(labels) if labels else label_pattern,
               "seeds": seeds if groups is None else 1, "k": k,
               "probe_c": "auto" if probe_c is None else probe_c, "probe_c_grid": list(PROBE_C_GRID),
               "skipped": report.as_dict()["skipped"],
               "results": {n: {m: list(v) if isinstance(v, tuple) else v for m, v in r.items()}
                           for n, r in results.items()}}
    out = run.path("evaluation.json")
    atomic_write_text(out, json.dumps(payload, indent=2))
    label_map(sets[f"{method} embeddings"], y, run.path("plots", "embeddings.png"),
              title=f"{method} clip embeddings (PCA), coloured by label")
    info(f"wrote {out} and {run.path('plots', 'embeddings.png')}")
    return payload, out


def random_encoder(run: Any, mean: float, std: float) -> Any:
    """The run's encoder architecture with the random weights pretraining started from (same seed)."""
    from sslkit.core.loop import seed_everything
    from sslkit.domains.audio.method import RECIPE_SCHEMA, build_method

    cfg = RECIPE_SCHEMA.model_validate(run.recipe_dict)
    seed_everything(cfg.train.seed)
    return build_method(cfg, mean, std).encoder.eval()
