"""DINO: self-distillation with a centred, sharpened teacher.

Paper: Caron et al., "Emerging Properties in Self-Supervised Vision
Transformers", arXiv:2104.14294.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslkit.core.distributed import all_reduce_max, all_reduce_mean, world_size

Views = Tensor | Sequence[Tensor]


def dino_cross_entropy_rows(teacher_probs: Tensor, student_out: Tensor, student_temp: float) -> Tensor:
    """Σ_k −P_t[i, k] · log softmax(student_out[i] / τ_s)_k per row: (B, K) inputs -> (B,)."""
    return torch.sum(-teacher_probs * F.log_softmax(student_out / student_temp, dim=-1), dim=-1)


def dino_cross_entropy(teacher_probs: Tensor, student_out: Tensor, student_temp: float) -> Tensor:
    """mean_i Σ_k −P_t[i, k] · log softmax(student_out[i] / τ_s)_k for (B, K) inputs."""
    return dino_cross_entropy_rows(teacher_probs, student_out, student_temp).mean()


@torch.no_grad()
def sinkhorn_knopp(logits: Tensor, temp: float, iters: int = 3) -> Tensor:
    """Teacher targets (B, K) with equal prototype usage over the batch (all ranks): Sinkhorn-Knopp on exp(logits / τ).

    DINOv2/SwAV's alternative to centring: it cannot settle on one prototype or on the uniform
    output while the samples differ, which keeps small batches from collapsing. Computed in the
    log domain, so sharp temperatures on unbounded logits do not underflow.
    """
    n = logits.shape[0] * world_size()
    log_q = logits.float() / temp
    for _ in range(iters):
        log_q = log_q - _batch_logsumexp(log_q) - math.log(logits.shape[1])  # every prototype gets 1/K of the mass
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - math.log(n)  # every sample gets 1/N
    return (log_q + math.log(n)).exp().to(logits.dtype)


def _batch_logsumexp(x: Tensor) -> Tensor:
    """log Σ_batch exp(x) per column (1, K), over the batches of all ranks."""
    m = all_reduce_max(x.max(dim=0, keepdim=True).values)
    return m + (all_reduce_mean((x - m).exp().sum(dim=0, keepdim=True)) * world_size()).log()


def _as_list(views: Views, name: str) -> list[Tensor]:
    out = [views] if isinstance(views, Tensor) else list(views)
    if not out:
        raise ValueError(f"DINO loss got no {name} views; pass a list of (B, K) tensors")
    return out


class DINOLoss(nn.Module):
    """DINO loss (arXiv:2104.14294) with the paper's temperatures and centre momentum.

    The teacher output is centred (a running mean of teacher outputs, the
    `center` buffer) and sharpened with a low temperature; together they keep
    the student from collapsing to one dimension or to the uniform output.
    The teacher temperature rises linearly from `warmup_teacher_temp` to
    `teacher_temp` over `warmup_teacher_temp_steps` optimizer steps.

    out_dim: K, the width of the DINO head's output.
    centering: "center" (the paper) or "sinkhorn" (DINOv2: Sinkhorn-Knopp targets, for small batches).
    """

    center: Tensor

    def __init__(
        self,
        out_dim: int,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_steps: int = 0,
        center_momentum: float = 0.9,
        centering: str = "center",
    ) -> None:
        super().__init__()
        if min(student_temp, teacher_temp, warmup_teacher_temp) <= 0:
            raise ValueError("DINO temperatures must be > 0")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"DINO center_momentum must lie in [0, 1], got {center_momentum}")
        self.out_dim = out_dim
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.warmup_teacher_temp_steps = warmup_teacher_temp_steps
        self.center_momentum = center_momentum
        if centering not in ("center", "sinkhorn"):
            raise ValueError(f"DINO centering must be 'center' or 'sinkhorn', got {centering!r}")
        self.centering = centering
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.last_targets: list[Tensor] = []   # the teacher targets of the last call, one per view (diagnostics)

    def teacher_temperature(self, step: int) -> float:
        """Linear warmup from warmup_teacher_temp to teacher_temp, then constant."""
        if step >= self.warmup_teacher_temp_steps:
            return self.teacher_temp
        frac = step / self.warmup_teacher_temp_steps
        return self.warmup_teacher_temp + frac * (self.teacher_temp - self.warmup_teacher_temp)

    def teacher_probs(self, teacher_out: Tensor, step: int = 0) -> Tensor:
        """softmax((teacher_out − center) / τ_t) for (B, K) logits (Sinkhorn-Knopp targets with
        centering="sinkhorn"), without gradient."""
        temp = self.teacher_temperature(step)
        if self.centering == "sinkhorn":
            return sinkhorn_knopp(teacher_out.detach(), temp)
        return F.softmax((teacher_out.detach() - self.center) / temp, dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_views: Sequence[Tensor]) -> None:
        """center ← m·center + (1 − m)·mean of the teacher outputs (over views, batch and ranks)."""
        batch_center = torch.cat([t.detach() for t in teacher_views]).mean(dim=0, keepdim=True)
        batch_center = all_reduce_mean(batch_center.to(self.center.dtype))
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)

    def _default_pairs(self, n_teacher: int, n_student: int) -> list[tuple[int, int]]:
        """Teacher views are the first student views (DINO's global crops): pair every
        teacher view with every student view except itself."""
        return [(t, s) for t in range(n_teacher) for s in range(n_student) if t != s]

    def _check(self, teacher: list[Tensor], student: list[Tensor], pairs: Sequence[tuple[int, int]]) -> None:
        for name, views in (("teacher", teacher), ("student", student)):
            for i, v in enumerate(views):
                if v.dim() != 2 or v.shape[1] != self.out_dim:
                    raise ValueError(
                        f"DINO loss expects {name} views of shape (B, {self.out_dim}); "
                        f"{name} view {i} has shape {tuple(v.shape)}"
                    )
        if not pairs:
            raise ValueError(
                "DINO loss has no (teacher, student) pairs: with default pairing a view is never "
                "compared with itself; pass pairs=[(0, 0)] if the teacher and student views differ"
            )
        for t, s in pairs:
            if not (0 <= t < len(teacher) and 0 <= s < len(student)):
                raise ValueError(
                    f"DINO pair ({t}, {s}) is out of range for {len(teacher)} teacher and {len(student)} student views"
                )
            if teacher[t].shape[0] != student[s].shape[0]:
                raise ValueError(
                    f"DINO pair ({t}, {s}) has batch sizes {teacher[t].shape[0]} and {student[s].shape[0]}; "
                    "they must match"
                )

    def forward(
        self,
        student_out: Views,
        teacher_out: Views,
        step: int | None = None,
        pairs: Sequence[tuple[int, int]] | None = None,
    ) -> Tensor:
        """Mean cross-entropy over (teacher view, student view) pairs -> scalar loss.

        student_out, teacher_out: lists of (B, K) head outputs (logits), one per view.
        step: optimizer step for the teacher-temperature warmup (required when warming up).
        pairs: explicit (teacher index, student index) pairs; by default teacher view t
        is the same crop as student view t, and every pair with t != s is used.
        In training mode the centre is updated from the teacher outputs afterwards.
        """
        student = _as_list(student_out, "student")
        teacher = _as_list(teacher_out, "teacher")
        if step is None:
            if self.warmup_teacher_temp_steps > 0:
                raise ValueError("DINO loss needs step= while the teacher temperature warms up")
            step = 0
        if pairs is None:
            pairs = self._default_pairs(len(teacher), len(student))
        self._check(teacher, student, pairs)
        probs = self.last_targets = [self.teacher_probs(t, step) for t in teacher]
        loss = torch.stack([dino_cross_entropy(probs[t], student[s], self.student_temp) for t, s in pairs]).mean()
        if self.training:
            self.update_center(teacher)
        return loss

    def extra_repr(self) -> str:
        return (
            f"out_dim={self.out_dim}, student_temp={self.student_temp}, teacher_temp={self.teacher_temp}, "
            f"center_momentum={self.center_momentum}"
        )
