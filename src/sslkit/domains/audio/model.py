"""Audio encoders: bidirectional Mamba (SSAMBA), ViT (SSAST, DeiT-tiny shape) over 16×16 fbank patches, and
TERA's Transformer over frames — one exported module, `AudioEncoder`, that takes waveforms or fbank.

Patches are ordered time-major (all frequency patches of time step 0, then of step 1, ...), so a clip's padding
is the tail of the token sequence. Tokens holding no real frame ("absent") are invisible: the Mamba scan gives
them no input and no decay (dt = 0) and attention never looks at them, so a clip embeds to the same vector alone
or padded inside a batch.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslkit.core.precision import attention
from sslkit.domains.audio.scan import BLOCK, CHUNK, selective_scan


def _causal_conv(u: Tensor, w: Tensor, bias: Tensor) -> Tensor:
    """Depthwise causal conv1d, u (B, L, C), w (C, k), bias (C,) -> (B, L, C): a sum of shifted products accumulated
    in place (no transposes, no padded copy of u)."""
    k, n = w.shape[1], u.shape[1]
    out = torch.addcmul(bias, u, w[:, k - 1])
    for j in range(max(0, k - 1 - n + 1), k - 1):
        shift = k - 1 - j
        out[:, shift:].addcmul_(u[:, : n - shift], w[:, j])
    return out


class _ConvSiLU(torch.autograd.Function):
    """x = silu(causal depthwise conv1d(u)) with a hand-written backward (the same maths as autograd through
    `_causal_conv` and `F.silu`, without its slice copies). Saves u, the pre-activation p and its output x (which
    the scan and x_proj keep anyway): silu'(p) = σ(p) + x·(1 − σ(p))."""

    @staticmethod
    def forward(ctx: Any, u: Tensor, w: Tensor, bias: Tensor) -> Tensor:  # type: ignore[override]
        pre = _causal_conv(u, w, bias)
        x = F.silu(pre)
        ctx.save_for_backward(u, w, pre, x)
        return x

    @staticmethod
    def backward(ctx: Any, gout: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        u, w, pre, x = ctx.saved_tensors
        sig = torch.sigmoid(pre)
        g = torch.sub(1.0, x).mul_(sig).add_(x).mul_(gout)        # d/d(pre-activation)
        del sig
        k, n = w.shape[1], u.shape[1]
        gu = g * w[:, k - 1]
        gw = torch.empty_like(w)
        # per-channel dot products over (B, L) as reductions over the outer dims, vectorised along C (an einsum
        # "bld,bld->d" batches over C with strided vectors: it made this backward 4x slower)
        prod = torch.mul(g, u)
        gw[:, k - 1] = prod.sum((0, 1))
        for j in range(k - 1):
            shift = k - 1 - j
            if shift < n:
                gu[:, : n - shift].addcmul_(g[:, shift:], w[:, j])
                part = torch.mul(g[:, shift:], u[:, : n - shift], out=prod[:, : n - shift])
                gw[:, j] = part.sum((0, 1))
            else:
                gw[:, j] = 0.0
        return gu, gw, g.sum((0, 1))


class MambaDirection(nn.Module):
    """One scan direction of a Vim "bimamba v2" mixer: its own depthwise conv1d, x/dt projections, A, D."""

    def __init__(self, inner: int, d_state: int, d_conv: int, dt_rank: int) -> None:
        super().__init__()
        self.conv1d = nn.Conv1d(inner, inner, d_conv, groups=inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, inner, bias=True)
        self.dt_rank, self.d_state = dt_rank, d_state
        nn.init.uniform_(self.dt_proj.weight, -dt_rank ** -0.5, dt_rank ** -0.5)        # Mamba's dt init
        dt = torch.exp(torch.rand(inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp_min(1e-4)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))                  # softplus⁻¹(dt)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(inner, 1))
        self.D = nn.Parameter(torch.ones(inner))

    def forward(self, u: Tensor, z: Tensor, present: Tensor | None, block: int, chunk: int,
                memo: dict | None = None) -> Tensor:
        """u, z: (B, L, inner) -> gated SSM output (B, L, inner) float32."""
        x = _ConvSiLU.apply(u, self.conv1d.weight[:, 0], self.conv1d.bias)
        dt, bm, cm = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        # dt_proj's weight is applied inside the scan, a block at a time (the (B, L, inner) delta and its gradient
        # never exist); absent tokens get dt = 0: no decay and no input
        return selective_scan(x, dt, -torch.exp(self.A_log.float()), bm, cm, self.D, z, self.dt_proj.bias,
                              block=block, chunk=chunk, memo=memo, delta_proj=self.dt_proj.weight, keep=present)


class BiMamba(nn.Module):
    """Vim's bidirectional mixer: shared in/out projections, forward and backward scans averaged, SiLU gate."""

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, block: int = BLOCK,
                 chunk: int = CHUNK, recompute: bool = True) -> None:
        super().__init__()
        inner, dt_rank = expand * dim, math.ceil(dim / 16)
        self.recompute = recompute
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.fwd = MambaDirection(inner, d_state, d_conv, dt_rank)
        self.bwd = MambaDirection(inner, d_state, d_conv, dt_rank)
        self.out_proj = nn.Linear(inner, dim, bias=False)
        self.block, self.chunk = block, chunk

    def forward(self, x: Tensor, present: Tensor | None = None) -> Tensor:
        u, z = self.in_proj(x).chunk(2, dim=-1)
        if present is not None:
            u = u * present.unsqueeze(-1).to(u.dtype)
        y = torch.add(self._run(self.fwd, u, z, present, False), self._run(self.bwd, u, z, present, True)).mul_(0.5)
        return self.out_proj(y.to(self.out_proj.weight.dtype))

    def _direction(self, direction: MambaDirection, u: Tensor, z: Tensor, present: Tensor | None, reverse: bool,
                   memo: dict | None = None) -> Tensor:
        if not reverse:
            return direction(u, z, present, self.block, self.chunk, memo)
        flip = None if present is None else present.flip(1)
        return direction(u.flip(1), z.flip(1), flip, self.block, self.chunk, memo).flip(1)

    def _run(self, direction: MambaDirection, u: Tensor, z: Tensor, present: Tensor | None, reverse: bool) -> Tensor:
        """One direction; with `recompute`, only its inputs (views of the input projection) are kept for the
        backward pass, which runs the direction again as mamba-ssm's fused `mamba_inner_fn` does — except the scan,
        whose states the backward pass recomputes itself (the memo carries the states entering each block)."""
        if self.recompute and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            memo: dict = {}
            return checkpoint(self._direction, direction, u, z, present, reverse, memo, use_reentrant=False)
        return self._direction(direction, u, z, present, reverse)


