"""Few-label segmentation on a (pretrained) encoder: UNETR/SwinUNETR-style decoder, Dice+CE, sliding-window inference."""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class UNetDecoder(nn.Module):
    """MONAI UNETR up-blocks with skips: (encoder pyramid, input) -> (B, out_channels, X, Y, Z) at input resolution."""

    def __init__(self, channels: list[int], out_channels: int, base: int = 16, in_channels: int = 1) -> None:
        super().__init__()
        from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock

        ch = list(channels)
        self.stem = UnetrBasicBlock(3, in_channels, base, kernel_size=3, stride=1, norm_name="instance", res_block=True)
        self.bottleneck = UnetrBasicBlock(3, ch[-1], ch[-1], kernel_size=3, stride=1, norm_name="instance", res_block=True)
        self.skips = nn.ModuleList(UnetrBasicBlock(3, c, c, kernel_size=3, stride=1, norm_name="instance", res_block=True)
                                   for c in ch[:-1])
        self.ups = nn.ModuleList(UnetrUpBlock(3, ch[i + 1], ch[i], kernel_size=3, upsample_kernel_size=2,
                                              norm_name="instance", res_block=True) for i in range(len(ch) - 1))
        self.final_up = UnetrUpBlock(3, ch[0], base, kernel_size=3, upsample_kernel_size=2, norm_name="instance", res_block=True)
        self.out = UnetOutBlock(3, base, out_channels)

    def forward(self, feats: list[Tensor], x: Tensor) -> Tensor:
        d = self.bottleneck(feats[-1])
        for i in range(len(feats) - 2, -1, -1):
            d = self.ups[i](d, self.skips[i](feats[i]))
        return self.out(self.final_up(d, self.stem(x)))


class Segmenter(nn.Module):
    """encoder pyramid (strides 2..2^L) + `UNetDecoder` -> (B, classes, X, Y, Z) logits.

    `prior`: for sigmoid outputs, the probability every output starts at (its bias is the prior's logit)."""

    def __init__(self, encoder: nn.Module, classes: int, base: int = 16, in_channels: int = 1,
                 prior: float | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = UNetDecoder(encoder.channels, classes, base, in_channels)
        if prior is not None:
            with torch.no_grad():
                self.decoder.out.conv.conv.bias.fill_(float(np.log(prior / (1 - prior))))

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder.pyramid(x), x)


def inflate_input(encoder: nn.Module, channels: int) -> int:
    """Widen the encoder's first convolution from 1 to `channels` input channels, each starting from the 1-channel
    weights divided by `channels` (so equal channels give the pretrained response). Returns its new in_channels."""
    from sslkit.domains.medical3d.model import input_conv

    first = input_conv(encoder)
    if channels == first.in_channels:
        return channels
    if first.in_channels != 1:
        from sslkit.core.errors import UserError

        raise UserError(f"the encoder was pretrained on {first.in_channels} input channels and the images have "
                        f"{channels} — give images with {first.in_channels} channels (with data.channel=all)")
    with torch.no_grad():
        first.weight = nn.Parameter(first.weight.repeat(1, channels, 1, 1, 1) / channels)
    first.in_channels = channels
    return channels


def dice_ce_loss(logits: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
    """(soft Dice + CE, soft Dice) for logits (B, K, ...) and labels (B, ...) with -1 = ignore."""
    k = logits.shape[1]
    logits = logits.float()
    ce = F.cross_entropy(logits, label, ignore_index=-1)
    valid = (label >= 0).unsqueeze(1).float()
    onehot = F.one_hot(label.clamp_min(0), k).movedim(-1, 1).float() * valid
    probs = logits.softmax(1) * valid
    dims = (0, 2, 3, 4)
    dice = (2 * (probs * onehot).sum(dims) + 1e-5) / (probs.sum(dims) + onehot.sum(dims) + 1e-5)
    soft = dice[1:].mean() if k > 1 else dice.mean()
    return ce + 1 - soft, soft


def region_loss(logits: Tensor, label: Tensor, members: Tensor) -> tuple[Tensor, Tensor]:
    """(BCE + soft Dice, soft Dice) of one sigmoid output per region, nnU-Net's region-based loss for nested tumour
    labels. logits (B, R, ...), class labels (B, ...) with -1 = ignore, `members` (K, R) 0/1: class k lies in
    region r. The Dice is computed over the whole batch per region and averaged over regions (no background)."""
    logits = logits.float()
    valid = (label >= 0).unsqueeze(1).float()
    target = members.float()[label.clamp_min(0)].movedim(-1, 1)                # (B, R, ...) multi-hot
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=valid, reduction="sum")
    bce = bce / (valid.sum() * logits.shape[1]).clamp_min(1.0)
    probs = logits.sigmoid() * valid
    dims = (0, *range(2, logits.dim()))
    dice = (2 * (probs * target).sum(dims) + 1e-5) / (probs.sum(dims) + (target * valid).sum(dims) + 1e-5)
    soft = dice.mean()
    return bce + 1 - soft, soft


