"""tera-inv: TERA's reconstruction plus invariance of the clip embedding to speaker-like perturbations.

Target: a representation of *what* was said that holds for a voice never heard. Each clip gives two views under
independent speaker-like perturbations (`augment.perturb_voice`: vocal-tract-length warp of the frequency axis,
tempo, gain, spectral tilt, noise); each view is then altered as TERA does and reconstructed (L1 on the altered
positions, target = that view), and the clip embeddings of the two passes — pooled exactly as the encoder pools for a
probe (`model.pool_segments`, `pool_stats`, `pool_layers`) — go through a small projector into VICReg (Bardes et al.
2022: invariance + variance + covariance, the core's `VICRegLoss`, gathered over ranks). No negatives: two clips of
the same digit by different speakers are never pushed apart.

L = inv.recon_weight · (L1_a + L1_b) / 2 + inv.weight · VICReg(z_a, z_b). The encoder is TERA's (`ENCODERS["tera"]`):
the exported encoder, its random-weight twin and every probe are the same as for `tera`.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from sslkit.core.losses.vicreg import VICRegLoss
from sslkit.domains.audio.augment import perturb_voice
from sslkit.domains.audio.method import AudioRecipe, Tera, clip_generators, per_clip_mean, tera_alter
from sslkit.domains.audio.model import pool_tokens


class TeraInv(Tera):
    """TERA + VICReg between two speaker-perturbed views of each clip (see the module docstring)."""

    loss_terms = ("l1", "inv")

    def __init__(self, recipe: AudioRecipe, mean: float, std: float) -> None:
        super().__init__(recipe, mean, std)     # the encoder first: random weights identical to tera's
        self.inv, self.sample_rate, self.std = recipe.inv, recipe.data.sample_rate, float(std)
        enc = self.encoder
        width = (enc.pool_segments + (enc.pool_stats == "meanstd")) * enc.pool_layers * enc.dim
        p = recipe.inv.proj_dim
        # no bias on the last layer: VICReg centres z (variance, covariance) and differences the views (invariance),
        # so a bias there has a zero gradient whose rounding noise Adam turns into lr-sized steps (they differed
        # between 1 and 2 processes)
        self.projector = nn.Sequential(nn.Linear(width, p), nn.LayerNorm(p), nn.GELU(), nn.Linear(p, p, bias=False))
        self.vicreg = VICRegLoss(recipe.inv.sim_weight, recipe.inv.var_weight, recipe.inv.cov_weight,
                                 gather_distributed=True)

    def views(self, batch: dict[str, Tensor]) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Two (view, valid, altered view, altered label) per batch, every draw from the clip's own generator."""
        fbank = batch["fbank"]
        valid = batch.get("valid")
        if valid is None:
            valid = torch.ones(fbank.shape[:2], dtype=torch.bool, device=fbank.device)
        gens, v = clip_generators(batch, 3), self.inv
        out = []
        for _ in range(2):
            view, ok = perturb_voice(fbank, valid, gens, sample_rate=self.sample_rate, std=self.std, warp=v.warp,
                                     tempo=v.tempo, gain_db=v.gain_db, tilt_db=v.tilt_db, noise=v.noise)
            pairs = [tera_alter(x, int(n), self.mask, g) for x, n, g in zip(view, ok.sum(1).tolist(), gens)]
            out.append((view, ok, torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])))
        return out

    def _pass(self, view: Tensor, valid: Tensor, altered: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        """(L1 of the reconstruction of `view` from `altered`, the projected clip embedding (B, P))."""
        enc = self.encoder
        tokens, present = enc._encode(altered, valid, None, enc.pool_layers)       # (B, T, D·layers)
        pred = self.head(tokens[..., -enc.dim:])
        l1 = per_clip_mean((pred.float() - view.float()).abs(), label)
        clip = pool_tokens(tokens, present, 1, False, enc.pool_stats == "meanstd", enc.pool_segments)
        return l1, self.projector(clip)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        (l1a, za), (l1b, zb) = [self._pass(*v) for v in self.views(batch)]
        l1 = 0.5 * (l1a + l1b)
        terms = self.vicreg.components(za, zb)
        inv = self.vicreg.weighted(terms)
        loss = self.inv.recon_weight * l1 + self.inv.weight * inv
        return loss, {"l1": l1.detach(), "inv": inv.detach(), "inv_sim": terms["invariance"].detach(),
                      "inv_var": terms["variance"].detach()}

    @torch.no_grad()
    def visualise(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """First clip: its first perturbed view, that view's alteration, and the reconstruction."""
        one = {k: v[:1] for k, v in batch.items()}
        view, valid, altered, label = self.views(one)[0]
        pred = self.head(self.encoder.tokens(altered, valid)).float()
        recon = torch.where(label, pred, altered.float())
        return {"fbank": view[0].float().cpu(), "mask": label[0].cpu(), "recon": recon[0].cpu()}
