"""The pathology recipe and its two SSL objectives: DINO (the card's default) and SimCLR (the baseline).

DINO (Caron et al. 2021, arXiv:2104.14294): a student ViT sees 2 global + N local crops of a tile, an EMA teacher
the 2 global ones; the student matches the teacher's centred, sharpened distribution over K prototypes for every
(teacher view, other student view) pair. Teacher temperature warms up, EMA momentum follows a cosine 0.996 -> 1, and
the prototype layer is frozen for the first steps (as in DINO, for stability).
SimCLR (Chen et al. 2020, arXiv:2002.05709): NT-Xent between two augmented crops through an MLP projector.
Views are built per item in the DataLoader workers (transforms.py); `forward` draws no random numbers.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
from pydantic import Field, PositiveInt, model_validator
from torch import Tensor, nn

from sslkit.core.recipes import Recipe, Section


class PathologyData(Section):
    """Which tiles to read: size, magnification(s), tissue threshold."""

    tile_px: PositiveInt = 224                                   # output tile side in pixels (card: 224)
    mpp: list[float] = Field(default_factory=lambda: [0.5], min_length=1)   # µm/px; several = multi-magnification
    tile_um: Optional[float] = Field(None, gt=0)                 # tile side in µm for the grid (None: tile_px·mpp[0])
    min_tissue: float = Field(0.5, ge=0.0, le=1.0)               # keep tiles with at least this tissue fraction
    overlap: float = Field(0.0, ge=0.0, lt=1.0)                  # grid overlap, fraction of the tile

    @model_validator(mode="after")
    def _positive_mpp(self) -> "PathologyData":
        if any(m <= 0 for m in self.mpp):
            raise ValueError("every data.mpp value must be > 0 (µm per pixel)")
        return self


class PathologyModel(Section):
    """The timm ViT (model.ViTEncoder); None keeps the architecture's own value."""

    arch: str = "vit_small_patch16_224"
    patch_size: Optional[PositiveInt] = None
    embed_dim: Optional[PositiveInt] = None
    depth: Optional[PositiveInt] = None
    num_heads: Optional[PositiveInt] = None
    pool: Literal["cls", "cls+mean"] = "cls"
    drop_path_rate: float = Field(0.0, ge=0.0, lt=1.0)


class PathologyAug(Section):
    """Views: crops, dihedral symmetries, stain and colour jitter, blur (no solarisation)."""

    global_px: PositiveInt = 224
    local_px: PositiveInt = 96
    n_local: int = Field(8, ge=0)
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    simclr_scale: tuple[float, float] = (0.2, 1.0)
    rot90: bool = True
    flip: bool = True
    stain: Literal["hed", "lab", "hed+lab", "none"] = "hed"
    hed_sigma: float = Field(0.05, ge=0.0, le=1.0)               # scale jitter per stain channel (card ≈ ±0.05)
    hed_bias: Optional[float] = Field(None, ge=0.0, le=1.0)      # shift jitter (None: hed_sigma)
    lab_sigma: float = Field(0.05, ge=0.0, le=1.0)
    color_p: float = Field(0.8, ge=0.0, le=1.0)
    brightness: float = Field(0.1, ge=0.0, le=1.0)
    contrast: float = Field(0.1, ge=0.0, le=1.0)
    saturation: float = Field(0.1, ge=0.0, le=1.0)
    hue: float = Field(0.02, ge=0.0, le=0.5)
    blur_p: float = Field(0.2, ge=0.0, le=1.0)                   # local crops (and SimCLR views)
    global_blur_p: tuple[float, float] = (0.5, 0.1)              # the two global crops, as DINO's asymmetric views
    blur_sigma: tuple[float, float] = (0.1, 1.5)
    mask_prob: float = Field(0.5, ge=0.0, le=1.0)                # iBOT/DINOv2: share of global crops masked (iBOT)
    mask_ratio: tuple[float, float] = (0.1, 0.5)                 # iBOT/DINOv2: masked share of a crop's patches

    @model_validator(mode="after")
    def _mask_ratio(self) -> "PathologyAug":
        lo, hi = self.mask_ratio
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError("aug.mask_ratio must be [low, high] with 0 <= low <= high <= 1, got "
                             f"{list(self.mask_ratio)}")
        return self