class SegmentationTask(nn.Module):
    """fit() method: forward({"image", "label"}) -> (loss, metrics); `encoder` is what gets exported.

    The loss is Dice + CE over softmax classes, or with `members` (K, R) region-based: BCE + Dice of one sigmoid
    output per region (`region_loss`)."""

    def __init__(self, segmenter: Segmenter, spec: dict, encoder_lr_mult: float = 1.0, weight_decay: float = 0.0,
                 members: np.ndarray | None = None, mean_teacher: nn.Module | None = None) -> None:
        super().__init__()
        self.model = segmenter
        self.encoder = segmenter.encoder
        self.spec = spec
        self.encoder_lr_mult, self.weight_decay = encoder_lr_mult, weight_decay
        self.register_buffer("members", None if members is None else torch.as_tensor(members, dtype=torch.float32),
                             persistent=False)       # float: DDP broadcasts buffers, and gloo has no bool
        # `semisup.MeanTeacher` for batches with "unlabelled" crops: its teacher is checkpointed with the student
        # (its parameters do not train: requires_grad False keeps them out of the optimizer); `step` is a buffer so
        # that a resumed run continues the consistency ramp where it stopped
        self.mean_teacher = mean_teacher
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    def param_groups(self) -> list[dict]:
        """Pretrained encoder at lr × encoder_lr_mult, decoder at the base lr (fit() applies `lr_mult`)."""
        enc = {id(p) for p in self.encoder.parameters()}
        groups: list[dict] = []
        for is_enc, mult in ((True, self.encoder_lr_mult), (False, 1.0)):
            params = [p for p in self.parameters() if p.requires_grad and (id(p) in enc) == is_enc]
            decay = [p for p in params if p.ndim > 1]
            no_decay = [p for p in params if p.ndim <= 1]
            groups += [{"params": decay, "weight_decay": self.weight_decay, "lr_mult": mult},
                       {"params": no_decay, "weight_decay": 0.0, "lr_mult": mult}]
        return [g for g in groups if g["params"]]

    def encoder_spec(self) -> dict:
        return self.spec

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Supervised loss on the labelled crops; with "unlabelled" crops and a mean teacher, plus its (weighted)
        consistency loss on the student's logits of those crops (one forward pass for both: instance norm is per
        crop)."""
        image, unlabelled = batch["image"], batch.get("unlabelled")
        semi = unlabelled is not None and self.mean_teacher is not None
        logits = self.model(torch.cat([image, unlabelled]) if semi else image)
        if semi:
            logits, u_logits = logits[:len(image)], logits[len(image):]
        if self.members is not None:
            loss, soft = region_loss(logits, batch["label"], self.members)
        else:
            loss, soft = dice_ce_loss(logits, batch["label"])
        metrics = {"soft_dice": soft.detach()}
        if semi:
            consistency, extra = self.mean_teacher(u_logits, unlabelled, int(self.step))
            loss = loss + consistency
            metrics.update({"supervised": (loss - consistency).detach(), **{k: v.detach() for k, v in extra.items()}})
        return loss, metrics

    def after_step(self, step: int, total: int) -> None:  # noqa: ARG002
        """fit()'s hook: count the step; the mean teacher follows the student (EMA)."""
        self.step.fill_(step)
        if self.mean_teacher is not None:
            self.mean_teacher.update(self.model, step)


MIRRORS = [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]   # every flip of the three spatial axes


@torch.no_grad()
def probabilities(model: nn.Module, image: np.ndarray, roi: int, overlap: float, device: torch.device, bf16: bool,
                  tta: bool = False, sigmoid: bool = False) -> np.ndarray:
    """(K, X, Y, Z) float32 probabilities for a preprocessed (X, Y, Z) or (C, X, Y, Z) volume: the softmax (or, for
    a region-trained model, the sigmoid) of the Gaussian-weighted sliding-window logits.

    `tta`: nnU-Net's mirroring test-time augmentation — averaged over the volume flipped along every combination of
    its axes (8 passes), each flipped back."""
    from monai.inferers import sliding_window_inference

    from sslkit.domains.medical3d.transforms import channels_first

    x = channels_first(np.ascontiguousarray(image, dtype=np.float32))[None].to(device)
    total = None
    for dims in MIRRORS if tta else [()]:
        flipped = x.flip(dims) if dims else x
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = sliding_window_inference(flipped, (roi,) * 3, 2, model, overlap=overlap, mode="gaussian",
                                              padding_mode="constant")
        p = logits.float().sigmoid() if sigmoid else logits.float().softmax(1)
        p = p.flip(dims) if dims else p
        total = p if total is None else total + p
    return (total[0] / (len(MIRRORS) if tta else 1)).cpu().numpy()


