"""How frozen tile features are read out of a ViT encoder: which token, test-time symmetry, stain normalisation.

Measured on GlaS (benchmarks/pathology_readout.py, docs/pathology.md "readout"): the CLS token only, averaged over
the 8 rotations/flips of each tile, after Reinhard stain normalisation per image, raised the tile linear probe from
0.644/0.530 to 0.759/0.708 balanced accuracy (development/held-out) over the shipped `cls+mean`, one view, raw
colours. `sslkit pathology embed/evaluate/mil` expose the same three levers (--token, --tta, --stain-norm); their
defaults (the encoder's own pooling, 1 view, no normalisation) read tiles exactly as before.

- token: "cls" (D = width), "mean" (mean patch token, D = width), "cls+mean" (both, D = 2·width), read from the final
  block after the final LayerNorm; None = the encoder's own `pool`.
- tta: 1 (the tile as is) or 8 (the mean over the dihedral group: 4 rotations × horizontal flip), so the vector does
  not depend on the tile's orientation, which tissue does not have.
- stain_norm: "reinhard" moves each image's (slide's) tiles to a reference L*a*b* mean and std (Reinhard et al. 2001):
  an image's statistics are the mean over its tiles of each tile's per-channel mean and mean square; the reference is
  the average of the per-image statistics over all tiles being embedded (tile-weighted), as the benchmark averaged
  them over its development images. It costs one extra pass reading the tiles.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Any, Iterable, Optional

import numpy as np
import typer

from sslkit.core.errors import UserError

TOKENS = ("cls", "mean", "cls+mean")
TTAS = (1, 8)
STAIN_NORMS = ("none", "reinhard")

TokenOpt = Annotated[Optional[str], typer.Option("--token", help="Tile vector read from the last block: cls (D = "
                     "width), mean (mean patch token), cls+mean (both, 2·width); default: the run's model.pool.")]
TtaOpt = Annotated[int, typer.Option("--tta", help="1: the tile as is; 8: the mean vector over its 4 rotations × "
                   "flip (orientation-free).")]
StainNormOpt = Annotated[str, typer.Option("--stain-norm", help="none, or reinhard: each slide/image's tiles moved "
                         "to the mean L*a*b* mean/std over all the tiles being embedded (one extra read pass).")]


@dataclass(frozen=True)
class Readout:
    token: str | None = None     # None: the encoder's own pool
    tta: int = 1
    stain_norm: str = "none"

    @property
    def is_default(self) -> bool:
        return self.token is None and self.tta == 1 and self.stain_norm == "none"

    def record(self, pool: str | None) -> dict[str, Any]:
        """What goes into the embeddings' metadata / the command's JSON: the token resolved to the encoder's `pool`
        when left at its default."""
        return asdict(self) | {"token": self.token or pool}


def check_readout(token: str | None, tta: int, stain_norm: str) -> Readout:
    """Validate the CLI options -> Readout; a bad value is a UserError naming the accepted ones."""
    if token is not None and token not in TOKENS:
        raise UserError(f"--token {token!r} is not one of {', '.join(TOKENS)}")
    if tta not in TTAS:
        raise UserError(f"--tta {tta} is not 1 or 8 (8 = mean over the 4 rotations × flip)")
    if stain_norm not in STAIN_NORMS:
        raise UserError(f"--stain-norm {stain_norm!r} is not one of {', '.join(STAIN_NORMS)}")
    return Readout(token, int(tta), stain_norm)


def check_encoder(encoder: Any, readout: Readout) -> None:
    """A non-default readout needs the pathology ViT (its `tokens`); anything else is a UserError before any work."""
    if not readout.is_default and not (hasattr(encoder, "tokens") and hasattr(encoder, "vit")):
        raise UserError(f"--token/--tta/--stain-norm need a pathology ViT encoder; this one is "
                        f"{type(encoder).__name__} — leave them at their defaults")


def dihedral(x: Any, tta: int) -> list:
    """(B, C, H, W) -> the `tta` copies: [x] for 1, its 4 rotations and those of its horizontal flip for 8."""
    import torch

    if tta == 1:
        return [x]
    return [torch.rot90(v, k, (2, 3)) for v in (x, x.flip(3)) for k in range(4)]


def block_tokens(encoder: Any, tiles: Any, tta: int) -> Any:
    """uint8 (B, 3, P, P) -> float (B, blocks, 2, width): per block the normed CLS and mean patch token (mean over the
    `tta` dihedral copies). Every block's tokens go through the final LayerNorm, as timm's
    `forward_intermediates(norm=True)` and DINO's `get_intermediate_layers` do (the benchmark's multi-block readouts)."""
    import torch

    copies = dihedral(encoder.preprocess(tiles), tta)
    out = 0
    for c in copies:
        inter = encoder.vit.forward_intermediates(c, norm=True, output_fmt="NLC", intermediates_only=True,
                                                  return_prefix_tokens=True)
        out = out + torch.stack([torch.stack([prefix[:, 0], patches.mean(1)], 1) for patches, prefix in inter], 1)
    return out / len(copies)


def lab_stats(tiles: np.ndarray) -> np.ndarray:
    """uint8 (B, 3, P, P) -> (B, 2, 3): per tile the mean and mean square of each CIE L*a*b* channel."""
    from skimage.color import rgb2lab

    lab = np.stack([rgb2lab(t.transpose(1, 2, 0)).reshape(-1, 3) for t in tiles])
    return np.stack([lab.mean(1), (lab ** 2).mean(1)], 1)


def image_stats(stats: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Per-tile (N, 2, 3) L*a*b* mean / mean square and each tile's image id (N,) -> (N, 2, 3): for every tile its
    image's L*a*b* mean and std (pooled over the image's tiles)."""
    per_tile = np.zeros((len(stats), 2, 3))
    for s in np.unique(images):
        m = images == s
        mu, sq = stats[m, 0].mean(0), stats[m, 1].mean(0)
        per_tile[m] = np.stack([mu, np.sqrt(np.maximum(sq - mu ** 2, 1e-6))])
    return per_tile


