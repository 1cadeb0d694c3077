"""Reading audio: files, folders (recursive) and manifests; decode, downmix, resample; bad input counted and said.

A `Source` is one recording: `id` is the path as the user gave it (or as the manifest wrote it), `path` where it is.
`decode_all` turns sources into Kaldi fbank (features.compute_fbank) and returns a `DecodeReport` that names what
was skipped (corrupt, empty, not audio, unsupported codec), what is silent, what was padded and what was upsampled
from a rate below the mel range — one warning line each, or one error line with --strict.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from sslkit.core.errors import UserError

if TYPE_CHECKING:
    from torch import Tensor

    from sslkit.domains.audio.features import AudioData

AUDIO_EXTS = {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".caf", ".w64", ".rf64"}
# Formats libsndfile does not read: listed so a folder of them is named, not silently empty.
UNSUPPORTED = {".m4a": "AAC/M4A", ".aac": "AAC", ".mp4": "MP4", ".wma": "WMA", ".webm": "WebM", ".amr": "AMR",
               ".ape": "Monkey's Audio", ".wv": "WavPack", ".mka": "Matroska"}
MANIFEST_EXTS = {".csv", ".tsv"}
SILENCE_PEAK = 1e-4          # ≈ −80 dBFS: nothing audible in the clip


@dataclass(frozen=True)
class Source:
    id: str
    path: Path


@dataclass
class DecodeReport:
    """What happened to each kind of difficult file while decoding (names kept for the warning lines)."""

    total: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)     # (id, reason)
    silent: list[str] = field(default_factory=list)
    short: list[str] = field(default_factory=list)                  # padded to min_frames
    low_rate: dict[int, list[str]] = field(default_factory=dict)    # original rate -> ids
    frames: int = 0

    def as_dict(self) -> dict:
        return {"files": self.total, "used": self.total - len(self.skipped), "frames": self.frames,
                "skipped": [{"id": i, "reason": r} for i, r in self.skipped], "silent": len(self.silent),
                "padded_short": len(self.short), "low_rate": {str(k): len(v) for k, v in self.low_rate.items()}}

    def warn_all(self, cfg: "AudioData", min_frames: int) -> None:
        """One warning line per kind of problem (rank 0 prints; console.warn knows)."""
        from sslkit.core.console import warn

        if self.skipped:
            first, why = self.skipped[0]
            warn(f"skipped {len(self.skipped)} of {self.total} file(s) that could not be read as audio (first: {first}: "
                 f"{why}) — fix or remove them, or pass --strict to stop at the first one")
        if self.silent:
            warn(f"{len(self.silent)} clip(s) are silent (peak below −80 dBFS), first {self.silent[0]} — they are used "
                 "as they are; remove them if they are not meant to be there")
        if self.short:
            warn(f"{len(self.short)} clip(s) are shorter than one patch ({min_frames} frames = "
                 f"{min_frames * cfg.frame_shift_ms / 1000:.2f} s), first {self.short[0]} — padded with zeros and "
                 "marked as padding")
        for rate, ids in sorted(self.low_rate.items()):
            warn(f"{len(ids)} file(s) are sampled at {rate} Hz (first {ids[0]}), below data.sample_rate="
                 f"{cfg.sample_rate}: resampled up, their mel bins above {rate // 2} Hz are empty — fine for a "
                 f"corpus at one rate; for such data alone consider --set data.sample_rate={rate}")


# ---- finding files -------------------------------------------------------------------------


def _manifest(path: Path) -> list[Source]:
    """A CSV/TSV with a `path` column; relative paths are relative to the manifest's folder; ids as written."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"manifest {path} cannot be read ({exc}) — give a UTF-8 CSV/TSV with a 'path' column") from None
    delimiter = "\t" if path.suffix.lower() == ".tsv" or ("\t" in text.split("\n", 1)[0]) else ","
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    columns = [c.strip() for c in reader.fieldnames or []]
    if "path" not in columns:
        raise UserError(f"manifest {path} has no 'path' column (columns: {', '.join(columns) or 'none'}) — add a "
                        "header row with a 'path' column")
    sources = []
    for row in reader:
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        if not row.get("path"):
            continue
        p = Path(row["path"])
        sources.append(Source(row["path"], p if p.is_absolute() else path.parent / p))
    if not sources:
        raise UserError(f"manifest {path} lists no files — fill its 'path' column")
    missing = [s for s in sources if not s.path.is_file()]
    if missing:
        raise UserError(f"manifest {path} names {len(missing)} file(s) that do not exist (first: {missing[0].id} → "
                        f"{missing[0].path}) — fix the paths (relative ones are read from the manifest's folder)")
    return sources


def find_audio(paths: list[Path]) -> list[Source]:
    """Files, folders (recursive, sorted) and manifests (.csv/.tsv with a `path` column) → sources, in order."""
    if not paths:
        raise UserError("no audio given — pass files, folders or a manifest CSV/TSV with a 'path' column")
    sources: list[Source] = []
    for given in paths:
        given = Path(given)
        if not given.exists():
            raise UserError(f"audio path {given} does not exist — check the spelling or the current folder")
        if given.is_dir():
            found = [p for p in sorted(given.rglob("*"))
                     if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in AUDIO_EXTS | set(UNSUPPORTED)]
            if not found:
                raise UserError(f"folder {given} holds no audio files ({', '.join(sorted(AUDIO_EXTS))}) — point at the "
                                "folder that holds the recordings")
            sources += [Source(str(given / p.relative_to(given)), p) for p in found]
        elif given.suffix.lower() in MANIFEST_EXTS:
            sources += _manifest(given)
        else:
            sources.append(Source(str(given), given))
    seen: set[Path] = set()
    unique = []
    for s in sources:                      # the same file given twice (a folder and a file in it) counts once
        key = s.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(s)
    return unique