def decode(probs: Sequence[np.ndarray], paint: list[tuple[int, int]] | None = None) -> np.ndarray:
    """Class map int16 from K channels of probabilities (a (K, ...) array, or any sequence read one channel at a time,
    such as `preprocess.FileGridProbabilities`): the argmax of softmax classes (the first on ties) or, for a
    region-trained model, `paint` [(output, class)]: in that order (largest region first), every voxel whose sigmoid
    for that output is over 0.5 takes that class."""
    out, best = None, None
    for channel, cls in paint or [(k, k) for k in range(len(probs))]:
        p = probs[channel]
        out = np.zeros(p.shape, dtype=np.int16) if out is None else out
        if paint is not None:
            out[p > 0.5] = cls
        elif best is None:
            best = np.array(p, dtype=np.float32)
        else:
            out[p > best] = cls
            np.maximum(best, p, out=best)
    return out


def clear_outside(probs: np.ndarray, image: np.ndarray, sigmoid: bool = False) -> np.ndarray:
    """(K, X, Y, Z) probabilities set to certain background (class 0, or no region with `sigmoid`) outside the
    image's filled foreground, in place; returns them.

    The foreground is the non-zero voxels of the preprocessed image (air scales to exactly 0; channels: non-zero in
    any of them) with enclosed holes filled (ventricles, dark CSF), as nnU-Net's non-zero mask. For skull-stripped
    MRI; wrong for targets that are air-filled and open to the outside (lungs, airways in CT)."""
    from scipy.ndimage import binary_fill_holes

    outside = ~binary_fill_holes((image > 0).any(axis=0) if image.ndim == 4 else image > 0)
    probs[:, outside] = 0.0
    if not sigmoid:
        probs[0, outside] = 1.0
    return probs


def largest_component(pred: np.ndarray) -> np.ndarray:
    """`pred` with every foreground voxel (any class > 0) outside the largest connected part of the foreground set to
    background; parts touch by faces, edges or corners (26-connectivity). nnU-Net's "keep the largest foreground
    component" postprocessing: stray false positives far from the object go, the object's classes stay."""
    from scipy.ndimage import label

    parts, n = label(pred > 0, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return pred
    largest = np.bincount(parts.ravel())[1:].argmax() + 1
    return np.where(parts == largest, pred, 0).astype(pred.dtype)


def surface_distances(pred: np.ndarray, label: np.ndarray, classes: int, spacing: list[float],
                      region: np.ndarray | None = None) -> tuple[list[float], list[float]]:
    """(95th-percentile symmetric Hausdorff distance, average symmetric surface distance) in mm for classes 1..K-1,
    MONAI's `compute_hausdorff_distance` and `compute_average_surface_distance` on the `spacing` grid, optionally
    inside a boolean region (both maps are cleared outside it, so the cut surfaces coincide). NaN where the class is
    missing from the prediction or the reference (its Dice says which)."""
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    if region is not None:
        pred, label = np.where(region, pred, 0), np.where(region, label, 0)
    ks = np.arange(classes)[:, None, None, None]
    onehot = [torch.from_numpy(a[None] == ks)[None] for a in (pred, label)]          # (1, K, X, Y, Z) bool
    mm = [float(s) for s in spacing]
    with warnings.catch_warnings():   # MONAI warns for every class absent from one map: NaN says it here
        warnings.simplefilter("ignore")
        hd = compute_hausdorff_distance(*onehot, include_background=False, percentile=95, spacing=mm)[0]
        asd = compute_average_surface_distance(*onehot, include_background=False, symmetric=True, spacing=mm)[0]
    present = [(pred == c).any() and (label == c).any() for c in range(1, classes)]

    def clean(values: Tensor) -> list[float]:
        return [float(h) if ok and np.isfinite(float(h)) else float("nan") for h, ok in zip(values.tolist(), present)]

    return clean(hd), clean(asd)


def dice_per_class(pred: np.ndarray, label: np.ndarray, classes: int, region: np.ndarray | None = None) -> list[float]:
    """Hard Dice for classes 1..K-1 (NaN where the class is absent from both), optionally inside a boolean region."""
    if region is not None:
        pred, label = pred[region], label[region]
    out = []
    for c in range(1, classes):
        p, t = pred == c, label == c
        denom = p.sum() + t.sum()
        out.append(float(2 * (p & t).sum() / denom) if denom else float("nan"))
    return out
