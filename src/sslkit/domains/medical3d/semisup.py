"""Semi-supervised fine-tuning: a mean teacher with uncertainty-aware consistency (UA-MT, Yu et al., MICCAI 2019).

The unlabelled training volumes join fine-tuning through a consistency loss: the student's softmax on an
unlabelled crop is pulled (mean squared error) towards the softmax of a teacher whose weights are an exponential
moving average of the student's, run on the same crop with Gaussian noise added. The loss weight ramps up along a
sigmoid, so early, unreliable teachers count little. With `uncertainty`, the teacher runs `passes` more noisy passes;
voxels where the entropy of their mean softmax is above a threshold (itself ramped from 0.75·ln K to 1.0·ln K) are
left out of the loss. The settings are the `finetune.semisup` recipe section (UA-MT's LA defaults: EMA 0.99,
weight 0.1, noise σ 0.1 clipped at ±0.2, 8 passes).
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

NOISE_CLIP = 2.0   # noise is N(0, σ²) clipped at ±2σ (UA-MT: σ 0.1, clipped at ±0.2)


def sigmoid_rampup(step: float, length: float) -> float:
    """exp(-5 (1 - t)²), t = step / length clipped to [0, 1] (Laine & Aila's ramp-up): 0.0067 at 0, 1 from `length`."""
    if length <= 0:
        return 1.0
    t = min(max(step / length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def ema_alpha(step: int, decay: float) -> float:
    """EMA momentum at optimizer step `step` (0-based): min(1 - 1/(step + 1), decay), UA-MT's true average early on."""
    return min(1.0 - 1.0 / (step + 1), decay)


def masked_consistency(student_probs: Tensor, teacher_probs: Tensor, mask: Tensor | None) -> Tensor:
    """Σ mask·(p_s - p_t)² / (K·Σ mask + 1e-16) over (B, K, ...) probabilities and a (B, ...) 0/1 mask (UA-MT);
    without a mask, the plain mean of the squared differences."""
    dist = (student_probs - teacher_probs) ** 2
    if mask is None:
        return dist.mean()
    k = student_probs.shape[1]
    m = mask.unsqueeze(1).to(dist.dtype)
    return (m * dist).sum() / (k * m.sum() + 1e-16)


def entropy(probs: Tensor) -> Tensor:
    """(B, K, ...) probabilities -> (B, ...) entropy in nats (UA-MT's uncertainty, with its 1e-6 inside the log)."""
    return -(probs * torch.log(probs + 1e-6)).sum(1)


class MeanTeacher(nn.Module):
    """The teacher (an EMA copy of `student`) and its consistency loss on unlabelled crops.

    `cfg` is read by attribute: ema_decay, weight, rampup_steps (None: 40% of `total_steps`), noise, uncertainty,
    passes, threshold_start, threshold_end. The teacher's parameters take no gradient and stay out of the optimizer.
    """

    def __init__(self, student: nn.Module, cfg: Any, total_steps: int) -> None:
        super().__init__()
        self.teacher = copy.deepcopy(student)
        self.teacher.requires_grad_(False)
        self.cfg, self.total_steps = cfg, max(1, int(total_steps))
        rampup = getattr(cfg, "rampup_steps", None)
        self.rampup_steps = round(0.4 * self.total_steps) if rampup is None else int(rampup)

    def weight(self, step: int) -> float:
        """Consistency weight at `step`: cfg.weight × sigmoid ramp-up over `rampup_steps`."""
        return float(self.cfg.weight) * sigmoid_rampup(step, self.rampup_steps)

    def threshold(self, step: int, classes: int) -> float:
        """Entropy threshold in nats: (start + (end - start)·ramp(step / total))·ln K."""
        c = self.cfg
        ramp = sigmoid_rampup(step, self.total_steps)
        return (c.threshold_start + (c.threshold_end - c.threshold_start) * ramp) * math.log(classes)

    def _noisy(self, image: Tensor) -> Tensor:
        sigma = float(self.cfg.noise)
        return image + (torch.randn_like(image) * sigma).clamp(-NOISE_CLIP * sigma, NOISE_CLIP * sigma)

    @torch.no_grad()
    def _teacher_probs(self, image: Tensor) -> Tensor:
        was = self.teacher.training
        self.teacher.eval()                    # dropout off; instance/group norm behave alike in both modes
        try:
            return self.teacher(self._noisy(image)).float().softmax(1)
        finally:
            self.teacher.train(was)

    def forward(self, student_logits: Tensor, image: Tensor, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """(weighted consistency loss, metrics) for the student's logits (B, K, R, R, R) on unlabelled crops `image`
        (B, C, R, R, R). Metrics: "consistency" (unweighted), "cons_weight", "certain" (share of voxels kept)."""
        student = student_logits.float().softmax(1)
        target = self._teacher_probs(image)
        mask = None
        if self.cfg.uncertainty and int(self.cfg.passes) > 0:
            mean = sum(self._teacher_probs(image) for _ in range(int(self.cfg.passes))) / int(self.cfg.passes)
            mask = (entropy(mean) < self.threshold(step, student.shape[1])).float()
        loss = masked_consistency(student, target, mask)
        w = self.weight(step)
        certain = mask.mean() if mask is not None else torch.ones((), device=student.device)
        return w * loss, {"consistency": loss.detach(), "cons_weight": torch.tensor(w, device=student.device),
                          "certain": certain.detach()}

    @torch.no_grad()
    def update(self, student: nn.Module, step: int) -> None:
        """teacher ← α·teacher + (1 - α)·student, α = `ema_alpha(step, ema_decay)`; buffers are copied."""
        from sslkit.core.ema import ema_update

        ema_update(self.teacher, student, ema_alpha(step, float(self.cfg.ema_decay)))