class PathologyLoss(Section):
    """DINO head/loss/teacher settings and SimCLR projector/temperature."""

    out_dim: PositiveInt = 65536
    head_hidden: PositiveInt = 2048
    head_bottleneck: PositiveInt = 256
    norm_last_layer: bool = True
    head_bn: bool = False                                        # DINO's use_bn_in_head: BatchNorm after hidden layers
    student_temp: float = Field(0.1, gt=0.0)
    teacher_temp: float = Field(0.04, gt=0.0)
    warmup_teacher_temp: float = Field(0.04, gt=0.0)
    warmup_teacher_temp_steps: int = Field(0, ge=0)
    center_momentum: float = Field(0.9, ge=0.0, le=1.0)
    centering: Literal["center", "sinkhorn"] = "center"
    ema_start: float = Field(0.996, ge=0.0, le=1.0)
    ema_end: float = Field(1.0, ge=0.0, le=1.0)
    freeze_last_layer_steps: int = Field(0, ge=0)
    koleo_weight: float = Field(0.0, ge=0.0)                     # DINOv2: 0.1 (KoLeo on student CLS tokens); 0 = off
    ibot_weight: float = Field(0.0, ge=0.0)                      # iBOT/DINOv2: 1.0 (masked patch tokens); 0 = off
    proj_hidden: PositiveInt = 2048                              # SimCLR projector
    proj_dim: PositiveInt = 128
    temperature: float = Field(0.1, gt=0.0)                      # SimCLR NT-Xent


class PathologyRecipe(Recipe):
    domain: Literal["pathology"] = "pathology"
    method: Literal["dino", "simclr"] = "dino"
    data: PathologyData = Field(default_factory=PathologyData)
    model: PathologyModel = Field(default_factory=PathologyModel)
    aug: PathologyAug = Field(default_factory=PathologyAug)
    loss: PathologyLoss = Field(default_factory=PathologyLoss)

    @model_validator(mode="after")
    def _dinov2_terms(self) -> "PathologyRecipe":
        if self.method != "dino" and (self.loss.koleo_weight or self.loss.ibot_weight):
            raise ValueError("loss.koleo_weight and loss.ibot_weight are DINO terms: set them to 0 with method "
                             f"{self.method!r}, or use method: dino")
        if self.loss.ibot_weight and not self.aug.mask_prob:
            raise ValueError("loss.ibot_weight > 0 needs masked crops: set aug.mask_prob > 0 (iBOT: 0.5)")
        return self


RECIPE_SCHEMA = PathologyRecipe


def build_encoder(recipe: PathologyRecipe) -> tuple[nn.Module, dict]:
    """(encoder, export spec) from the recipe: the ViT is built for the recipe's global crop size."""
    from sslkit.core.errors import UserError
    from sslkit.core.export import encoder_spec
    from sslkit.domains.pathology.model import ViTEncoder

    m = recipe.model
    kw = {"arch": m.arch, "img_size": recipe.aug.global_px, "patch_size": m.patch_size, "embed_dim": m.embed_dim,
          "depth": m.depth, "num_heads": m.num_heads, "pool": m.pool}
    try:
        encoder = ViTEncoder(**kw, drop_path_rate=m.drop_path_rate)
    except RuntimeError as exc:   # timm: unknown model name
        raise UserError(f"model.arch={m.arch!r}: {exc} — use a timm ViT name such as vit_small_patch16_224") from None
    smallest = min(recipe.aug.global_px, recipe.aug.local_px if recipe.method == "dino" and recipe.aug.n_local else 10**9,
                   recipe.data.tile_px)
    if smallest < encoder.patch_size:
        raise UserError(f"the smallest crop ({smallest} px) is smaller than the ViT patch ({encoder.patch_size} px) — "
                        "raise data.tile_px / aug.local_px or lower model.patch_size")
    return encoder, encoder_spec("pathology", "vit", **kw)


# The weights `pretrain` exports and `embed`/`evaluate`/`mil`/`export` read, per method: (which, key prefix in the
# checkpoint's model state). DINO's authors evaluate and release the EMA teacher, not the student (Caron et al. 2021,
# "the teacher has better performance than the student"); on GlaS the teacher read out 0.781 vs the student's 0.773
# (dev folds; docs/pathology.md, "The EMA teacher"). SimCLR has one network.
EVAL_WEIGHTS = {"dino": ("teacher", "teacher.encoder."), "simclr": ("student", "encoder.")}


def tile_meta(recipe: PathologyRecipe) -> dict:
    """What embed needs besides the weights: the tile size and magnification the encoder was trained on."""
    d = recipe.data
    return {"tile_px": d.tile_px, "mpp": d.mpp, "tile_um": d.tile_um if d.tile_um else d.tile_px * d.mpp[0],
            "input_px": recipe.aug.global_px, "method": recipe.method, "weights": EVAL_WEIGHTS[recipe.method][0]}


def _view_major(v: Tensor) -> Tensor:
    """(B, V, 3, H, W) -> (V·B, 3, H, W), view 0 of every item first: chunks of B are views."""
    return v.transpose(0, 1).flatten(0, 1)


