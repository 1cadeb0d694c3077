"""The medical3d recipe: data preprocessing, encoder, the two SSL methods and fine-tuning settings."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional, Union

from pydantic import Field, NonNegativeInt, PositiveInt

from sslkit.core.recipes import Recipe, Section, TrainConfig

if TYPE_CHECKING:
    from sslkit.core.runs import Run


class DataConfig(Section):
    """Preprocessing (enters the cache key) and cropping."""

    modality: Literal["ct", "mri", "auto"] = "auto"                   # auto: per volume, ct when it holds air (< -500)
    spacing: Optional[tuple[float, float, float]] = (1.5, 1.5, 2.0)   # mm; null keeps the file's spacing (Alice: no resampling)
    hu_window: tuple[float, float] = (-1000.0, 1000.0)               # CT only: HU clipped then scaled to [0, 1]
    percentiles: tuple[float, float] = (0.5, 99.5)                    # MRI only: mapped to [0, 1]
    crop_foreground: bool = True
    foreground_threshold: float = 0.05
    roi: int = 96                                                     # crop side in voxels
    samples_per_volume: int = 4                                       # crops drawn per volume per epoch
    pair_jitter: float = 0.05                                         # Alice: match jitter, fraction of roi
    cache_dir: Optional[str] = None                                   # default $SSLKIT_CACHE_DIR or ~/.cache/sslkit
    strict: bool = False                                              # true: a bad file stops the run
    # 4-D files: channel N; "split": each channel its own volume (pretrain, embed); "all": every channel at once,
    # the encoder's input channels; null: refused
    channel: Union[NonNegativeInt, Literal["split", "all"], None] = None


class ModelConfig(Section):
    encoder: Literal["conv3d", "swin"] = "conv3d"
    size: Literal["tiny", "small", "base"] = "base"                  # conv3d widths (model.SIZES)
    blocks: int = 1                                                   # residual blocks per conv3d stage
    feature_size: int = 48                                            # swin embed dim (card: 48)
    depths: list[int] = Field(default_factory=lambda: [2, 2, 2, 2])
    num_heads: list[int] = Field(default_factory=lambda: [3, 6, 12, 24])
    window_size: int = 7
    in_channels: PositiveInt = 1      # the images' channels: pretrain sets it from the data (data.channel=all)


class AliceConfig(Section):
    """Alice (ICCV'23) settings; defaults from METHODS.md 1b."""

    out_dim: int = 512                # DINO head output, class token
    patch_out_dim: int = 512          # DINO head output, patch tokens
    head_hidden: int = 2048
    head_bottleneck: int = 256
    casa_heads: int = 8
    mask_ratio: float = 0.75
    mask_patch: int = 16
    mask_columns: bool = True         # mask drawn on (X, Y), repeated along Z as in Alice's code
    student_temp: float = 0.1
    teacher_temp: float = 0.01
    warmup_teacher_temp: float = 0.008
    warmup_teacher_temp_steps: int = 3000   # card: 30 epochs; in steps here
    center_momentum: float = 0.9
    centering: Literal["center", "sinkhorn"] = "center"   # sinkhorn: DINOv2's Sinkhorn-Knopp targets (small batches)
    ema_start: float = 0.996
    ema_end: float = 1.0
    global_weight: float = 1.0        # λ1
    patch_weight: float = 1.0         # λ2
    recon_weight: float = 10.0        # λ3 (reconstruction on masked voxels only, unlike the code's whole volume)
    recon_decoder: Literal["linear", "unet"] = "linear"  # unet: skip decoder at full resolution (the card's U-shaped
                                                        # student); linear: SimMIM voxel-shuffle of the deepest map
    recon_target: Literal["raw", "patch_norm"] = "raw"  # patch_norm: each mask_patch³ cell of the target standardised
                                                        # on its own (MAE's norm_pix_loss)


class SwinSSLConfig(Section):
    """SwinUNETR-SSL settings; defaults from METHODS.md 1a."""

    contrast_dim: int = 512
    temperature: float = 0.5
    cutout_max_frac: float = 0.3
    cutout_max_side: float = 0.25
    rot_weight: float = 1.0
    contrast_weight: float = 1.0
    recon_weight: float = 1.0


class AugmentConfig(Section):
    """Fine-tuning augmentation (`finetune.augment: true`), nnU-Net's and MONAI's usual 3-D segmentation set: spatial
    transforms move image and label together (labels by nearest neighbour); intensity ones touch the image only.
    Probabilities are per crop."""

    flip: float = Field(0.5, ge=0, le=1)             # per axis (MONAI RandFlipd, nnU-Net mirroring)
    rot90: float = Field(0.5, ge=0, le=1)            # k·90°, k in 1..3, in the X-Y plane (MONAI RandRotate90d)
    affine: float = Field(0.2, ge=0, le=1)           # a small rotation about each axis and a scaling (nnU-Net: 0.2)
    rotate_deg: float = Field(15.0, ge=0, le=180)    # |angle| about each axis
    scale: tuple[float, float] = (0.85, 1.15)        # zoom factor range (nnU-Net 0.7-1.4; narrower for small crops)
    intensity_scale: float = Field(0.1, ge=0, lt=1)  # image × U(1 - s, 1 + s), every crop (MONAI BraTS tutorial)
    intensity_shift: float = Field(0.1, ge=0)        # image + U(-s, s), every crop (MONAI BraTS tutorial)
    gamma: tuple[float, float] = (0.7, 1.5)          # image ** γ on its [0, 1] range (nnU-Net)
    gamma_p: float = Field(0.3, ge=0, le=1)
    noise_std: float = Field(0.05, ge=0)             # Gaussian noise, σ ~ U(0, noise_std) (nnU-Net: variance 0.1)
    noise_p: float = Field(0.15, ge=0, le=1)


class SemiSupConfig(Section):
    """`finetune --unlabelled`: mean-teacher consistency on unlabelled crops (UA-MT, Yu et al. MICCAI 2019; its
    defaults). Each labelled crop of a batch comes with one unlabelled crop."""

    ema_decay: float = Field(0.99, ge=0, lt=1)       # teacher = EMA of the student (UA-MT: 0.99)
    weight: float = Field(0.1, ge=0)                 # consistency weight after the ramp (UA-MT: 0.1)
    rampup_steps: Optional[int] = Field(None, ge=0)  # sigmoid ramp-up of the weight; null: 40% of finetune.steps
    uncertainty: bool = True                         # UA-MT: only voxels the teacher is certain of count
    passes: int = Field(8, ge=1)                     # UA-MT: T = 8 noisy teacher passes to estimate the uncertainty
    noise: float = Field(0.1, ge=0)                  # teacher input noise σ, clipped at ±2σ (UA-MT)
    threshold_start: float = Field(0.75, ge=0)       # uncertainty threshold ramp, × ln(classes) (UA-MT: 0.75 -> 1)
    threshold_end: float = Field(1.0, ge=0)


class FinetuneConfig(Section):
    """`medical3d finetune`: segmentation with the pretrained encoder and a UNETR-style decoder."""

    steps: int = 500
    batch_size: int = 2
    lr: float = 1e-4
    encoder_lr_mult: float = 1.0
    weight_decay: float = 1e-5
    warmup_steps: int = 20
    roi: int = 96
    samples_per_volume: int = 8
    decoder_channels: int = 16
    sw_overlap: float = 0.5           # sliding-window overlap at inference (nnU-Net, MONAI: 0.5)
    transfer_decoder: bool = True      # also start the decoder from the pretraining run's U-Net reconstruction decoder
    label_fraction: float = Field(0.5, gt=0.0, le=0.5)   # one labelled volume: share of its x extent that trains
    augment: bool = True               # spatial + intensity augmentation, `finetune.aug` (nnU-Net / MONAI practice)
    aug: AugmentConfig = Field(default_factory=AugmentConfig)
    # share of crops centred on a labelled voxel, the rest on a background voxel (MONAI RandCropByPosNegLabeld
    # pos / (pos + neg)); 0.5 is pos = neg = 1
    pos_fraction: float = Field(0.5, ge=0, le=1)
    semisup: SemiSupConfig = Field(default_factory=SemiSupConfig)
    foreground_mask: bool = False      # predictions outside the filled non-zero image are background (skull-stripped MRI)
    keep_largest: bool = False         # only the largest connected part of the predicted foreground is kept (nnU-Net's
                                       # postprocessing; for one object per scan, e.g. a tumour; not scattered lesions)
    seed: int = 0
    precision: Literal["auto", "bf16", "fp32"] = "fp32"   # fp32: bf16 conv3d backward overflowed on CPU (oneDNN)
    tta: bool = False                  # held-out predictions averaged over the 8 mirrorings of the volume (nnU-Net)
    # also score unions of label values, e.g. BraTS {WT: [1, 2, 4], TC: [1, 4], ET: [4]} (Decathlon: [1, 2, 3], ...)
    regions: dict[str, list[int]] = Field(default_factory=dict)
    # true: train one sigmoid output per region instead of softmax classes (nnU-Net's region-based training for
    # nested tumour labels); predictions paint the regions largest first, each with the one value it adds
    region_training: bool = False


class Medical3DRecipe(Recipe):
    domain: Literal["medical3d"] = "medical3d"
    method: Literal["alice", "swinunetr-ssl"] = "alice"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    alice: AliceConfig = Field(default_factory=AliceConfig)
    swin: SwinSSLConfig = Field(default_factory=SwinSSLConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)


class FinetuneRecipe(Recipe):
    """What a finetune run folder records: the pretraining recipe's data/model plus the fit settings used."""

    domain: Literal["medical3d"] = "medical3d"
    method: Literal["finetune"] = "finetune"
    pretrained: Optional[str] = None
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    classes: int = 2
    label_values: Optional[list[int]] = None   # the label files' values of classes 0..K-1, when not 0..K-1 themselves


def finetune_train_config(base: TrainConfig, ft: FinetuneConfig) -> TrainConfig:
    """The fit() settings of a fine-tuning run, derived from the `finetune` section."""
    return base.model_copy(update={"steps": ft.steps, "batch_size": ft.batch_size, "micro_batch_size": None,
                                   "lr": ft.lr, "lr_scale_batch": None, "weight_decay": ft.weight_decay,
                                   "warmup_steps": ft.warmup_steps, "seed": ft.seed, "schedule": "cosine",
                                   "checkpoint_every": max(1, min(base.checkpoint_every, ft.steps)),
                                   "precision": ft.precision, "log_every": max(1, min(10, ft.steps // 10))})


def pretraining_run(run: Path, command: str) -> Run:
    """The pretraining run that `command` (embed, finetune) reads; a fine-tuning run there is refused, naming the run
    it was fine-tuned from (its recipe would not validate as a pretraining recipe)."""
    from sslkit.core.errors import UserError
    from sslkit.core.runs import Run

    loaded = Run.load(run, "medical3d")
    if (recipe := loaded.recipe_dict).get("method") == "finetune":
        origin = recipe.get("pretrained")
        raise UserError(f"{loaded.dir} is a fine-tuning run (written by `medical3d finetune`) — {command} needs the "
                        + (f"pretraining run it started from, {origin}" if origin else "folder `medical3d pretrain` "
                           "wrote (this one was fine-tuned --from-scratch)"))
    return loaded
