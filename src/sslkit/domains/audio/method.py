"""The audio SSL objectives and the recipe schema.

- ssamba / ssast (Gong et al. 2022, Shams et al. 2024): cluster-masked 16×16 fbank patches, two forward passes
  with their own masks: a discriminative InfoNCE over the masked patches of each clip (raw dot products between
  the true patches and the predictions, M×M, cross-entropy to the diagonal, no temperature) and a generative MSE to
  the patch values; L = nce + 10·mse. The encoder differs: bidirectional Mamba or ViT.
- tera (Liu et al. 2021): time (15 % of frames in spans of 7; 80 % zeroed, 10 % replaced by other frames, 10 %
  kept), frequency (one band of U[0, 20 %] of the bins, zeroed) and magnitude (p = 0.15, N(0, 0.2) noise)
  alteration; L1 between the prediction and the original fbank on the time- and frequency-altered positions.
- tera-inv (`invariance.py`): TERA on two speaker-perturbed views of each clip (`augment.py`: vocal-tract-length
  warp, tempo, gain, tilt, noise) + VICReg between their pooled clip embeddings; TERA's encoder.

Batches: {"fbank": (B, T, M) normalised, zero on padding, "valid": (B, T) bool, "seed": (B,) int64 (optional)}.
Each clip's random draws come from a generator seeded with its "seed" (drawn per item by the data pipeline), so
they do not depend on the rank or the number of processes; without "seed" the global RNG is used.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from sslkit.core.export import encoder_spec
from sslkit.core.recipes import Recipe, Section
from sslkit.domains.audio.features import AudioData
from sslkit.domains.audio.model import AudioEncoder
from sslkit.domains.audio.scan import BLOCK, CHUNK


class AudioModel(Section):
    """Encoder shape (defaults: SSAMBA-tiny, card 3a)."""

    dim: int = Field(192, ge=8)
    depth: int = Field(24, ge=1)
    heads: int = Field(3, ge=1)                 # ssast / tera attention heads
    mlp_ratio: float = Field(4.0, gt=0)         # ssast / tera feed-forward width ÷ dim
    patch_freq: int = Field(16, ge=1)           # patch height in mel bins (ssamba / ssast)
    patch_time: int = Field(16, ge=1)           # patch width in frames
    cls_tokens: int = Field(1, ge=0)            # ssamba 1, ssast-tiny 2 (DeiT); not used by tera
    d_state: int = Field(16, ge=1)              # Mamba state size per channel (Vim)
    d_conv: int = Field(4, ge=1)                # Mamba depthwise conv width (Vim)
    expand: int = Field(2, ge=1)                # Mamba inner width ÷ dim (Vim)
    dropout: float = Field(0.0, ge=0, lt=1)
    attention: Literal["sdpa", "materialised"] = "sdpa"   # ssast: fused attention, or softmax(QKᵀ)V as SSAST's code
    scan_block: int = Field(BLOCK, ge=1)        # PyTorch scan: positions (batch × steps) whose states exist at once
    scan_chunk: int = Field(CHUNK, ge=1)        # PyTorch scan: steps per chunk inside a block
    pool: Literal["mean", "freq"] = "mean"      # clip embedding of patch encoders: mean of the patch tokens (D), or
                                                # per frequency row over time, rows concatenated (F'·D; MSM-MAE/M2D)
    pool_stats: Literal["mean", "meanstd"] = "mean"   # clip embedding: + the std over time (x-vector statistics)
    pool_segments: int = Field(1, ge=1)         # clip embedding: one mean per equal part of the clip in time
    pool_layers: int = Field(1, ge=1)           # clip embedding: the last k layers' tokens side by side


class AudioMask(Section):
    """What is hidden: patch masks (ssamba / ssast) or alterations (tera)."""

    count: int = Field(400, ge=1)               # masked patches of a full clip (scaled down for shorter clips)
    cluster: bool = True                        # k×k blocks of patches, k drawn from cluster_sizes per clip
    cluster_sizes: list[int] = Field(default_factory=lambda: [3, 4, 5])
    time_frac: float = Field(0.15, ge=0, le=1)  # tera: fraction of frames altered in time
    time_span: int = Field(7, ge=1)             # tera: consecutive frames per time span
    time_zero: float = Field(0.8, ge=0, le=1)   # tera: probability the spans are zeroed ...
    time_random: float = Field(0.1, ge=0, le=1)  # ... replaced by other frames of the clip (else kept)
    freq_frac: float = Field(0.2, ge=0, le=1)   # tera: widest zeroed band, as a fraction of the mel bins
    noise_p: float = Field(0.15, ge=0, le=1)    # tera: probability of magnitude noise on a clip
    noise_std: float = Field(0.2, ge=0)


class AudioLoss(Section):
    nce_weight: float = Field(1.0, ge=0)
    mse_weight: float = Field(10.0, ge=0)


class AudioInvariance(Section):
    """tera-inv only: two speaker-perturbed views per clip (`augment.perturb_voice`) and VICReg between their
    pooled clip embeddings, added to TERA's reconstruction (`invariance.TeraInv`)."""

    weight: float = Field(0.2, ge=0)            # VICReg next to the L1 (VICReg ~20, L1 ~0.3 -> 0.15); 0.2 chosen on FSDD
    recon_weight: float = Field(1.0, ge=0)      # TERA's L1 (0: invariance alone, the alteration kept as a view)
    warp: float = Field(0.15, ge=0, lt=1)       # vocal-tract-length warp: frequency × U[1 - warp, 1 + warp]
    tempo: float = Field(0.15, ge=0, lt=1)      # time × U[1 - tempo, 1 + tempo]
    gain_db: float = Field(6.0, ge=0)           # level ± dB
    tilt_db: float = Field(6.0, ge=0)           # spectral tilt ± dB from the lowest to the highest mel bin
    noise: float = Field(0.05, ge=0)            # Gaussian noise, normalised units
    proj_dim: int = Field(512, ge=2)            # projector width (VICReg's expander, smaller for a CPU)
    sim_weight: float = Field(25.0, ge=0)       # VICReg's λ, μ, ν (paper: 25, 25, 1)
    var_weight: float = Field(25.0, ge=0)
    cov_weight: float = Field(1.0, ge=0)