class DINO(nn.Module):
    """forward({"global": uint8 (B, 2, 3, G, G), "local": uint8 (B, N, 3, L, L)[, "mask_seed": int64 (B,)]})
    -> (loss, metrics).

    DINOv2's two additions, each off at weight 0 (then nothing of it is built and the run is DINO's, bit for bit):
    KoLeo (`loss.koleo_weight`) on the student's CLS token of each global crop, summed over the two crops as DINOv2;
    iBOT (`loss.ibot_weight`): the student's global crops get masked patches (`aug.mask_prob`, `aug.mask_ratio`;
    masks from the item's `mask_seed`), the teacher sees them whole, and a separate patch head matches the teacher's
    patch distribution at the masked positions (core IBOTPatchLoss, DINO's temperatures, a centre of its own).
    The patch head is separate (DINOv2's choice) because the DINO head reads the pooled feature (CLS ⊕ mean patch,
    2·width in dino-tiny) while a patch token is width wide; it is built like the DINO head and sees only the masked
    tokens (as DINOv2), a few per crop, so it adds little compute.
    """

    loss_terms = ()

    def __init__(self, recipe: PathologyRecipe) -> None:
        super().__init__()
        from sslkit.core.ema import make_target
        from sslkit.core.heads import DINOHead
        from sslkit.core.losses.dino import DINOLoss

        c = self.cfg = recipe.loss
        self.aug = recipe.aug
        self.encoder, self.spec = build_encoder(recipe)
        self.head = DINOHead(self.encoder.out_dim, c.out_dim, c.head_hidden, c.head_bottleneck,
                             norm_last_layer=c.norm_last_layer, use_bn=c.head_bn)
        self.teacher = nn.ModuleDict({"encoder": make_target(self.encoder), "head": make_target(self.head)})
        self.loss = DINOLoss(c.out_dim, c.student_temp, c.teacher_temp, c.warmup_teacher_temp,
                             c.warmup_teacher_temp_steps, c.center_momentum, c.centering)
        if c.koleo_weight:
            from sslkit.core.losses.koleo import KoLeoLoss

            self.koleo = KoLeoLoss()
        if c.ibot_weight:
            from sslkit.core.losses.ibot import IBOTPatchLoss

            self.patch_head = DINOHead(self.encoder.width, c.out_dim, c.head_hidden, c.head_bottleneck,
                                       norm_last_layer=c.norm_last_layer, use_bn=c.head_bn)
            self.mask_token = nn.Parameter(torch.zeros(self.encoder.width))   # iBOT/DINOv2: a learned token, zeros
            self.teacher["patch_head"] = make_target(self.patch_head)
            self.ibot_loss = IBOTPatchLoss(c.out_dim, c.student_temp, c.teacher_temp, c.warmup_teacher_temp,
                                           c.warmup_teacher_temp_steps, c.center_momentum, c.centering)
        if c.koleo_weight or c.ibot_weight:
            self.loss_terms = ("dino", *(("koleo",) if c.koleo_weight else ()), *(("ibot",) if c.ibot_weight else ()))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        heads = [self.head] + ([self.patch_head] if c.ibot_weight else [])
        for p in (p for h in heads for p in h.last_layer.parameters()):   # DINO: no prototype updates at first
            if p.requires_grad:
                p.register_hook(self._freeze_last_layer)

    def _freeze_last_layer(self, grad: Tensor) -> Tensor:
        return torch.zeros_like(grad) if int(self.step) < self.cfg.freeze_last_layer_steps else grad

    def encoder_spec(self) -> dict:
        return self.spec

    def eval_encoder(self) -> nn.Module:
        """The encoder to export and read out: the EMA teacher's (EVAL_WEIGHTS)."""
        return self.teacher["encoder"]

    def _masks(self, batch: dict[str, Tensor], px: int, device: torch.device) -> Tensor:
        """bool (2·B, N) iBOT masks of the global crops, view-major like the crops."""
        from sslkit.domains.pathology.transforms import patch_masks

        if "mask_seed" not in batch:
            raise ValueError("loss.ibot_weight > 0 needs the views' mask seeds: build_views(..., masks=True)")
        return patch_masks(batch["mask_seed"].cpu(), 2, self.encoder.n_patches(px), self.aug.mask_prob,
                           tuple(self.aug.mask_ratio)).to(device)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        c, step = self.cfg, int(self.step)
        g = batch["global"]
        b = g.shape[0]
        gx = self.encoder.preprocess(_view_major(g))
        mask = self._masks(batch, g.shape[-1], gx.device) if c.ibot_weight else None
        tokens = self.encoder.tokens(gx, mask, self.mask_token if c.ibot_weight else None)
        student = list(self.head(self.encoder.pool_tokens(tokens)).float().split(b))
        if "local" in batch:
            lx = self.encoder.preprocess(_view_major(batch["local"]))
            student += list(self.head(self.encoder(lx)).float().split(b))
        with torch.no_grad():
            t_tokens = self.teacher["encoder"].tokens(gx)
            teacher = list(self.teacher["head"](self.teacher["encoder"].pool_tokens(t_tokens)).float().split(b))
        loss = self.loss(student, teacher, step=step)
        metrics = {"teacher_entropy": _entropy(torch.cat(self.loss.last_targets)),
                   "teacher_temp": torch.tensor(self.loss.teacher_temperature(step))}
        if c.koleo_weight or c.ibot_weight:
            metrics["dino"] = loss.detach()
        if c.koleo_weight:
            kl = sum(self.koleo(cls) for cls in tokens[:, 0].float().split(b))
            loss = loss + c.koleo_weight * kl
            metrics["koleo"] = kl.detach()
        if c.ibot_weight:
            s_rows = self.patch_head(self.encoder.patch_tokens(tokens)[mask]).float()
            with torch.no_grad():
                t_rows = self.teacher["patch_head"](self.teacher["encoder"].patch_tokens(t_tokens)[mask]).float()
            ib = self.ibot_loss(s_rows, t_rows, mask, step=step)
            loss = loss + c.ibot_weight * ib
            metrics["ibot"] = ib.detach()
            metrics["ibot_teacher_entropy"] = _entropy(self.ibot_loss.last_targets[0])
            metrics["masked_share"] = mask.float().mean()
        return loss, metrics

    @torch.no_grad()
    def after_step(self, step: int, total: int) -> None:
        """EMA teacher (cosine ema_start -> ema_end) and the step counter for temperatures and the frozen layer."""
        from sslkit.core.ema import ema_update, momentum_schedule

        self.step.fill_(step)
        m = momentum_schedule(step, total, self.cfg.ema_start, self.cfg.ema_end)
        ema_update(self.teacher["encoder"], self.encoder, m)
        ema_update(self.teacher["head"], self.head, m)
        if self.cfg.ibot_weight:
            ema_update(self.teacher["patch_head"], self.patch_head, m)


