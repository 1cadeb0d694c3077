"""The LA2018 benchmark's readings of one fine-tuning run at several steps: `KeepCheckpoints` copies the run's
checkpoint at chosen steps while it trains, `score_checkpoint` scores a copy on the test volumes as fine-tuning
scores its last one. Used by `medical3d_la2018.py --keep-steps`."""
from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np


PERCENT = {"dice", "jaccard"}


def test_scores(evaluation: dict) -> dict[str, dict[str, float]]:
    """{metric: {volume id: value}} for the left atrium (class 1) from a fine-tuning run's evaluation.json."""
    keys = {"dice": "dice_per_volume", "jaccard": "jaccard_per_volume", "hd95": "hd95_mm_per_volume",
            "asd": "asd_mm_per_volume"}
    out = {}
    for metric, key in keys.items():
        if key in evaluation:
            out[metric] = {vid: float(v[0]) * (100 if metric in PERCENT else 1) for vid, v in evaluation[key].items()}
    return out


class KeepCheckpoints(threading.Thread):
    """While a fine-tuning run trains: a copy of its checkpoints/last.pt at each step of `steps`, as
    `dest`/step-N.pt. Polls every 2 s (checkpoints come every train.checkpoint_every = 100 steps, ~80 s apart on the
    CPU); each new checkpoint is copied, and its step read from the copy, so a copy is always whole and its name
    true."""

    def __init__(self, run: Path, steps: list[int], dest: Path) -> None:
        super().__init__(daemon=True)
        self.ckpt, self.todo, self.dest = run / "checkpoints" / "last.pt", set(steps), dest
        self.todo -= {int(f.stem.split("-")[1]) for f in dest.glob("step-*.pt")}
        self.seen, self.done = self.stamp(), threading.Event()

    def stamp(self) -> tuple[int, int] | None:
        try:
            st = self.ckpt.stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns

    def run(self) -> None:
        import torch

        self.dest.mkdir(parents=True, exist_ok=True)
        while self.todo and not self.done.wait(2.0):
            stamp = self.stamp()
            if stamp is None or stamp == self.seen:
                continue
            self.seen, tmp = stamp, self.dest / "copying.pt"
            try:
                shutil.copyfile(self.ckpt, tmp)
                step = int(torch.load(tmp, map_location="cpu", weights_only=False)["step"])
            except (OSError, RuntimeError, KeyError, EOFError):
                continue
            if step in self.todo:
                tmp.replace(self.dest / f"step-{step}.pt")
                self.todo.discard(step)
            else:
                tmp.unlink()


def score_checkpoint(run: Path, checkpoint: Path, datalist: Path, scratch: Path, device: str) -> dict[str, float]:
    """Mean test scores of an earlier checkpoint of a fine-tuning run, computed as the run scored its last one
    (fine-tuning's own `evaluate`: sliding window on the datalist's test entries, at data.spacing, in the precision
    fit() recorded); {metric: mean}. A reading of the trend within one run, not a run of that many steps: the
    learning rate of an intermediate checkpoint had not yet annealed."""
    from types import SimpleNamespace

    from sslkit.core import distributed
    from sslkit.domains.medical3d.finetune import evaluate
    from sslkit.domains.medical3d.pairing import test_volumes
    from sslkit.domains.medical3d.predict import inference_bf16, load_segmenter
    from sslkit.domains.medical3d.preprocess import cache_for, prepare

    segmenter, rec = load_segmenter(run, checkpoint)
    entries, _ = prepare(test_volumes(datalist, None), cache_for(rec.data), True)
    values = rec.label_values or list(range(rec.classes))
    names = json.loads((run / "evaluation.json").read_text()).get("class_names") or [f"class {v}" for v in values[1:]]
    dev = distributed.select_device(device)
    used = json.loads((run / "manifest.json").read_text()).get("precision", {}).get("used")
    shutil.rmtree(scratch, ignore_errors=True)
    payload = evaluate(SimpleNamespace(model=segmenter.to(dev)), SimpleNamespace(path=scratch.joinpath), entries,
                       [(0, m["shape"][0]) for _, m in entries], names, values, rec.finetune,
                       inference_bf16(rec.train.precision, dev, used), dev, None, "test", rec.data.spacing)
    return {m: float(np.nanmean(list(v.values()))) for m, v in test_scores(payload).items()}
