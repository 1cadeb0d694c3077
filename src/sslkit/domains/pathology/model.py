"""Tile encoders: timm Vision Transformers that carry their own input normalisation.

`encoder(x)` takes normalised float tiles (B, 3, H, W) and returns (B, D) features: the CLS token after the final
norm (timm's `global_pool="token"`, what public pathology encoders such as UNI export), or CLS concatenated with the
mean patch token (`pool="cls+mean"`, D = 2·width). `encoder.preprocess(uint8 (B, 3, H, W))` turns tiles as read
into that input. Built with `timm.create_model(pretrained=False)`: nothing is downloaded. Registered in `ENCODERS`
for `sslkit.load_encoder`.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)   # the statistics UNI, Virchow and most public H&E encoders normalise with
IMAGENET_STD = (0.229, 0.224, 0.225)
POOLS = ("cls", "cls+mean")


class ViTEncoder(nn.Module):
    """A timm ViT as a tile encoder: (B, 3, H, W) normalised -> (B, D).

    arch: timm model name (e.g. vit_small_patch16_224); img_size/patch_size/embed_dim/depth/num_heads override the
    architecture's defaults (None keeps them). `dynamic_img_size` lets DINO's small local crops through the same
    network (position embeddings are interpolated). The state dict is the timm model's under `vit.`.
    """

    def __init__(self, arch: str = "vit_small_patch16_224", img_size: int = 224, patch_size: int | None = None,
                 embed_dim: int | None = None, depth: int | None = None, num_heads: int | None = None,
                 pool: str = "cls", mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        import timm

        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.arch, self.pool = arch, pool
        self.model_args = timm_model_args(img_size, patch_size, embed_dim, depth, num_heads)
        self.vit = timm.create_model(arch, pretrained=False, num_classes=0, drop_path_rate=drop_path_rate,
                                     **self.model_args)
        self.width = int(self.vit.embed_dim)
        self.out_dim = self.width * (2 if pool == "cls+mean" else 1)
        self.patch_size = int(self.vit.patch_embed.patch_size[0])
        self.img_size = img_size
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, tiles: Tensor) -> Tensor:
        """uint8 (B, 3, H, W) as read from a slide -> float (B, 3, H, W) normalised with this encoder's mean/std."""
        if tiles.dim() != 4 or tiles.shape[1] != 3:
            raise ValueError(f"preprocess expects uint8 tiles (B, 3, H, W), got shape {tuple(tiles.shape)}")
        x = tiles.float() / 255.0 if tiles.dtype == torch.uint8 else tiles.float()
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def tokens(self, x: Tensor, mask: Tensor | None = None, mask_token: Tensor | None = None) -> Tensor:
        """(B, 3, H, W) -> (B, 1 + N, width): the CLS and patch tokens after the final norm.

        mask: bool (B, N), N = (H/patch)·(W/patch) in row-major order; True patches are replaced by `mask_token`
        (width,) after the patch embedding and before the position embedding (iBOT/DINOv2's masked student input).
        """
        # timm's fused attention (F.scaled_dot_product_attention) in fp32 and on CUDA; under bf16 autocast on a CPU
        # its materialised path (bf16 matmuls): DINO step 1.13x -> 1.69x over fp32 (docs/performance.md)
        fused = not (x.device.type == "cpu" and torch.is_autocast_enabled("cpu"))
        for block in self.vit.blocks:
            block.attn.fused_attn = fused
        if mask is None:
            return self.vit.forward_features(x)
        if mask_token is None:
            raise ValueError("tokens(mask=...) needs the mask_token (width,) that replaces the masked patches")
        v = self.vit
        p = v.patch_embed(x)                         # (B, h, w, width) with dynamic_img_size, else (B, N, width)
        if mask.shape != (p.shape[0], p[0, ..., 0].numel()):
            raise ValueError(f"mask must be (B, N) = ({p.shape[0]}, {p[0, ..., 0].numel()}) for this input, got "
                             f"{tuple(mask.shape)}")
        p = torch.where(mask.view(p.shape[:-1]).unsqueeze(-1), mask_token.to(p.dtype), p)
        p = v.norm_pre(v.patch_drop(v._pos_embed(p)))
        return v.norm(v.blocks(p))

    def n_patches(self, px: int) -> int:
        """Patch tokens of a px × px crop."""
        return (px // self.patch_size) ** 2

    def patch_tokens(self, tokens: Tensor) -> Tensor:
        """(B, 1 + N, width) from `tokens` -> (B, N, width), the prefix (CLS) tokens dropped."""
        return tokens[:, self.vit.num_prefix_tokens:]

    def pool_tokens(self, tokens: Tensor) -> Tensor:
        """(B, 1 + N, width) from `tokens` -> (B, out_dim): CLS, or CLS ⊕ mean patch token."""
        cls = tokens[:, 0]
        if self.pool == "cls":
            return cls
        return torch.cat([cls, self.patch_tokens(tokens).mean(dim=1)], dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) normalised -> (B, out_dim)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"the tile encoder expects (B, 3, H, W) images, got shape {tuple(x.shape)}")
        return self.pool_tokens(self.tokens(x))

    def timm_state_dict(self) -> dict[str, Tensor]:
        """The weights as `timm.create_model(arch, num_classes=0, **model_args)` names them."""
        return {k: v for k, v in self.vit.state_dict().items()}