def _entropy(probs: Tensor) -> Tensor:
    """Mean entropy (nats) of the rows of (M, K) probabilities; 0 for no rows."""
    if probs.shape[0] == 0:
        return probs.new_zeros(())
    return (-(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()).detach()


class SimCLR(nn.Module):
    """forward({"views": uint8 (B, 2, 3, G, G)}) -> (loss, metrics); negatives gathered across ranks."""

    loss_terms = ()

    def __init__(self, recipe: PathologyRecipe) -> None:
        super().__init__()
        from sslkit.core.heads import ProjectionHead
        from sslkit.core.losses.nt_xent import NTXentLoss

        c = recipe.loss
        self.encoder, self.spec = build_encoder(recipe)
        self.projector = ProjectionHead(self.encoder.out_dim, c.proj_hidden, c.proj_dim, num_layers=2)
        self.loss = NTXentLoss(c.temperature, gather_distributed=True)

    def encoder_spec(self) -> dict:
        return self.spec

    def eval_encoder(self) -> nn.Module:
        return self.encoder

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        v = batch["views"]
        b = v.shape[0]
        z = self.projector(self.encoder(self.encoder.preprocess(_view_major(v)))).float()
        z0, z1 = z[:b], z[b:]
        loss = self.loss(z0, z1)
        with torch.no_grad():
            sim = nn.functional.normalize(z0, dim=1) @ nn.functional.normalize(z1, dim=1).T
            top1 = (sim.argmax(1) == torch.arange(b, device=z.device)).float().mean()
        return loss, {"pair_top1": top1}


METHODS = {"dino": DINO, "simclr": SimCLR}


def build_method(recipe: PathologyRecipe) -> nn.Module:
    return METHODS[recipe.method](recipe)


def read_tiles(inputs: list, data: PathologyData, slide_mpp: float | None, *, all_mpps: bool = True):  # noqa: ANN201
    """The tile rows of INPUT... (slides, a `tile` manifest, or folders of tile images) at the recipe's size and
    magnification(s) (data.resolve_inputs). all_mpps=False: the first mpp only (embedding and evaluation read
    every tile at the magnification the encoder was trained for first)."""
    from sslkit.domains.pathology.data import resolve_inputs

    mpps = list(data.mpp) if all_mpps else [data.mpp[0]]
    return resolve_inputs(list(inputs), tile_px=data.tile_px, mpp=mpps, tile_um=data.tile_um,
                          min_tissue=data.min_tissue, overlap=data.overlap, slide_mpp=slide_mpp)
