"""The DINOSTAR recipe (teachers + merge + student) and the student detector trained by `core.loop.fit`.

The self-supervision is the teachers' pseudo-labels: statistical teachers label the unlabelled
sequence, and a pillar/BEV detector learns from the combined labels (CenterPoint-style focal heatmap
loss + L1 box regression at object centres).
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator
from torch import nn

from sslkit.core.export import encoder_spec
from sslkit.core.recipes import Recipe, Section
from sslkit.domains.lidar.boxes import CLASSES, Box, nms_bev
from sslkit.domains.lidar.model import CenterHead, PillarBEVEncoder
from sslkit.domains.lidar.teachers import TeacherConfig


class MergeConfig(Section):
    rule: Literal["vote", "nms", "union"] = "vote"
    iou: float = Field(0.3, gt=0, le=1)
    min_votes: int = Field(1, ge=1)


class BackgroundConfig(Section):
    min_frames: int = Field(20, ge=2, description="frames the background model needs at least")
    max_frames: int = Field(200, ge=2, description="frames sampled (evenly) to build it")


Range = tuple[float, float]
MAX_PILLARS = 2048  # per side: a finer grid holds GBs of features per frame


class StudentModel(Section):
    x_range: Range = (-51.2, 51.2)
    y_range: Range = (-6.4, 25.6)
    z_range: Range = (-8.0, 0.0)
    pillar: float = Field(0.32, gt=0, description="pillar edge (m); at least 2 and at most 2048 pillars per side")
    channels: int = Field(32, ge=1)
    head_hidden: int = Field(64, ge=1)
    max_objects: int = Field(64, ge=1, description="objects per frame that get a regression target")
    flip: bool = True
    reg_weight: float = Field(2.0, ge=0)
    score_threshold: float = Field(0.2, ge=0, lt=1, description="heatmap peaks (sigmoid) below this are not boxes")
    nms_iou: float = Field(0.2, gt=0, le=1)

    @field_validator("x_range", "y_range", "z_range")
    @classmethod
    def _range(cls, v: Range, info: ValidationInfo) -> Range:
        """A side of the detection region (m): finite and low < high (a reversed range makes a negative grid)."""
        lo, hi = v
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            default = list(cls.model_fields[info.field_name].default)
            raise ValueError(f"model.{info.field_name} must be [low, high] in metres with low < high, e.g. {default}")
        return v

    @field_validator("pillar")
    @classmethod
    def _pillar(cls, v: float, info: ValidationInfo) -> float:
        """The grid is round(extent / pillar) per side: 0 or 1 pillars break the CNN, huge grids exhaust memory."""
        for axis in ("x_range", "y_range"):
            if axis not in info.data:  # the range itself was refused; that error is reported
                continue
            lo, hi = info.data[axis]
            n = round((hi - lo) / v)
            if n < 2:
                raise ValueError(f"model.pillar={v} gives {n} pillar(s) across model.{axis} ({hi - lo:g} m) — "
                                 f"use at most {(hi - lo) / 2:g} m")
            if n > MAX_PILLARS:
                raise ValueError(f"model.pillar={v} makes {n} pillars across model.{axis} — use at least "
                                 f"{(hi - lo) / MAX_PILLARS:.3g} m or narrow the range")
        return v


class LidarRecipe(Recipe):
    method: Literal["dinostar"] = "dinostar"
    background: BackgroundConfig = Field(default_factory=BackgroundConfig)
    teachers: list[TeacherConfig] = Field(default_factory=lambda: [TeacherConfig(name="t1")], min_length=1)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    model: StudentModel = Field(default_factory=StudentModel)

    @field_validator("teachers")
    @classmethod
    def _teachers(cls, v: list[TeacherConfig]) -> list[TeacherConfig]:
        """Teacher names are output folders beside combined/: they must differ from each other and from it."""
        names = [t.name for t in v]
        if "combined" in names:
            raise ValueError("teacher name 'combined' is reserved for the merged labels — rename that teacher")
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise ValueError(f"teacher name '{dup}' is used twice — give each teacher its own name")
        return v

    @field_validator("merge")
    @classmethod
    def _merge(cls, v: MergeConfig, info: ValidationInfo) -> MergeConfig:
        n = len(info.data.get("teachers") or [])
        if n and v.rule == "vote" and v.min_votes > n:
            raise ValueError(f"merge.min_votes={v.min_votes} needs more than the {n} teachers, so no box would be "
                             f"kept — lower it to at most {n} or add teachers")
        return v


RECIPE_SCHEMA = LidarRecipe


def focal_heatmap_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CornerNet/CenterNet focal loss on Gaussian heatmaps, normalised by the number of centres."""
    p = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_loss = torch.log(p) * (1 - p) ** alpha * pos
    neg_loss = torch.log(1 - p) * p ** alpha * (1 - target) ** beta * (1 - pos)
    return -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1)


