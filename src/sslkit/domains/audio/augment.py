"""Speaker-like perturbations of a normalised log-mel fbank: they change the voice, not the word.

Each clip gets its own draws (from a per-clip generator, so they do not depend on the rank):
- vocal-tract-length warp (VTLP, Jaitly & Hinton 2013): the spectrum is scaled in frequency by α ∈ [1 − warp,
  1 + warp], S'(f) = S(f / α), read off the mel axis at the exact mel position of each bin's centre frequency ÷ α
  (Kaldi's mel bins, from torchaudio's Kaldi mel scale: equally spaced between 20 Hz and Nyquist). Scaling the frequency axis moves formants
  and harmonics together, as resampling the waveform (a pitch + formant shift) does;
- tempo: the frames resampled in time by τ ∈ [1 − tempo, 1 + tempo] (linear interpolation; the clip gets shorter
  or longer, `valid` follows, nothing past the window);
- gain: a level change of U[−gain_db, gain_db] dB (an additive constant in log power);
- spectral tilt: U[−tilt_db, tilt_db] dB from the lowest to the highest bin (a different voice/channel colour);
- noise: Gaussian, std `noise` in normalised units, on the real frames.

The fbank is normalised as SSAST does, (log power − mean) / (2·std), so a change of d dB in power is
d · ln(10) / 10 / (2·std) in these units. Padding stays zero.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

LOW_HZ = 20.0    # Kaldi fbank's default low_freq; high_freq = Nyquist


def _mel_grid(n_mels: int, sample_rate: int) -> tuple[Tensor, Tensor]:
    """Kaldi's mel axis (float64): the mel of its low edge and the spacing of its bin centres (HTK mel, 20 Hz to
    Nyquist, `n_mels` triangles)."""
    from torchaudio.compliance.kaldi import mel_scale

    lo, hi = (mel_scale(torch.tensor(f, dtype=torch.float64)) for f in (LOW_HZ, sample_rate / 2.0))
    return lo, (hi - lo) / (n_mels + 1)


def mel_centres(n_mels: int, sample_rate: int) -> Tensor:
    """Centre frequencies (Hz) of Kaldi's `n_mels` triangular bins (HTK mel, 20 Hz to Nyquist)."""
    from torchaudio.compliance.kaldi import inverse_mel_scale

    lo, step = _mel_grid(n_mels, sample_rate)
    return inverse_mel_scale(lo + step * torch.arange(1, n_mels + 1, dtype=torch.float64))


def warp_index(alpha: Tensor, n_mels: int, sample_rate: int) -> Tensor:
    """(B,) warp factors -> (B, M) fractional bin positions to read: bin m takes the value at frequency f_m / α."""
    from torchaudio.compliance.kaldi import mel_scale

    lo, step = _mel_grid(n_mels, sample_rate)
    pos = (mel_scale(mel_centres(n_mels, sample_rate)[None, :] / alpha.to(torch.float64)[:, None]) - lo) / step - 1.0
    return pos.clamp(0.0, n_mels - 1.0)


def interp(x: Tensor, pos: Tensor, dim: int) -> Tensor:
    """x (B, T, M) read at fractional positions pos (B, K) along `dim` (1 or 2), linearly -> (B, K, M) / (B, T, K)."""
    n = x.shape[dim]
    lo = pos.floor().long().clamp(0, n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    w = (pos - lo.to(pos.dtype)).to(x.dtype)
    if dim == 2:
        idx_lo, idx_hi = lo[:, None, :].expand(-1, x.shape[1], -1), hi[:, None, :].expand(-1, x.shape[1], -1)
        w = w[:, None, :]
    else:
        idx_lo, idx_hi = lo[:, :, None].expand(-1, -1, x.shape[2]), hi[:, :, None].expand(-1, -1, x.shape[2])
        w = w[:, :, None]
    return x.gather(dim, idx_lo) * (1 - w) + x.gather(dim, idx_hi) * w


def draw(gens: list[torch.Generator], low: float, high: float) -> Tensor:
    """One U[low, high] per clip, each from its clip's generator (B,)."""
    return torch.tensor([low + (high - low) * float(torch.rand(1, generator=g)) for g in gens], dtype=torch.float64)


def perturb_voice(fbank: Tensor, valid: Tensor, gens: list[torch.Generator], *, sample_rate: int, std: float,
                  warp: float, tempo: float, gain_db: float, tilt_db: float, noise: float) -> tuple[Tensor, Tensor]:
    """Normalised fbank (B, T, M), valid (B, T) (real frames first) -> a perturbed view (B, T, M) and its valid (B, T).

    `std` is the dataset's fbank std (normalised units = log power / (2·std)); zero strengths switch a part off."""
    b, t, m = fbank.shape
    x = fbank.float()
    if warp > 0:
        x = interp(x, warp_index(draw(gens, 1 - warp, 1 + warp), m, sample_rate).to(x.device, x.dtype), dim=2)
    n = valid.sum(1).to(torch.float64)
    if tempo > 0:
        tau = draw(gens, 1 - tempo, 1 + tempo)
        src = torch.arange(t, dtype=torch.float64)[None, :] * tau[:, None]          # frame t reads source frame t·τ
        valid = (src <= (n - 1)[:, None].cpu()).to(valid.device) & (n > 0)[:, None].to(valid.device)
        x = interp(x, src.clamp(max=t - 1).to(x.device, x.dtype), dim=1)
    per_db = math.log(10.0) / 10.0 / (2.0 * std)
    shift = torch.zeros(b, 1, 1, dtype=x.dtype, device=x.device)
    if gain_db > 0:
        shift = shift + (draw(gens, -gain_db, gain_db) * per_db).to(x.dtype).view(b, 1, 1).to(x.device)
    if tilt_db > 0:
        ramp = torch.linspace(-0.5, 0.5, m, dtype=x.dtype, device=x.device).view(1, 1, m)
        shift = shift + (draw(gens, -tilt_db, tilt_db) * per_db).to(x.dtype).view(b, 1, 1).to(x.device) * ramp
    x = x + shift
    if noise > 0:
        x = x + torch.stack([torch.randn(t, m, generator=g) for g in gens]).to(x.device, x.dtype) * noise
    return (x * valid[..., None].to(x.dtype)).to(fbank.dtype), valid
