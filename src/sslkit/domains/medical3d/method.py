"""The two SSL objectives: Alice-style cross-volume distillation and SwinUNETR-SSL.

Alice (Jiang et al., ICCV'23) without its landmark model: query/anchor crops come from
*different* volumes at matching normalised positions (`transforms.matched_centers`).
The student sees SimMIM-masked crops, an EMA teacher the full ones. Losses:
λ1 · DINO CE between student and teacher class tokens across the two views,
λ2 · DINO CE on patch tokens aligned by a cross-attention module (CASA),
λ3 · MSE reconstruction of the masked voxels.

SwinUNETR-SSL (Tang et al., CVPR'22): rotation CE + NT-Xent between two augmented
copies + L1 inpainting reconstruction, on MONAI's Swin ViT.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslkit.core.ema import ema_update, make_target, momentum_schedule
from sslkit.core.export import encoder_spec
from sslkit.core.heads import DINOHead
from sslkit.core.losses.dino import DINOLoss
from sslkit.core.losses.nt_xent import nt_xent
from sslkit.domains.medical3d.model import SIZES, ConvEncoder3d, SwinEncoder3d, _norm
from sslkit.domains.medical3d.recipe import Medical3DRecipe, ModelConfig
from sslkit.domains.medical3d.segmentation import UNetDecoder
from sslkit.domains.medical3d.transforms import (cell_normalise, column_mask, inpainting_cutout, mask_cells, rotate,
                                                 seeded_noise)

RECIPE_SCHEMA = Medical3DRecipe


def build_encoder(model: ModelConfig) -> tuple[nn.Module, dict]:
    """(encoder, export spec) from the recipe's model section."""
    channels = {"in_channels": model.in_channels} if model.in_channels > 1 else {}
    if model.encoder == "swin":
        kw = {"feature_size": model.feature_size, "depths": model.depths, "num_heads": model.num_heads,
              "window_size": model.window_size, **channels}
        return SwinEncoder3d(**kw), encoder_spec("medical3d", "swin", **kw)
    kw = {"widths": SIZES[model.size], "blocks": model.blocks, **channels}
    return ConvEncoder3d(**kw), encoder_spec("medical3d", "conv3d", **kw)


def tokens(fmap: Tensor) -> Tensor:
    """(B, C, x, y, z) -> (B, x·y·z, C)."""
    return fmap.flatten(2).transpose(1, 2)


class VoxelShuffleHead(nn.Module):
    """SimMIM-style linear decoder: (B, D, x, y, z) at stride s -> (B, channels, x·s, y·s, z·s)."""

    def __init__(self, in_dim: int, stride: int, channels: int = 1) -> None:
        super().__init__()
        self.s, self.c = stride, channels
        self.proj = nn.Conv3d(in_dim, channels * stride ** 3, 1)

    def forward(self, f: Tensor) -> Tensor:
        b, _, x, y, z = f.shape
        s, c = self.s, self.c
        v = self.proj(f).view(b, c, s, s, s, x, y, z).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return v.reshape(b, c, x * s, y * s, z * s)


class CASA(nn.Module):
    """Cross-attention alignment: queries (B, N, C) attend to context (B, M, C) -> aligned (B, N, C)."""

    def __init__(self, dim: int, heads: int, ffn: int | None = None) -> None:
        super().__init__()
        heads = max(1, min(heads, dim // 8)) if dim % heads else heads
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, ffn or 4 * dim), nn.GELU(), nn.Linear(ffn or 4 * dim, dim))

    def forward(self, q: Tensor, kv: Tensor) -> Tensor:
        kv = self.norm_kv(kv)
        x = q + self.attn(self.norm_q(q), kv, kv, need_weights=False)[0]
        return x + self.ffn(x)


