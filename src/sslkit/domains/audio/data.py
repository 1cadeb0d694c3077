"""Pretraining data: decoded-fbank cache, dataset statistics, fixed windows with a hop, padded with a mask.

Rank 0 decodes every recording once into `<run>/cache/` — `fbank.bin` (all clips' frames, float32 (F, n_mels), one
after another) and `clips.json` (ids, paths, frame offsets, feature settings, mean/std, the decode report); every
rank then memory-maps the same file (the tabular cache's pattern), so later epochs, resumes and DDP ranks never decode
again and share one copy in the page cache. With `data.cache: false` only `clips.json` is written and each window is
decoded again when it is read (for corpora too large to keep as fbank; also the first-epoch baseline of
benchmarks/audio_datapath.py).

Windows: a clip of T frames gives windows of `clip_frames` starting every `hop` frames, the last one aligned to the
clip's end; a clip no longer than `clip_frames` gives one window, zero-padded, with `valid` False on the padding.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from sslkit.core.errors import UserError
from sslkit.domains.audio.features import AudioData, normalise
from sslkit.domains.audio.io import DecodeReport, Source, decode_all, load_fbank

CACHE_VERSION = 1


def cache_key(cfg: AudioData) -> dict[str, Any]:
    """What the cached frames depend on: a cache made with other feature settings is rebuilt."""
    return {"version": CACHE_VERSION, **cfg.feature_spec()}


def window_starts(n_frames: int, length: int, hop: int) -> list[int]:
    """Start frames of the windows of one clip: every `hop`, plus one aligned to the end so the tail is covered."""
    if n_frames <= length:
        return [0]
    starts = list(range(0, n_frames - length + 1, hop))
    if starts[-1] + length < n_frames:
        starts.append(n_frames - length)
    return starts


def build_cache(sources: list[Source], cfg: AudioData, folder: Path, *, strict: bool, min_frames: int) -> dict:
    """Decode every source once; write `folder/` (fbank.bin when cfg.cache, clips.json) atomically; the index."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    total, total_sq, count = 0.0, 0.0, 0
    offsets, lengths = [0], []
    try:
        fh = open(tmp / "fbank.bin", "wb") if cfg.cache else None

        def on_clip(k: int, src: Source, fbank: torch.Tensor) -> None:
            nonlocal total, total_sq, count
            arr = fbank.numpy().astype(np.float32, copy=False)
            a64 = arr.astype(np.float64)
            total += float(a64.sum())
            total_sq += float((a64 * a64).sum())
            count += arr.size
            lengths.append(int(arr.shape[0]))
            offsets.append(offsets[-1] + int(arr.shape[0]))
            if fh is not None:
                fh.write(np.ascontiguousarray(arr).tobytes())

        try:
            used, report = decode_all(sources, cfg, strict=strict, min_frames=min_frames, on_clip=on_clip)
        finally:
            if fh is not None:
                fh.close()
        mean = total / count
        std = math.sqrt(max(total_sq / count - mean * mean, 0.0))
        index = {"key": cache_key(cfg), "cached": cfg.cache, "n_mels": cfg.n_mels, "ids": [s.id for s in used],
                 "paths": [str(s.path) for s in used], "offsets": offsets, "lengths": lengths,
                 "sources": [str(s.path) for s in sources], "mean": mean, "std": std, "report": report.as_dict(),
                 "decode": {"total": report.total, "skipped": report.skipped, "silent": report.silent,
                            "short": report.short, "low_rate": {str(k): v for k, v in report.low_rate.items()}}}
        (tmp / "clips.json").write_text(json.dumps(index))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return index


def read_index(folder: Path) -> dict | None:
    path = Path(folder) / "clips.json"
    return json.loads(path.read_text()) if path.is_file() else None


def report_from_index(index: dict) -> DecodeReport:
    """The decode report of a cache, so a resumed run can repeat its warnings without decoding again."""
    s = index["decode"]
    return DecodeReport(total=s["total"], skipped=[tuple(x) for x in s["skipped"]], silent=s["silent"],
                        short=s["short"], low_rate={int(k): v for k, v in s["low_rate"].items()},
                        frames=index["offsets"][-1])