class AudioRecipe(Recipe):
    method: Literal["ssamba", "ssast", "tera", "tera-inv"] = "ssamba"
    data: AudioData = Field(default_factory=AudioData)
    model: AudioModel = Field(default_factory=AudioModel)
    mask: AudioMask = Field(default_factory=AudioMask)
    loss: AudioLoss = Field(default_factory=AudioLoss)
    inv: AudioInvariance = Field(default_factory=AudioInvariance)

    @model_validator(mode="after")
    def _check(self) -> "AudioRecipe":
        m, d = self.model, self.data
        if self.method in ("ssast", "tera", "tera-inv") and m.dim % m.heads:
            raise ValueError(f"model.dim={m.dim} is not divisible by model.heads={m.heads}")
        if self.method not in ("tera", "tera-inv"):
            if d.n_mels % m.patch_freq:
                raise ValueError(f"data.n_mels={d.n_mels} is not a multiple of model.patch_freq={m.patch_freq}")
            if d.clip_frames % m.patch_time:
                raise ValueError(f"data.clip_frames={d.clip_frames} is not a multiple of model.patch_time={m.patch_time}")
            n = (d.n_mels // m.patch_freq) * (d.clip_frames // m.patch_time)
            if self.mask.count >= n:
                raise ValueError(f"mask.count={self.mask.count} must be below the {n} patches of a clip")
            if not self.mask.cluster_sizes or min(self.mask.cluster_sizes) < 1:
                raise ValueError("mask.cluster_sizes must list block sizes >= 1")
        if self.mask.time_zero + self.mask.time_random > 1:
            raise ValueError("mask.time_zero + mask.time_random must not exceed 1")
        return self


RECIPE_SCHEMA = AudioRecipe


def clip_generators(batch: dict[str, Tensor], salt: int) -> list[torch.Generator]:
    """One CPU generator per clip, from batch["seed"] (or the global RNG), `salt` telling passes apart."""
    n = batch["fbank"].shape[0]
    seeds = batch["seed"].tolist() if "seed" in batch else torch.randint(0, 2**62, (n,)).tolist()
    return [torch.Generator().manual_seed((int(s) * 4 + salt) % 2**63) for s in seeds]


def cluster_mask(full: Tensor, grid_f: int, count: int, sizes: list[int], cluster: bool,
                 g: torch.Generator) -> Tensor:
    """Indices of the patches to mask in one clip (time-major grid, `grid_f` patches per time step).

    full (N,) bool: patches made only of real frames (the only ones masked). `count` refers to a full clip and is
    scaled by the fraction of such patches. Cluster masking (SSAST): k×k blocks at random corners until `count`.
    """
    n = full.numel()
    cand = full.nonzero().squeeze(1)
    if cand.numel() == 0:
        return cand
    m = min(cand.numel(), max(1, round(count * cand.numel() / n)))
    if not cluster:
        return cand[torch.randperm(cand.numel(), generator=g)[:m]]
    k = sizes[int(torch.randint(len(sizes), (1,), generator=g))]
    grid_t = n // grid_f
    out = cand.new_empty(0)
    while out.numel() < m:
        starts = cand[torch.randint(cand.numel(), (m // (k * k) + 4,), generator=g)]
        t = (starts // grid_f)[:, None, None] + torch.arange(k)[None, :, None]
        f = (starts % grid_f)[:, None, None] + torch.arange(k)[None, None, :]
        inside = (t < grid_t) & (f < grid_f)
        ids = (t * grid_f + f)[inside]                       # blocks in drawing order
        ids = torch.cat([out, ids[full[ids]]])
        first = torch.full((n,), ids.numel(), dtype=torch.long).scatter_reduce_(
            0, ids, torch.arange(ids.numel()), "amin")     # order of first appearance, unique
        keep = (first < ids.numel()).nonzero().squeeze(1)
        out = keep[first[keep].argsort()]
    return out[:m]


def pad_indices(rows: list[Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
    """Ragged index lists -> (idx (B, Mmax) long, sel (B, Mmax) bool)."""
    width = max(1, max(r.numel() for r in rows))
    idx = torch.zeros(len(rows), width, dtype=torch.long)
    sel = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        idx[i, : r.numel()], sel[i, : r.numel()] = r, True
    return idx.to(device), sel.to(device)


def gather(x: Tensor, idx: Tensor) -> Tensor:
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def per_clip_mean(x: Tensor, sel: Tensor) -> Tensor:
    """Mean over each clip's selected entries, then over the clips (a clip with none counts as 0), so the
    denominator is the batch size: DDP's average over ranks then equals one process on the whole batch."""
    sel = sel.to(x.dtype)
    dims = tuple(range(1, x.dim()))
    return ((x * sel).sum(dims) / sel.sum(dims).clamp_min(1)).mean()


def info_nce(pred: Tensor, target: Tensor, sel: Tensor) -> tuple[Tensor, Tensor]:
    """SSAST's discriminative loss per clip: logits[i, j] = target_i · pred_j (M×M, raw dot products), CE to the
    diagonal; only selected rows/columns take part. pred, target (B, M, P), sel (B, M) -> (nce, accuracy)."""
    logits = target.float() @ pred.float().transpose(1, 2)
    logits = logits.masked_fill(~sel.unsqueeze(1), -1e30)   # finite: a clip with no masked patch stays NaN-free
    logp = logits.log_softmax(-1).diagonal(dim1=1, dim2=2)
    hit = logits.argmax(-1) == torch.arange(sel.shape[1], device=sel.device)
    return -per_clip_mean(logp, sel), per_clip_mean(hit.float(), sel)


def masked_mse(pred: Tensor, target: Tensor, sel: Tensor) -> Tensor:
    return per_clip_mean((pred.float() - target.float()).pow(2).mean(-1), sel)


def _head(dim: int, out: int, bias: bool = True) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, out, bias=bias))


def encoder_kwargs(recipe: AudioRecipe, mean: float, std: float) -> dict:
    m, d = recipe.model, recipe.data
    return dict(n_mels=d.n_mels, clip_frames=d.clip_frames, dim=m.dim, depth=m.depth, heads=m.heads,
                mlp_ratio=m.mlp_ratio, patch_freq=m.patch_freq, patch_time=m.patch_time, cls_tokens=m.cls_tokens,
                d_state=m.d_state, d_conv=m.d_conv, expand=m.expand, dropout=m.dropout, attention=m.attention,
                scan_block=m.scan_block, scan_chunk=m.scan_chunk, pool=m.pool, pool_stats=m.pool_stats,
                pool_segments=m.pool_segments, pool_layers=m.pool_layers, features=d.feature_spec(), mean=float(mean),
                std=float(std))


class MaskedPatches(nn.Module):
    """SSAMBA / SSAST: masked patch prediction, discriminative + generative, two passes with their own masks."""

    loss_terms = ("nce", "mse")

    def __init__(self, recipe: AudioRecipe, mean: float, std: float) -> None:
        super().__init__()
        self.kwargs = encoder_kwargs(recipe, mean, std)
        self.arch, self.mask, self.weights = recipe.method, recipe.mask, recipe.loss
        self.encoder = AudioEncoder(recipe.method, **self.kwargs)
        size = recipe.model.patch_freq * recipe.model.patch_time
        # the InfoNCE is invariant to a bias added to every prediction (it shifts a row's logits by one constant):
        # its gradient is rounding noise, which Adam would turn into lr-sized steps, so the head has none
        self.disc_head, self.gen_head = _head(recipe.model.dim, size, bias=False), _head(recipe.model.dim, size)

    def _masked_pass(self, fbank: Tensor, valid: Tensor,
                     gens: list[torch.Generator]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(tokens at the masked patches (B, M, D), their true values (B, M, P), sel (B, M), idx (B, M))."""
        enc = self.encoder
        _, full = enc.token_validity(valid)
        rows = [cluster_mask(f, enc.grid_f, self.mask.count, self.mask.cluster_sizes, self.mask.cluster, g)
                for f, g in zip(full.cpu(), gens)]
        idx, sel = pad_indices(rows, fbank.device)
        masked = torch.zeros(full.shape, dtype=torch.bool, device=fbank.device).scatter_(1, idx, sel)
        tokens, _ = enc._encode(fbank, valid, masked)
        return gather(tokens, idx), gather(enc.patches(fbank), idx), sel, idx

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        fbank, valid = self.encoder.pad(batch["fbank"], batch.get("valid"))
        tok, target, sel, _ = self._masked_pass(fbank, valid, clip_generators(batch, 0))
        nce, acc = info_nce(self.disc_head(tok), target, sel)
        tok, target, sel, _ = self._masked_pass(fbank, valid, clip_generators(batch, 1))
        mse = masked_mse(self.gen_head(tok), target, sel)
        loss = self.weights.nce_weight * nce + self.weights.mse_weight * mse
        return loss, {"nce": nce.detach(), "mse": mse.detach(), "nce_acc": acc.detach()}

    @torch.no_grad()
    def visualise(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """First clip: its fbank, the generative pass's mask, and the fbank with the masked patches predicted."""
        enc, one = self.encoder, {k: v[:1] for k, v in batch.items()}
        fbank, valid = enc.pad(one["fbank"], one.get("valid"))
        tok, _, sel, idx = self._masked_pass(fbank, valid, clip_generators(one, 1))
        ids = idx[0, sel[0]]
        patches = enc.patches(fbank).float().clone()
        patches[0, ids] = self.gen_head(tok[0, sel[0]]).float()
        flag = torch.zeros_like(patches, dtype=torch.bool)
        flag[0, ids] = True
        t = one["fbank"].shape[1]
        return {"fbank": one["fbank"][0].float().cpu(), "mask": enc.unpatch(flag, fbank.shape[1])[0, :t].cpu(),
                "recon": enc.unpatch(patches, fbank.shape[1])[0, :t].cpu()}

    def encoder_spec(self) -> dict:
        return encoder_spec("audio", self.arch, **self.kwargs)


def tera_alter(x: Tensor, n_valid: int, mask: AudioMask, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """One clip (T, M): (altered copy, label (T, M) bool = the time- and frequency-altered real positions)."""
    out, label = x.clone(), torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    span = min(mask.time_span, n_valid)
    spans = round(n_valid * mask.time_frac / max(span, 1)) if n_valid else 0
    if spans:
        starts = torch.randperm(n_valid - span + 1, generator=g)[:spans]
        frames = (starts[:, None] + torch.arange(span)).flatten().unique().to(x.device)
        dice = float(torch.rand(1, generator=g))
        if dice < mask.time_zero:
            out[frames] = 0.0
        elif dice < mask.time_zero + mask.time_random:
            out[frames] = x[torch.randint(n_valid, (frames.numel(),), generator=g).to(x.device)]
        label[frames] = True
    width = int(torch.randint(int(x.shape[1] * mask.freq_frac) + 1, (1,), generator=g))
    if width and n_valid:
        start = int(torch.randint(x.shape[1] - width + 1, (1,), generator=g))
        out[:n_valid, start : start + width] = 0.0
        label[:n_valid, start : start + width] = True
    if float(torch.rand(1, generator=g)) < mask.noise_p:
        noise = torch.randn(x.shape, generator=g) * mask.noise_std
        out[:n_valid] += noise[:n_valid].to(x.device, x.dtype)
    return out, label


class Tera(nn.Module):
    """TERA: reconstruct the original frames from time/frequency/magnitude-altered ones (L1 on altered positions)."""

    loss_terms = ("l1",)

    def __init__(self, recipe: AudioRecipe, mean: float, std: float) -> None:
        super().__init__()
        self.kwargs = encoder_kwargs(recipe, mean, std)
        self.mask = recipe.mask
        self.encoder = AudioEncoder("tera", **self.kwargs)
        d = recipe.model.dim
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d), nn.Linear(d, recipe.data.n_mels))

    def _alter(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        fbank = batch["fbank"]
        valid = batch.get("valid")
        if valid is None:
            valid = torch.ones(fbank.shape[:2], dtype=torch.bool, device=fbank.device)
        lengths = valid.sum(1).tolist()
        pairs = [tera_alter(x, int(n), self.mask, g) for x, n, g in zip(fbank, lengths, clip_generators(batch, 2))]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]), valid

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        altered, label, valid = self._alter(batch)
        pred = self.head(self.encoder.tokens(altered, valid))
        l1 = per_clip_mean((pred.float() - batch["fbank"].float()).abs(), label)
        return l1, {"l1": l1.detach(), "altered": label.float().mean().detach()}

    @torch.no_grad()
    def visualise(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        one = {k: v[:1] for k, v in batch.items()}
        altered, label, valid = self._alter(one)
        pred = self.head(self.encoder.tokens(altered, valid)).float()
        recon = torch.where(label, pred, altered.float())
        return {"fbank": one["fbank"][0].float().cpu(), "mask": label[0].cpu(), "recon": recon[0].cpu()}

    def encoder_spec(self) -> dict:
        return encoder_spec("audio", "tera", **self.kwargs)


def build_method(recipe: AudioRecipe, mean: float, std: float) -> nn.Module:
    """The method named by the recipe; `mean`/`std` (fbank statistics) travel with the exported encoder."""
    if recipe.method == "tera":
        return Tera(recipe, mean, std)
    if recipe.method == "tera-inv":
        from sslkit.domains.audio.invariance import TeraInv    # it imports this module

        return TeraInv(recipe, mean, std)
    return MaskedPatches(recipe, mean, std)