class StudentDetector(nn.Module):
    """forward(batch) -> (loss, metrics); `encoder` is the exported pillar/BEV encoder."""

    loss_terms = ("heatmap_loss", "reg_loss")

    def __init__(self, cfg: StudentModel) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = PillarBEVEncoder(cfg.x_range, cfg.y_range, cfg.z_range, cfg.pillar, cfg.channels)
        self.head = CenterHead(self.encoder.out_channels, len(CLASSES), cfg.head_hidden)

    def predict_maps(self, points: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.encoder(points, batch_size))

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        hm, reg = self.predict_maps(batch["points"], batch["heatmap"].shape[0])
        hm_loss = focal_heatmap_loss(hm, batch["heatmap"])
        b, c = reg.shape[:2]
        pred = reg.float().view(b, c, -1).gather(2, batch["ind"][:, None, :].expand(-1, c, -1)).transpose(1, 2)
        mask = batch["mask"][..., None]
        reg_loss = (F.l1_loss(pred, batch["reg"], reduction="none") * mask).sum() / mask.sum().clamp(min=1) / c
        loss = hm_loss + self.cfg.reg_weight * reg_loss
        return loss, {"heatmap_loss": hm_loss.detach(), "reg_loss": reg_loss.detach()}

    def encoder_spec(self) -> dict:
        m = self.cfg
        return encoder_spec("lidar", "pillar_bev", x_range=list(m.x_range), y_range=list(m.y_range),
                            z_range=list(m.z_range), pillar=m.pillar, channels=m.channels)

    @torch.no_grad()
    def detect(self, points: torch.Tensor, batch_size: int, top_k: int = 100) -> list[list[Box]]:
        """Boxes per frame: 3x3 max-pool peaks of the heatmaps above the score threshold, then BEV NMS."""
        hm, reg = self.predict_maps(points, batch_size)
        hm, reg = torch.sigmoid(hm.float()), reg.float()
        peaks = hm * (F.max_pool2d(hm, 3, 1, 1) == hm)
        b, k, h, w = hm.shape
        enc, cell, out = self.encoder, self.encoder.out_cell, []
        scores, idx = peaks.view(b, -1).topk(min(top_k, k * h * w))
        for i in range(b):
            boxes = []
            for s, j in zip(scores[i].tolist(), idx[i].tolist()):
                if s < self.cfg.score_threshold:
                    break
                cls, rest = divmod(j, h * w)
                u, v = divmod(rest, w)
                r = reg[i, :, u, v].tolist()
                l, wd, ht = (math.exp(min(x, 3.0)) for x in r[3:6])
                yaw = 0.5 * math.atan2(r[6], r[7])
                boxes.append(Box(enc.x_range[0] + (u + r[0]) * cell, enc.y_range[0] + (v + r[1]) * cell, r[2],
                                 l, wd, ht, yaw, CLASSES[cls], s))
            out.append(nms_bev(boxes, self.cfg.nms_iou) if boxes else [])
        return out