class Alice(nn.Module):
    """forward({"query", "anchor"}: (B, C, R, R, R)) -> (loss, metrics); C = model.in_channels, masked alike."""

    loss_terms = ("global", "patch", "recon")

    def __init__(self, recipe: Medical3DRecipe) -> None:
        super().__init__()
        self.cfg, self.roi = recipe.alice, recipe.data.roi
        self.encoder, self.spec = build_encoder(recipe.model)
        if not isinstance(self.encoder, ConvEncoder3d):
            raise ValueError("alice uses the conv3d encoder (set model.encoder=conv3d)")
        if self.roi % self.encoder.stride:
            from sslkit.core.errors import UserError

            raise UserError(f"data.roi={self.roi} must be a multiple of the encoder stride {self.encoder.stride} — "
                            f"e.g. --set data.roi={max(1, round(self.roi / self.encoder.stride)) * self.encoder.stride}")
        c, a = self.encoder.out_dim, self.cfg
        self.global_head = DINOHead(c, a.out_dim, a.head_hidden, a.head_bottleneck)
        self.patch_head = DINOHead(c, a.patch_out_dim, a.head_hidden, a.head_bottleneck)
        self.casa = CASA(c, a.casa_heads)
        ch = recipe.model.in_channels
        if a.recon_decoder == "unet":
            self.recon: nn.Module = UNetDecoder(self.encoder.channels, ch, recipe.finetune.decoder_channels, ch)
        else:
            self.recon = VoxelShuffleHead(c, self.encoder.stride, ch)
        self.mask_token = nn.Parameter(torch.zeros(1))
        self.teacher = nn.ModuleDict({k: make_target(getattr(self, k)) for k in ("encoder", "global_head", "patch_head", "casa")})
        kw = {"student_temp": a.student_temp, "teacher_temp": a.teacher_temp, "warmup_teacher_temp": a.warmup_teacher_temp,
              "warmup_teacher_temp_steps": a.warmup_teacher_temp_steps, "center_momentum": a.center_momentum, "centering": a.centering}
        self.global_loss = DINOLoss(a.out_dim, **kw)
        self.patch_loss = DINOLoss(a.patch_out_dim, **kw)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def encoder_spec(self) -> dict:
        return self.spec

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        q, k = batch["query"], batch["anchor"]
        b, a = q.shape[0], self.cfg
        views = torch.cat([q, k])                                                  # (2B, C, R, R, R)
        noise = None
        if "mask_seed" in batch:   # per item (CrossVolumePairs): the same masks on any number of processes
            noise = seeded_noise(batch["mask_seed"], 2, mask_cells(self.roi, a.mask_patch, a.mask_columns), q.device)
        mask = column_mask(2 * b, self.roi, a.mask_patch, a.mask_ratio, a.mask_columns, q.device, noise)
        masked = views * (1 - mask) + self.mask_token * mask
        pyramid = self.encoder.pyramid(masked)
        fs = pyramid[-1]                                                           # (2B, C, r, r, r)
        with torch.no_grad():
            ft = self.teacher["encoder"].pyramid(views)[-1]
        step = int(self.step)
        # global: student(query) <-> teacher(anchor) and student(anchor) <-> teacher(query)
        gs = self.global_head(fs.mean(dim=(2, 3, 4))).float()
        with torch.no_grad():
            gt = self.teacher["global_head"](ft.mean(dim=(2, 3, 4))).float()
        l_global = self.global_loss([gs[:b], gs[b:]], [gt[:b], gt[b:]], step=step, pairs=[(1, 0), (0, 1)])
        # patches: each view's tokens attend to the other view's tokens (cross-volume alignment)
        ts, tt = tokens(fs), tokens(ft)
        swap = torch.cat([ts[b:], ts[:b]])
        ps = self.patch_head(self.casa(ts, swap)).float()                          # (2B, N, K)
        with torch.no_grad():
            pt = self.teacher["patch_head"](self.teacher["casa"](tt, torch.cat([tt[b:], tt[:b]]))).float()
        l_patch = self.patch_loss(ps.flatten(0, 1), pt.flatten(0, 1), step=step, pairs=[(0, 0)])
        # reconstruction of the masked voxels only
        if a.recon_decoder == "unet" and q.device.type == "cpu":  # fp32: bf16 conv3d backward on CPU overflowed
            with torch.autocast("cpu", enabled=False):
                rec = self.recon([f.float() for f in pyramid], masked.float())
        elif a.recon_decoder == "unet":
            rec = self.recon(pyramid, masked).float()
        else:
            rec = self.recon(fs).float()
        target = views.float() if a.recon_target == "raw" else cell_normalise(views.float(), a.mask_patch)
        err = (rec - target) ** 2 * mask                                          # the same voxels in every channel
        l_rec = err.sum() / (mask.sum() * views.shape[1]).clamp_min(1.0)
        loss = a.global_weight * l_global + a.patch_weight * l_patch + a.recon_weight * l_rec
        tp = torch.cat(self.global_loss.last_targets)      # the centred, sharpened targets the student saw
        ent = -(tp * tp.clamp_min(1e-12).log()).sum(-1).mean()
        pp = torch.cat(self.patch_loss.last_targets)
        used = torch.zeros(pp.shape[-1], device=pp.device).index_fill_(0, pp.argmax(-1), 1.0).sum()  # no host sync
        return loss, {"global": l_global.detach(), "patch": l_patch.detach(), "recon": l_rec.detach(),
                      "teacher_entropy": ent.detach(), "patch_prototypes_used": used}

    @torch.no_grad()
    def after_step(self, step: int, total: int) -> None:
        """EMA teacher update (momentum ema_start -> ema_end, cosine) and the step counter for temperatures."""
        self.step.fill_(step)
        m = momentum_schedule(step, total, self.cfg.ema_start, self.cfg.ema_end)
        for name, target in self.teacher.items():
            ema_update(target, getattr(self, name), m)