class MambaLayer(nn.Module):
    """Pre-norm residual block (RMSNorm, as Vim)."""

    def __init__(self, dim: int, **kw: Any) -> None:
        super().__init__()
        self.norm, self.mixer = nn.RMSNorm(dim, eps=1e-5), BiMamba(dim, **kw)

    def forward(self, x: Tensor, present: Tensor | None) -> Tensor:
        return x + self.mixer(self.norm(x), present)


class Attention(nn.Module):
    """Multi-head self-attention: `core.precision.attention` (fused SDPA), or softmax(QKᵀ)V materialised (as SSAST)."""

    def __init__(self, dim: int, heads: int, materialised: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.heads, self.materialised, self.dropout = heads, materialised, dropout

    def forward(self, x: Tensor, present: Tensor | None) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        keep = None if present is None else present[:, None, None, :]
        p = self.dropout if self.training else 0.0
        if self.materialised:
            att = (q @ k.transpose(-1, -2)) * (d // self.heads) ** -0.5
            if keep is not None:
                att = att.masked_fill(~keep, float("-inf"))
            out = F.dropout(att.softmax(-1), p) @ v
        else:
            out = attention(q, k, v, keep, p)     # fused; bf16 products on a CPU under autocast (1.51x)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class ViTLayer(nn.Module):
    """Pre-norm Transformer block (DeiT): LN, attention, LN, GELU MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, materialised: bool, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, materialised, dropout)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, present: Tensor | None) -> Tensor:
        x = x + self.attn(self.norm1(x), present)
        return x + self.mlp(self.norm2(x))


class TeraLayer(nn.TransformerEncoderLayer):
    """TERA's post-norm BERT layer: `nn.TransformerEncoderLayer` (same parameters and state-dict keys, so older
    checkpoints and exports load) whose self-attention goes through `core.precision.attention`. In training the
    stock layer calls PyTorch's fused CPU attention kernel, which runs slower in bf16 than in fp32 (its backward
    dominated the bf16 step); the core helper materialises bf16 products there and uses the fused kernel elsewhere."""

    def _sa_block(self, x: Tensor, attn_mask: Tensor | None, key_padding_mask: Tensor | None,
                  is_causal: bool = False) -> Tensor:
        """x (B, T, D), key_padding_mask (B, T): True or -inf on padding (the layer's forward turns a bool mask into
        0/-inf) -> attended (B, T, D), as `nn.MultiheadAttention`; anything else (additive biases, attn_mask) takes
        the stock path."""
        keep = None
        if key_padding_mask is not None:
            pad = key_padding_mask if key_padding_mask.dtype == torch.bool else torch.isneginf(key_padding_mask)
            if pad.dtype != key_padding_mask.dtype and not bool(((key_padding_mask == 0) | pad).all()):
                return super()._sa_block(x, attn_mask, key_padding_mask, is_causal)
            keep = ~pad[:, None, None, :]
        if attn_mask is not None or is_causal or not self.self_attn.batch_first:
            return super()._sa_block(x, attn_mask, key_padding_mask, is_causal)
        mha = self.self_attn
        b, t, d = x.shape
        q, k, v = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).view(
            b, t, 3, mha.num_heads, d // mha.num_heads).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v, keep, mha.dropout if self.training else 0.0)
        return self.dropout1(mha.out_proj(out.transpose(1, 2).reshape(b, t, d)))


def sinusoid(n: int, dim: int, device: torch.device) -> Tensor:
    """Transformer sinusoidal positions (n, dim), as TERA."""
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    out = torch.zeros(n, dim, device=device)
    out[:, 0::2], out[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq[: dim // 2])
    return out


class AudioEncoder(nn.Module):
    """fbank → tokens → clip embedding. `arch`: ssamba | ssast (patch tokens) | tera (frame tokens).

    forward(x): waveforms (B, S) at `features["sample_rate"]`, or raw (un-normalised) fbank (B, T, n_mels) -> (B, dim),
    the mean of the final tokens over the real part of each clip. Normalisation uses the carried mean/std.
    """

    def __init__(self, arch: str, n_mels: int = 128, clip_frames: int = 1024, dim: int = 192, depth: int = 24,
                 heads: int = 3, mlp_ratio: float = 4.0, patch_freq: int = 16, patch_time: int = 16,
                 cls_tokens: int = 1, d_state: int = 16, d_conv: int = 4, expand: int = 2, dropout: float = 0.0,
                 attention: str = "sdpa", scan_block: int = BLOCK, scan_chunk: int = CHUNK, pool: str = "mean",
                 pool_stats: str = "mean", pool_segments: int = 1, pool_layers: int = 1,
                 features: dict | None = None, mean: float = 0.0, std: float = 0.5) -> None:
        super().__init__()
        if arch not in ("ssamba", "ssast", "tera"):
            raise ValueError(f"unknown audio encoder {arch!r}")
        self.arch, self.n_mels, self.dim, self.features = arch, n_mels, dim, dict(features or {})
        self.pool = "mean" if arch == "tera" else pool
        # clip embedding (see `pool_tokens`): + std over time, time segments, the last `pool_layers` layers concatenated
        self.pool_stats, self.pool_segments, self.pool_layers = pool_stats, pool_segments, min(pool_layers, depth)
        self.register_buffer("norm_stats", torch.tensor([mean, std], dtype=torch.float32))
        if arch == "tera":
            self.pf, self.pt, self.grid_f, self.grid_t = n_mels, 1, 1, clip_frames
            self.embed = nn.Linear(n_mels, dim)
            self.embed_norm = nn.LayerNorm(dim)
            self.layers = nn.ModuleList(TeraLayer(dim, heads, int(dim * mlp_ratio), dropout, activation="gelu",
                                                  batch_first=True) for _ in range(depth))   # post-norm BERT, as TERA
            self.norm = nn.Identity()
            return
        self.pf, self.pt = patch_freq, patch_time
        self.grid_f, self.grid_t = n_mels // patch_freq, max(1, clip_frames // patch_time)
        self.embed = nn.Conv2d(1, dim, (patch_freq, patch_time), stride=(patch_freq, patch_time))
        self.mask_embed = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls = nn.Parameter(torch.zeros(1, cls_tokens, dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, cls_tokens, dim))
        self.pos = nn.Parameter(torch.zeros(1, self.grid_t, self.grid_f, dim))
        for p in (self.mask_embed, self.cls, self.cls_pos, self.pos):
            nn.init.trunc_normal_(p, std=0.02)
        if arch == "ssamba":
            self.layers = nn.ModuleList(MambaLayer(dim, d_state=d_state, d_conv=d_conv, expand=expand,
                                                   block=scan_block, chunk=scan_chunk) for _ in range(depth))
            self.norm: nn.Module = nn.RMSNorm(dim, eps=1e-5)
        else:
            self.layers = nn.ModuleList(ViTLayer(dim, heads, mlp_ratio, attention == "materialised", dropout)
                                        for _ in range(depth))
            self.norm = nn.LayerNorm(dim, eps=1e-6)

    # -- geometry -----------------------------------------------------------------------------------------------
    def pad(self, fbank: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
        """Pad (B, T, M) to a whole number of patches in time; valid (B, T') True on real frames."""
        if valid is None:
            valid = torch.ones(fbank.shape[:2], dtype=torch.bool, device=fbank.device)
        extra = -fbank.shape[1] % self.pt
        if extra:
            fbank, valid = F.pad(fbank, (0, 0, 0, extra)), F.pad(valid, (0, extra), value=False)
        return fbank[..., : self.grid_f * self.pf], valid

    def token_validity(self, valid: Tensor) -> tuple[Tensor, Tensor]:
        """(present, full) per token (B, N): a token with any real frame is seen; one with only real frames may be
        masked and scored."""
        v = valid.view(valid.shape[0], -1, self.pt)
        rep = lambda x: x.repeat_interleave(self.grid_f, dim=1)  # noqa: E731
        return rep(v.any(-1)), rep(v.all(-1))

    def patches(self, fbank: Tensor) -> Tensor:
        """(B, T, M) padded -> (B, N, pf·pt) patch values in token order (a frame per token for tera)."""
        b, t, _ = fbank.shape
        x = fbank.reshape(b, t // self.pt, self.pt, self.grid_f, self.pf)
        return x.permute(0, 1, 3, 4, 2).reshape(b, (t // self.pt) * self.grid_f, self.pf * self.pt)

    def unpatch(self, tokens: Tensor, t: int) -> Tensor:
        """Inverse of `patches`: (B, N, pf·pt) -> (B, T, M)."""
        b = tokens.shape[0]
        x = tokens.reshape(b, t // self.pt, self.grid_f, self.pf, self.pt)
        return x.permute(0, 1, 4, 2, 3).reshape(b, t, self.grid_f * self.pf)

    def positions(self, steps: int) -> Tensor:
        """Learned (1, steps·F', D): the first `steps` columns, or the grid stretched along time when longer."""
        pos = self.pos
        if steps > self.grid_t:
            pos = F.interpolate(pos.permute(0, 2, 3, 1).flatten(1, 2), size=steps, mode="linear",
                                align_corners=False).view(1, self.grid_f, self.dim, steps).permute(0, 3, 1, 2)
        return pos[:, :steps].reshape(1, steps * self.grid_f, self.dim)

    # -- encoding -----------------------------------------------------------------------------------------------
    def tokens(self, fbank: Tensor, valid: Tensor | None = None, masked: Tensor | None = None) -> Tensor:
        """Normalised fbank (B, T, M) -> final tokens (B, N, D) (patches, or frames for tera); `masked` (B, N) bool
        replaces those patch embeddings with the learned mask embedding (not used by tera)."""
        fbank, valid = self.pad(fbank, valid)
        return self._encode(fbank, valid, masked)[0]

    def _encode(self, fbank: Tensor, valid: Tensor, masked: Tensor | None, layers: int = 1) -> tuple[Tensor, Tensor]:
        """(tokens (B, N, D·layers), present (B, N)) for a padded fbank: the outputs of the last `layers` layers
        (each through the final norm for the patch encoders; TERA's post-norm layers end normalised) side by side."""
        keep = range(len(self.layers) - layers, len(self.layers))
        outs = []
        if self.arch == "tera":
            x = self.embed_norm(self.embed(fbank) + sinusoid(fbank.shape[1], self.dim, fbank.device).to(fbank.dtype))
            pad_mask = ~valid
            for i, layer in enumerate(self.layers):
                x = layer(x, src_key_padding_mask=pad_mask if bool(pad_mask.any()) else None)
                if i in keep:
                    outs.append(x)
            return torch.cat(outs, -1), valid
        present, _ = self.token_validity(valid)
        x = self.embed(fbank.transpose(1, 2).unsqueeze(1))                   # (B, D, F', T')
        x = x.permute(0, 3, 2, 1).flatten(1, 2).float()                      # time-major (B, T'·F', D), fp32 residual
        if masked is not None:
            x = torch.where(masked.unsqueeze(-1), self.mask_embed.to(x.dtype), x)
        x = x + self.positions(fbank.shape[1] // self.pt).to(x.dtype)
        n_cls = self.cls.shape[1]
        x = torch.cat([(self.cls + self.cls_pos).expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        seen = torch.cat([present.new_ones(x.shape[0], n_cls), present], dim=1)
        seen_arg = None if bool(seen.all()) else seen
        for i, layer in enumerate(self.layers):
            x = layer(x, seen_arg)
            if i in keep:
                outs.append(self.norm(x)[:, n_cls:])
        return torch.cat(outs, -1), present

    def embed_fbank(self, fbank: Tensor, valid: Tensor | None = None) -> Tensor:
        """Normalised fbank (B, T, M), valid (B, T) -> the clip embedding (B, E) over the tokens holding real frames,
        as set by pool / pool_stats / pool_segments / pool_layers (see `pool_tokens`); the defaults give the mean
        of the final tokens (B, D)."""
        fbank, valid = self.pad(fbank, valid)
        x, present = self._encode(fbank, valid, None, self.pool_layers)
        return pool_tokens(x, present, self.grid_f, self.pool == "freq", self.pool_stats == "meanstd",
                           self.pool_segments)

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """Waveforms (B, S) or raw fbank (B, T, n_mels) -> the clip embedding (B, E); E = D by default."""
        from sslkit.domains.audio.features import AudioData, compute_fbank, normalise

        if x.dim() == 2:
            if not self.features:
                raise ValueError("this encoder carries no feature settings: give fbank (B, T, n_mels)")
            cfg = AudioData(**{k: v for k, v in self.features.items() if k in AudioData.model_fields})
            x = torch.stack([compute_fbank(w.detach().float().cpu(), cfg) for w in x]).to(self.norm_stats.device)
        if x.dim() != 3 or x.shape[-1] != self.n_mels:
            raise ValueError(f"expected waveforms (B, S) or fbank (B, T, {self.n_mels}), got {tuple(x.shape)}")
        mean, std = self.norm_stats.tolist()
        return self.embed_fbank(normalise(x.float(), mean, std), valid)


def pool_tokens(x: Tensor, present: Tensor, grid_f: int, freq: bool, std: bool, segments: int) -> Tensor:
    """Time-major tokens x (B, T'·F', C) with present (B, T'·F') -> clip embeddings over the real time steps.

    freq: keep the F' frequency rows apart (rows concatenated; MSM-MAE / M2D) instead of averaging them;
    segments: the real steps cut into `segments` equal parts in time, one mean per part (a word's beginning, middle
    and end apart: a mean over the whole clip is the same for a word said backwards); a clip shorter than
    `segments` steps uses its whole mean for the empty parts; std: the standard deviation over time appended
    (x-vector statistics pooling). Width: (segments + std) · (F' if freq else 1) · C."""
    b, n, c = x.shape
    x = x.view(b, n // grid_f, grid_f, c)
    if not freq:
        x = x.mean(2, keepdim=True)
    w = present.view(b, n // grid_f, grid_f)[..., 0].to(x.dtype)                     # (B, T') real steps
    count = w.sum(1, keepdim=True).clamp_min(1.0)
    part = ((w.cumsum(1) - 1) * segments / count).floor().clamp(0, segments - 1)      # segment of each real step
    sw = (part.unsqueeze(1) == torch.arange(segments, device=x.device).view(1, -1, 1)).to(x.dtype) * w.unsqueeze(1)
    sw = torch.where(sw.sum(2, keepdim=True) == 0, w.unsqueeze(1), sw)                # (B, S, T')
    sw = sw / sw.sum(2, keepdim=True).clamp_min(1.0)
    out = [torch.einsum("bst,btfc->bsfc", sw, x).flatten(1)]
    if std:
        wt = w / count
        mu = torch.einsum("bt,btfc->bfc", wt, x)
        var = torch.einsum("bt,btfc->bfc", wt, x * x) - mu * mu
        out.append(var.clamp_min(0.0).sqrt().flatten(1))
    return torch.cat(out, 1) if len(out) > 1 else out[0]


def _builder(arch: str) -> Callable[..., AudioEncoder]:
    def build(**kwargs: Any) -> AudioEncoder:
        return AudioEncoder(arch, **kwargs)

    build.__name__ = f"{arch}_encoder"
    return build


ENCODERS: dict[str, Callable[..., nn.Module]] = {arch: _builder(arch) for arch in ("ssamba", "ssast", "tera")}