# ---- decoding ------------------------------------------------------------------------------


class AudioReadError(Exception):
    """One file could not be decoded; the message says why (and what to install, for a codec)."""


def read_wave(path: Path) -> tuple[np.ndarray, int]:
    """(samples,) float32 mono (channels averaged) and its rate, via soundfile; AudioReadError on anything bad."""
    import soundfile as sf

    ext = path.suffix.lower()
    if ext in UNSUPPORTED:
        raise AudioReadError(f"{UNSUPPORTED[ext]} is not read by soundfile/libsndfile — convert it, e.g. "
                             f"`ffmpeg -i {path.name} {path.stem}.flac`")
    if ext == ".mp3" and "MP3" not in sf.available_formats():
        raise AudioReadError(f"this libsndfile ({sf.__libsndfile_version__}) reads no MP3 — "
                             "`pip install -U soundfile` (bundles libsndfile ≥ 1.1 with MP3) or convert to FLAC")
    try:
        if path.stat().st_size == 0:
            raise AudioReadError("zero-length file")
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except AudioReadError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as exc:
        text = " ".join(str(exc).split())
        reason = text.split(": ", 1)[-1] if ": " in text else text
        raise AudioReadError(f"not readable as audio ({reason})") from None
    if data.shape[0] == 0:
        raise AudioReadError("holds no samples")
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(wave).all():
        raise AudioReadError("holds NaN or infinite samples")
    return np.ascontiguousarray(wave, dtype=np.float32), int(rate)


def to_rate(wave: np.ndarray, rate: int, target: int) -> "Tensor":
    """(S,) float32 tensor at `target` Hz (torchaudio.functional.resample, windowed sinc)."""
    import torch

    t = torch.from_numpy(wave)
    if rate == target:
        return t
    import torchaudio.functional as AF

    return AF.resample(t, rate, target)


def load_fbank(src: Source, cfg: "AudioData") -> tuple["Tensor", int, float]:
    """(fbank (T, n_mels) not normalised, original rate, peak) of one source."""
    from sslkit.domains.audio.features import compute_fbank

    wave, rate = read_wave(src.path)
    peak = float(np.abs(wave).max())
    return compute_fbank(to_rate(wave, rate, cfg.sample_rate), cfg), rate, peak


def decode_all(sources: list[Source], cfg: "AudioData", *, strict: bool = False, min_frames: int = 16,
               on_clip: Callable[[int, Source, "Tensor"], None] | None = None) -> tuple[list[Source], DecodeReport]:
    """Decode every source to fbank; `on_clip(k, source, fbank)` for the k-th usable one (streaming: nothing held).

    Unreadable files are skipped and counted (UserError naming the file with `strict`); silent, short and
    low-rate clips are counted for `DecodeReport.warn_all`. Returns the usable sources in order and the report.
    """
    report = DecodeReport(total=len(sources))
    used: list[Source] = []
    for src in sources:
        try:
            fbank, rate, peak = load_fbank(src, cfg)
        except AudioReadError as exc:
            if strict:
                raise UserError(f"{src.id}: {exc} — fix or remove the file (without --strict it is skipped and "
                                "counted)") from None
            report.skipped.append((src.id, str(exc)))
            continue
        if peak < SILENCE_PEAK:
            report.silent.append(src.id)
        if fbank.shape[0] < min_frames:
            report.short.append(src.id)
        if rate < cfg.sample_rate:
            report.low_rate.setdefault(rate, []).append(src.id)
        report.frames += int(fbank.shape[0])
        if on_clip is not None:
            on_clip(len(used), src, fbank)
        used.append(src)
    if not used:
        first, why = report.skipped[0] if report.skipped else ("-", "-")
        raise UserError(f"none of the {len(sources)} file(s) could be read as audio (first: {first}: {why}) — "
                        "check the paths and formats (WAV/FLAC/OGG/MP3)")
    return used, report


def iter_fbanks(sources: list[Source], cfg: "AudioData", strict: bool = False,
                min_frames: int = 16) -> tuple[list[Source], list["Tensor"], DecodeReport]:
    """decode_all, keeping every fbank in memory (embed/evaluate: the clips of one command)."""
    kept: list["Tensor"] = []
    used, report = decode_all(sources, cfg, strict=strict, min_frames=min_frames,
                              on_clip=lambda k, s, f: kept.append(f))
    return used, kept, report


def stream(sources: list[Source], cfg: "AudioData") -> Iterator[tuple[Source, "Tensor"]]:
    """Decode lazily (benchmarks): (source, fbank) of each readable file."""
    for src in sources:
        try:
            yield src, load_fbank(src, cfg)[0]
        except AudioReadError:
            continue
