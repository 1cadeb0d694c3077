"""iBOT: masked patch-token self-distillation.

Paper: Zhou et al., "iBOT: Image BERT Pre-Training with Online Tokenizer", arXiv:2111.07832; the patch term of
DINOv2 (Oquab et al. 2023, arXiv:2304.07193). The student sees a crop with some patch tokens replaced by a mask
token, the teacher the whole crop; at every masked position the student's patch distribution over K prototypes
matches the teacher's centred, sharpened one. Centring and sharpening are DINO's (DINOLoss), with a centre of its own.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sslkit.core.distributed import all_reduce_mean
from sslkit.core.losses.dino import DINOLoss, dino_cross_entropy_rows


def masked_token_weights(mask: Tensor) -> Tensor:
    """(B, N) bool mask -> (M,) weight per masked token, in `mask`'s row-major order (M = mask.sum()).

    1 / (masked tokens of its image) / B: every masked image counts once whatever its mask ratio, and the sum over a
    batch is divided by all B images (as DINOv2), so equal shards on several processes average to one process's loss.
    """
    per_image = mask.sum(dim=1, keepdim=True).clamp_min(1).to(torch.float32)
    return (1.0 / per_image / mask.shape[0]).expand(mask.shape)[mask]


class IBOTPatchLoss(DINOLoss):
    """iBOT patch loss: Σ over masked tokens of weight · CE(teacher target, student) -> scalar.

    Takes only the masked rows (the heads need not see the others): student and teacher (M, K) head outputs at the
    positions where `mask` (B, N) is True, in row-major order. Temperatures, centre momentum and centring as
    DINOLoss; the centre is the running mean of the teacher's masked-token outputs over all processes.
    """

    def forward(self, student_out: Tensor, teacher_out: Tensor, mask: Tensor,  # type: ignore[override]
                step: int | None = None) -> Tensor:
        self._check_rows(student_out, teacher_out, mask)
        if step is None:
            if self.warmup_teacher_temp_steps > 0:
                raise ValueError("iBOT loss needs step= while the teacher temperature warms up")
            step = 0
        if teacher_out.shape[0]:
            probs = self.teacher_probs(teacher_out, step)
        else:   # no masked token on this process (Sinkhorn would need rows): nothing to match
            probs = teacher_out.detach().float()
        self.last_targets = [probs]
        ce = dino_cross_entropy_rows(probs, student_out, self.student_temp)
        loss = (ce * masked_token_weights(mask).to(ce.dtype)).sum()
        if self.training:
            self.update_center([teacher_out])
        return loss

    @torch.no_grad()
    def update_center(self, teacher_views: Sequence[Tensor]) -> None:
        """center ← m·center + (1 − m)·mean over every masked token of every process (a process may have none)."""
        t = torch.cat([v.detach() for v in teacher_views]).to(self.center.dtype)
        stats = torch.cat([t.sum(dim=0), t.new_tensor([t.shape[0]])])
        stats = all_reduce_mean(stats)            # sums and counts scaled alike by 1 / world: the ratio is exact
        if stats[-1] > 0:
            batch_center = (stats[:-1] / stats[-1]).unsqueeze(0)
            self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)

    def _check_rows(self, student: Tensor, teacher: Tensor, mask: Tensor) -> None:
        if mask.dim() != 2 or mask.dtype != torch.bool:
            raise ValueError(f"iBOT loss expects a bool mask (B, N), got {mask.dtype} of shape {tuple(mask.shape)}")
        m = int(mask.sum())
        for name, rows in (("student", student), ("teacher", teacher)):
            if rows.shape != (m, self.out_dim):
                raise ValueError(f"iBOT loss expects {name} outputs at the {m} masked tokens, shape ({m}, "
                                 f"{self.out_dim}); got {tuple(rows.shape)}")