def reinhard(tiles: np.ndarray, stats: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """uint8 (B, 3, P, P) with their images' (B, 2, 3) L*a*b* mean/std -> uint8 tiles moved to the reference (2, 3)."""
    from skimage.color import lab2rgb, rgb2lab

    out = []
    for t, (mu, sd) in zip(tiles, stats):
        lab = (rgb2lab(t.transpose(1, 2, 0)) - mu) / sd * ref[1] + ref[0]
        out.append((np.clip(lab2rgb(lab), 0, 1) * 255 + 0.5).astype(np.uint8).transpose(2, 0, 1))
    return np.stack(out)


def stain_targets(batches: Iterable[Any], images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One pass over uint8 tile batches in row order -> (per tile its image's L*a*b* mean/std (N, 2, 3), the
    reference (2, 3) = their tile-weighted average over everything being embedded)."""
    st = np.concatenate([lab_stats(t.numpy()) for t in batches])
    per_tile = image_stats(st, np.asarray(images))
    return per_tile, per_tile.mean(0)


class TileReader:
    """Applies a Readout to uint8 tile batches taken in row order: `reader(encoder, tiles, device)` -> float32 (B, D)
    on the CPU. Stain targets come from `prepare` (one pass over the same tiles) before the first batch."""

    def __init__(self, readout: Readout) -> None:
        self.readout = readout
        self.targets: tuple[np.ndarray, np.ndarray] | None = None
        self.done = 0

    def prepare(self, batches: Iterable[Any], images: Any) -> None:
        if self.readout.stain_norm == "reinhard":
            self.targets = stain_targets(batches, np.asarray(images).astype(str))

    def tiles(self, tiles: Any, start: int) -> Any:
        """The batch beginning at row `start`, stain-normalised when asked."""
        import torch

        if self.targets is None:
            return tiles
        stats, ref = self.targets
        return torch.from_numpy(reinhard(tiles.numpy(), stats[start:start + len(tiles)], ref))

    def __call__(self, encoder: Any, tiles: Any, device: Any = "cpu", start: int | None = None) -> Any:
        """uint8 (B, 3, P, P) -> float32 (B, D); `start` = the batch's first row (default: right after the last)."""
        import torch

        from sslkit.domains.pathology.model import embed_batch

        start = self.done if start is None else start
        tiles = self.tiles(tiles, start)
        self.done = start + len(tiles)
        token = self.readout.token or getattr(encoder, "pool", "cls")
        if self.readout.tta == 1 and token == getattr(encoder, "pool", None):
            return embed_batch(encoder, tiles, device)          # the encoder's own forward: unchanged vectors
        device = torch.device(device)
        x = encoder.preprocess(tiles.to(device))
        copies = dihedral(x, self.readout.tta)
        out = 0
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            for c in copies:
                t = encoder.tokens(c).float()
                parts = {"cls": [t[:, 0]], "mean": [t[:, encoder.vit.num_prefix_tokens:].mean(1)]}
                parts["cls+mean"] = parts["cls"] + parts["mean"]
                out = out + torch.cat(parts[token], -1)
        return (out / len(copies)).float().cpu()