def prepare_cache(sources: list[Source], cfg: AudioData, folder: Path, *, strict: bool,
                  min_frames: int) -> tuple[dict, DecodeReport, bool]:
    """Rank 0 builds (or reuses) the cache, the other ranks wait; every rank gets the index or the same error.

    Returns (index, report, reused)."""
    from sslkit.core import distributed

    payload: Any = None
    if distributed.is_main():
        try:
            index = read_index(folder)
            reused = bool(index and index["key"] == cache_key(cfg) and index["cached"] == cfg.cache
                          and index["sources"] == [str(s.path) for s in sources]
                          and (not cfg.cache or (Path(folder) / "fbank.bin").is_file()))
            if not reused:
                index = build_cache(sources, cfg, folder, strict=strict, min_frames=min_frames)
            payload = ("ok", reused)
        except UserError as exc:
            payload = ("error", str(exc))
    status, value = distributed.broadcast_object(payload)
    if status == "error":
        raise UserError(value)
    index = read_index(folder)
    assert index is not None
    return index, report_from_index(index), bool(value)


class Windows(Dataset):
    """Item i: {"fbank": (clip_frames, n_mels) normalised, zero on padding, "valid": (clip_frames,) bool,
    "seed": () int64 — drawn here, so it depends on (train.seed, epoch, i) only, not on the rank (masks drawn from it
    are the same under any number of processes)}."""

    def __init__(self, folder: Path, index: dict, cfg: AudioData, mean: float, std: float) -> None:
        self.cfg, self.mean, self.std = cfg, float(mean), float(std)
        self.index = index
        self.length = cfg.clip_frames
        self.windows = np.asarray([(c, s) for c, n in enumerate(index["lengths"])
                                   for s in window_starts(n, self.length, cfg.hop)], dtype=np.int64).reshape(-1, 2)
        self.offsets = np.asarray(index["offsets"], dtype=np.int64)
        self.frames = None
        if index["cached"]:
            n = int(self.offsets[-1])
            # mode "c": copy-on-write views (torch wants writable arrays); the file itself is never changed
            self.frames = np.memmap(Path(folder) / "fbank.bin", dtype=np.float32, mode="c", shape=(n, index["n_mels"]))

    def __len__(self) -> int:
        return len(self.windows)

    def clip_frames(self, c: int, start: int, stop: int) -> torch.Tensor:
        """Raw fbank rows [start, stop) of clip c, from the cache or decoded again."""
        if self.frames is not None:
            off = int(self.offsets[c])
            return torch.from_numpy(np.array(self.frames[off + start: off + stop]))
        fbank = load_fbank(Source(self.index["ids"][c], Path(self.index["paths"][c])), self.cfg)[0]
        return fbank[start:stop]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        c, s = (int(v) for v in self.windows[i])
        stop = min(s + self.length, self.index["lengths"][c])
        out = torch.zeros(self.length, self.index["n_mels"], dtype=torch.float32)
        if self.frames is not None:       # straight from the page cache into the padded window, normalised in place
            off = int(self.offsets[c])
            out[: stop - s] = torch.from_numpy(np.asarray(self.frames[off + s: off + stop]))
        else:
            out[: stop - s] = self.clip_frames(c, s, stop)
        out[: stop - s].sub_(self.mean).div_(2.0 * self.std)          # features.normalise, SSAST's convention
        valid = torch.zeros(self.length, dtype=torch.bool)
        valid[: stop - s] = True
        return {"fbank": out, "valid": valid, "seed": torch.randint(0, 2**62, (), dtype=torch.int64)}


def pad_window(x: torch.Tensor, length: int) -> dict[str, torch.Tensor]:
    """(t, M) normalised -> {"fbank": (length, M) zero-padded, "valid": (length,) bool}; t <= length."""
    t = min(x.shape[0], length)
    out = torch.zeros(length, x.shape[1], dtype=torch.float32)
    out[:t] = x[:t]
    valid = torch.zeros(length, dtype=torch.bool)
    valid[:t] = True
    return {"fbank": out, "valid": valid}


def clip_windows(fbank: torch.Tensor, length: int, hop: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """A whole clip (T, M) normalised -> windows (W, length, M), valid (W, length), start frames (W)."""
    starts = window_starts(fbank.shape[0], length, hop or length)
    parts = [pad_window(fbank[s: s + length], length) for s in starts]
    return torch.stack([p["fbank"] for p in parts]), torch.stack([p["valid"] for p in parts]), starts