class SwinSSL(nn.Module):
    """forward({"image": (B, C, R, R, R)}) -> (loss, metrics); rotation + contrastive + inpainting heads."""

    loss_terms = ("rot", "contrast", "recon")

    def __init__(self, recipe: Medical3DRecipe) -> None:
        super().__init__()
        self.cfg = recipe.swin
        self.encoder, self.spec = build_encoder(recipe.model)
        if recipe.data.roi % self.encoder.stride:
            from sslkit.core.errors import UserError

            raise UserError(f"data.roi={recipe.data.roi} must be a multiple of {self.encoder.stride} for this encoder — "
                            f"e.g. --set data.roi={max(1, round(recipe.data.roi / self.encoder.stride)) * self.encoder.stride}")
        c = self.encoder.out_dim
        self.rotation_head = nn.Linear(c, 4)
        self.contrastive_head = nn.Linear(c, self.cfg.contrast_dim)
        self.recon = _ConvDecoder(c, self.encoder.stride, recipe.model.in_channels)

    def encoder_spec(self) -> dict:
        return self.spec

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        x = batch["image"]
        b = x.shape[0]
        x1, r1 = rotate(x)
        x2, r2 = rotate(x)
        target = torch.cat([x1, x2])
        cut = torch.cat([inpainting_cutout(x1, self.cfg.cutout_max_frac, self.cfg.cutout_max_side),
                         inpainting_cutout(x2, self.cfg.cutout_max_frac, self.cfg.cutout_max_side)])
        f = self.encoder.pyramid(cut)[-1]                                          # (2B, C, x, y, z)
        t = tokens(f)
        rot_logits = self.rotation_head(t[:, 0]).float()
        z = self.contrastive_head(t[:, min(1, t.shape[1] - 1)]).float()
        rot = torch.cat([r1, r2])
        l_rot = F.cross_entropy(rot_logits, rot)
        l_con = nt_xent(z[:b], z[b:], self.cfg.temperature)
        l_rec = F.l1_loss(self.recon(f).float(), target.float())
        c = self.cfg
        loss = c.rot_weight * l_rot + c.contrast_weight * l_con + c.recon_weight * l_rec
        acc = (rot_logits.argmax(-1) == rot).float().mean()
        return loss, {"rot": l_rot.detach(), "contrast": l_con.detach(), "recon": l_rec.detach(), "rot_acc": acc.detach()}


class _ConvDecoder(nn.Module):
    """SwinUNETR-SSL reconstruction decoder: conv + trilinear ×2 stages back to the input size -> (B, channels, ...)."""

    def __init__(self, c: int, stride: int, channels: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        while stride > 1:
            out = max(c // 2, 8)
            layers += [nn.Conv3d(c, out, 3, padding=1), _norm(out), nn.LeakyReLU(),
                       nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False)]
            c, stride = out, stride // 2
        layers.append(nn.Conv3d(c, channels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, f: Tensor) -> Tensor:
        return self.net(f)


METHODS = {"alice": Alice, "swinunetr-ssl": SwinSSL}


def build_method(recipe: Medical3DRecipe) -> nn.Module:
    return METHODS[recipe.method](recipe)
