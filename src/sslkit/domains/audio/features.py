"""Audio feature settings (the `data` recipe section) and Kaldi-compatible log-mel fbank.

Shared by the data path (io/data), the method (model/method) and the exported encoder, so
an exported encoder computes exactly the features it was trained on.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, model_validator

from sslkit.core.recipes import Section

if TYPE_CHECKING:  # torch stays lazy: `sslkit --help` must not import it
    from torch import Tensor


class AudioData(Section):
    """How audio becomes model input: resampling, fbank shape, windows, normalisation, cache."""

    sample_rate: int = Field(16000, ge=1000)           # everything is resampled to this (SSAST/SSAMBA: 16 kHz)
    n_mels: int = Field(128, ge=8)                      # mel bins (SSAST/SSAMBA: 128; TERA: 80)
    frame_length_ms: float = Field(25.0, gt=0.0)        # Kaldi window (25 ms)
    frame_shift_ms: float = Field(10.0, gt=0.0)         # Kaldi hop (10 ms -> 100 frames/s)
    clip_frames: int = Field(1024, ge=16)               # frames per training window (1024 = 10.24 s, SSAST/SSAMBA)
    hop_frames: int | None = Field(None, ge=1)          # hop between windows of long recordings (None = clip_frames)
    mean: float | None = None                           # fbank normalisation; None = computed from the pretraining data
    std: float | None = Field(None, gt=0.0)
    level_norm_db: float | None = Field(None, le=0.0)   # TERA: level-normalise each clip to this dBFS (-25); None = off
    cache: bool = True                                  # keep decoded fbank on disk so later epochs do not decode again

    @model_validator(mode="after")
    def _check(self) -> "AudioData":
        if self.frame_length_ms < self.frame_shift_ms:
            raise ValueError("frame_length_ms must be >= frame_shift_ms")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both data.mean and data.std, or neither (then they are computed)")
        return self

    @property
    def hop(self) -> int:
        return self.hop_frames or self.clip_frames

    @property
    def frames_per_second(self) -> float:
        return 1000.0 / self.frame_shift_ms

    def feature_spec(self) -> dict:
        """The settings an exported encoder needs to turn waveforms into its features."""
        return {k: getattr(self, k) for k in ("sample_rate", "n_mels", "frame_length_ms", "frame_shift_ms",
                                              "level_norm_db")}


def min_samples(cfg: AudioData) -> int:
    """Samples needed for one fbank frame."""
    return int(round(cfg.sample_rate * cfg.frame_length_ms / 1000.0))


def level_normalise(wave: "Tensor", target_db: float) -> "Tensor":
    """Scale (S,) so its RMS is `target_db` dBFS (TERA's utterance level normalisation)."""
    import torch

    rms = wave.pow(2).mean().sqrt().clamp_min(1e-8)
    return wave * (10.0 ** (target_db / 20.0) / rms).to(wave.dtype) if rms > 1e-7 else wave


def compute_fbank(wave: "Tensor", cfg: AudioData) -> "Tensor":
    """(S,) float32 mono waveform at cfg.sample_rate -> (T, n_mels) Kaldi log-mel fbank, NOT normalised.

    As SSAST: DC removed, hanning window, no dither (so features are deterministic and cacheable).
    Waves shorter than one frame are zero-padded to one frame.
    """
    import torch
    import torchaudio.compliance.kaldi as kaldi

    wave = torch.as_tensor(wave, dtype=torch.float32).reshape(-1)
    if cfg.level_norm_db is not None:
        wave = level_normalise(wave, cfg.level_norm_db)
    need = min_samples(cfg)
    if wave.numel() < need:
        wave = torch.nn.functional.pad(wave, (0, need - wave.numel()))
    wave = wave - wave.mean()
    return kaldi.fbank(wave.unsqueeze(0), htk_compat=True, sample_frequency=cfg.sample_rate, use_energy=False,
                       window_type="hanning", num_mel_bins=cfg.n_mels, dither=0.0,
                       frame_length=cfg.frame_length_ms, frame_shift=cfg.frame_shift_ms)


def normalise(fbank: "Tensor", mean: float, std: float) -> "Tensor":
    """SSAST's convention: (fbank - mean) / (2 * std)."""
    return (fbank - mean) / (2.0 * std)