def timm_model_args(img_size: int, patch_size: int | None, embed_dim: int | None, depth: int | None,
                    num_heads: int | None) -> dict[str, Any]:
    """The keyword arguments of timm.create_model that rebuild this ViT (also written to a timm export's config)."""
    args: dict[str, Any] = {"img_size": img_size, "dynamic_img_size": True}
    for name, value in (("patch_size", patch_size), ("embed_dim", embed_dim), ("depth", depth),
                        ("num_heads", num_heads)):
        if value is not None:
            args[name] = value
    return args


def vit_encoder(**kwargs: Any) -> ViTEncoder:
    return ViTEncoder(**kwargs)


class GatedAttentionMIL(nn.Module):
    """ABMIL with gated attention: bags (B, N, D) + mask (B, N) -> (logits (B, C), attention (B, N))."""

    def __init__(self, in_dim: int, n_classes: int = 2, hidden: int = 128, attn_dim: int = 64,
                 dropout: float = 0.25) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attn_v = nn.Linear(hidden, attn_dim)
        self.attn_u = nn.Linear(hidden, attn_dim)
        self.attn_w = nn.Linear(attn_dim, 1)
        self.classifier = nn.Linear(hidden, n_classes)

    def forward(self, bags: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        h = self.embed(bags)                                                     # (B, N, H)
        scores = self.attn_w(torch.tanh(self.attn_v(h)) * torch.sigmoid(self.attn_u(h))).squeeze(-1)
        a = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)      # (B, N); padding gets 0
        return self.classifier((a.unsqueeze(-1) * h).sum(1)), a


def pad_bags(bags: list[np.ndarray]) -> tuple[Tensor, Tensor]:
    """List of (n_i, D) -> (B, max n, D) zero-padded and a (B, max n) bool mask of real tiles."""
    n = max(len(b) for b in bags)
    x = torch.zeros(len(bags), n, bags[0].shape[1])
    mask = torch.zeros(len(bags), n, dtype=torch.bool)
    for i, b in enumerate(bags):
        x[i, : len(b)] = torch.as_tensor(b, dtype=torch.float32)
        mask[i, : len(b)] = True
    return x, mask


ENCODERS: dict[str, Callable[..., nn.Module]] = {"vit": vit_encoder}


def tile_batches(dataset: Any, batch_size: int = 64, num_workers: int = 0) -> Any:
    """uint8 (B, 3, P, P) batches of a TileDataset (transform None), in order (stacked with numpy: data.collate_tiles)."""
    from torch.utils.data import DataLoader

    from sslkit.domains.pathology.data import collate_tiles

    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_tiles)


@torch.no_grad()
def embed_batch(encoder: nn.Module, tiles: Tensor, device: torch.device | str = "cpu") -> Tensor:
    """uint8 (B, 3, P, P) -> float32 (B, D) on the CPU, the encoder in eval mode on `device` (bf16 autocast on CUDA)."""
    device = torch.device(device)
    x = encoder.preprocess(tiles.to(device))
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        return encoder(x).float().cpu()


def random_twin(encoder: nn.Module, seed: int = 0) -> nn.Module:
    """The same architecture with freshly initialised weights (the 'random weights' baseline), eval mode."""
    from sslkit.core.export import build_encoder

    config = getattr(encoder, "sslkit_config", None)
    if config is None:
        raise ValueError("random_twin needs an encoder loaded with sslkit.load_encoder (it reads its config)")
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        twin = build_encoder(config)
    finally:
        torch.random.set_rng_state(state)
    return twin.eval()
