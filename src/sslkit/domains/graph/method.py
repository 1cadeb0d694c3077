"""SCGC / SCGC* (influence-augmented contrastive graph clustering) and the GRACE baseline.

SCGC (Kulatilleke et al., arXiv:2204.08504; gayanku/SCGC): an MLP encoder on node features, a
neighbour-contrastive loss whose positives are weighted by a graph mask M (A^r for SCGC,
Σ_{k≤r} A^k for SCGC*), and DEC's Student-t clustering head with a sharpened KL target.
GRACE (Zhu et al., arXiv:2006.04131): a GCN trained with NT-Xent between two edge-dropped,
feature-masked views.
"""
from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from sslkit.core.export import encoder_spec
from sslkit.core.losses.dec import DECLoss
from sslkit.core.losses.nt_xent import nt_xent
from sslkit.core.recipes import Recipe, Section
from sslkit.domains.graph.model import GCNEncoder, SCGCEncoder, sparse_csr

METHODS = ("scgc-star", "scgc", "grace")
Width = Annotated[int, Field(ge=1)]
Probability = Annotated[float, Field(ge=0, le=1)]


class GraphData(Section):
    feature_norm: Literal["row", "standard", "none"] = "row"  # row: bag-of-words rows sum to 1
    hops: int | None = None            # low-pass propagation Â^hops X for SCGC; None = chosen from structure
    input_norm: Literal["l2", "none"] = "l2"  # SCGC: unit-length rows of Â^hops X (cosine geometry)
    identity_max_nodes: int = Field(5000, ge=0)  # no features: one-hot node features up to this many nodes (0: never)
    structural_dim: int = Field(32, ge=0)  # no features, above identity_max_nodes: width of the diffusion features
    full_batch: Literal["auto"] | bool = "auto"
    full_batch_max_nodes: int = Field(8000, ge=0)  # auto: full batch up to this many nodes, node mini-batches above
    fanout: int = Field(4, ge=0)       # mini-batches: random neighbours added per seed node

    @field_validator("hops")
    @classmethod
    def _hops(cls, v: int | None) -> int | None:
        if v is not None and not 0 <= v <= 32:
            raise ValueError("data.hops must be between 0 and 32 (or null for automatic)")
        return v


class GraphModel(Section):
    hidden: list[Width] = Field(default_factory=lambda: [500, 500, 2000])  # SCGC MLP widths ([]: linear); GRACE: hidden[0]
    out_dim: int = Field(10, ge=1)
    branches: Literal[1, 2] = 1  # SCGC: 2 = two unshared encoders (two views), their normalised outputs averaged
    proj_dim: int = Field(128, ge=1)  # GRACE projection head


class GraphLoss(Section):
    objective: Literal["infonce", "mse"] = "infonce"  # SCGC's L_NC, or the MSE between cross-view cosines and the mask
    alpha: float = Field(1.0, ge=0)  # weight of the neighbour loss (either objective)
    noise: float = Field(0.0, ge=0)  # mse: σ of Gaussian noise on the second view's normalised embedding
    beta: float = Field(0.1, ge=0)   # weight of KL(P‖Q)
    r: int | Literal["auto"] = 1  # mask order; auto: the largest r ≤ r_max whose mean r-hop neighbourhood is ≤ 2·N/K
    r_max: int = Field(2, ge=1, le=8)  # the largest order "auto" may choose
    tau: float = 0.25         # multiplies the cosine similarity (an inverse temperature), as in SCGC
    recon_weight: float = Field(1.0, ge=0)  # SCGC (not SCGC*) MSE reconstruction
    cluster_warmup: int = Field(50, ge=0)   # steps of contrastive-only training before k-means sets the centroids
    centroid_lr_mult: float = Field(1.0, ge=0)  # the centroids' lr relative to the encoder's (Adam ignores β's scale)
    kernel_scale: float = Field(1.0, gt=0)  # Student-t q ∝ (1 + scale·d²)^-1; >1 sharpens q on unit-length embeddings
    drop_edge: tuple[Probability, Probability] = (0.2, 0.4)     # GRACE
    drop_feature: tuple[Probability, Probability] = (0.3, 0.4)  # GRACE
    temperature: float = Field(0.4, gt=0)                       # GRACE NT-Xent temperature

    @field_validator("tau")
    @classmethod
    def _tau(cls, v: float) -> float:
        if not 0 < v <= 30:
            raise ValueError("loss.tau must be in (0, 30]")
        return v

    @field_validator("r")
    @classmethod
    def _r(cls, v: int | str) -> int | str:
        if v != "auto" and not 1 <= v <= 8:
            raise ValueError("loss.r must be between 1 and 8, or auto")
        return v


class GraphEmbedding(Section):
    # How sslkit reads the encoder's outputs as node embeddings (embed, evaluate, the cluster map): centred, projected
    # onto the principal directions that hold this fraction of their variance, then L2-normalised. null = the plain
    # L2-normalised outputs. SCGC*'s outputs share one dominant direction (their unit rows average to length ~0.97 on
    # Cora), which plain normalisation keeps and centring removes.
    pca_variance: float | None = Field(0.9, gt=0, le=1)
    # When fewer than K−1 principal directions (K = clusters) hold pca_variance, the projection drops part of what
    # separates K clusters (their centres span K−1): "plain" then reads the plain L2-normalised outputs, "pca" projects
    # anyway. Without a K (GRACE, no --clusters) the PCA reading is used.
    too_few_directions: Literal["plain", "pca"] = "pca"


class GraphRecipe(Recipe):
    domain: Literal["graph"] = "graph"
    method: Literal["scgc-star", "scgc", "grace"] = "scgc-star"
    clusters: int | None = Field(None, ge=2)  # K of the clustering head (set with --clusters)
    data: GraphData = Field(default_factory=GraphData)
    model: GraphModel = Field(default_factory=GraphModel)
    loss: GraphLoss = Field(default_factory=GraphLoss)
    embedding: GraphEmbedding = Field(default_factory=GraphEmbedding)


RECIPE_SCHEMA = GraphRecipe


def neighbour_mse(z1: Tensor, z2: Tensor, support_crow: Tensor, support_col: Tensor) -> Tensor:
    """Neighbour-oriented MSE (Liu et al., arXiv:2205.07865): mean_ij (cos(z1_i, z2_j) − T_ij)², T = 1 on the
    mask's support (self included when the mask has self-loops), 0 elsewhere. z1, z2: (B, D) views of the same
    B nodes; the support as CSR rows/columns (each pair once), as `mask_tensors` gives it. Pulls r-hop
    neighbours together across views and pushes every other pair towards orthogonal.

    Computed without the (B, B) cosine matrix S = Z1·Z2ᵀ: Σ S² = Σ (Z1ᵀZ1) ∘ (Z2ᵀZ2) (two D×D Gram matrices)
    and Σ_T S = Σ Z1 ∘ (T·Z2) (one sparse product), so a step costs O(B·D² + P·D) time and O(B·D + D²)
    memory instead of O(B²·D) and O(B²).
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"neighbour_mse expects two (B, D) views of the same shape; got {tuple(z1.shape)}, {tuple(z2.shape)}")
    n, pairs = z1.shape[0], support_col.numel()
    with torch.autocast(z1.device.type, enabled=False):  # fp32: the sums cancel, and CSR products lack bf16 kernels
        a, b = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
        target = sparse_csr(support_crow, support_col, torch.ones(pairs, device=a.device), (n, n))
        return (GramProduct.apply(a, b) - 2.0 * (a * (target @ b)).sum() + pairs) / (n * n)


class GramProduct(torch.autograd.Function):
    """Σ_ij (a_i·b_j)² = Σ (aᵀa) ∘ (bᵀb) for a, b (B, D), with the gradients 2·a·(bᵀb) and 2·b·(aᵀa) written out:
    four (B, D)×(D, D)-sized products per step where autograd's backward of aᵀa takes two for each side."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:  # noqa: ANN001
        ga, gb = a.T @ a, b.T @ b
        ctx.save_for_backward(a, b, ga, gb)
        return (ga * gb).sum()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:  # noqa: ANN001
        a, b, ga, gb = ctx.saved_tensors
        return 2.0 * grad * (a @ gb), 2.0 * grad * (b @ ga)


def neighbour_contrastive(z: Tensor, pos_index: Tensor, pos_weight: Tensor, tau: float) -> Tensor:
    """SCGC's L_NC = −mean_i log(Σ_j M_ij e^{τ s_ij} / Σ_j e^{τ s_ij}), s = cosine with s_ii := 0.

    z: (B, D); the mask M (B, B) is sparse: pos_index (2, P) rows/cols with weights pos_weight (P,).
    Rows without positive weight are skipped. Only the denominator touches all B² pairs.
    """
    zn = F.normalize(z.float(), dim=1)
    n = zn.shape[0]
    rows, cols = pos_index[0], pos_index[1]
    sim = zn @ zn.T
    s_pos = sim.reshape(-1)[rows * n + cols]  # a gather of P scalars, cheaper than P dot products
    s_pos = torch.where(rows == cols, torch.zeros_like(s_pos), s_pos)
    num = torch.zeros(n, device=z.device).index_add_(0, rows, pos_weight.float() * torch.exp(tau * s_pos))
    lse = torch.logsumexp(tau * sim, dim=1)  # includes e^{τ s_ii} = e^τ; swapped for 1 below
    log_den = torch.log(torch.exp(lse) - math.exp(tau) + 1.0)
    has_pos = num > 0
    return -(torch.log(num[has_pos]) - log_den[has_pos]).mean()


def soft_assignment(z: Tensor, centroids: Tensor, scale: float = 1.0) -> Tensor:
    """DEC's Student-t q (N, K), q_ij ∝ (1 + scale·‖z_i − μ_j‖²)^-1, with distances from one matmul:
    the same values as core's `student_t_assignment` (α = 1, scale 1) without torch.cdist, which is slow on CPU.
    `scale` reads the distances in units of 1/√scale: on unit-length embeddings (distances ≤ 2) scale 1 leaves
    q nearly uniform, so the KL target barely sharpens anything."""
    sq = (z.pow(2).sum(1, keepdim=True) + centroids.pow(2).sum(1) - 2.0 * z @ centroids.T).clamp_min(0.0)
    kernel = 1.0 / (1.0 + scale * sq)
    return kernel / kernel.sum(1, keepdim=True)


def kmeans_init(z: Tensor, k: int) -> Tensor:
    """Centroids (K, D) from scikit-learn k-means on z (N, D), seeded from the torch RNG (seeded by fit)."""
    from sklearn.cluster import KMeans

    seed = int(torch.randint(0, 2**31 - 1, (1,)))
    km = KMeans(k, n_init=10, random_state=seed).fit(z.detach().float().cpu().numpy())
    return torch.from_numpy(km.cluster_centers_).to(z.device, torch.float32)


def sharded_views(encoder: SCGCEncoder, x: Tensor) -> list[Tensor]:
    """`encoder.views(x)` for a block x (M, D) that every process holds alike: process p encodes rows
    [p·c, (p+1)·c) (c = ⌈M/P⌉, the last slice zero-padded to c), and the slices are gathered with their gradients
    (`core.distributed.gather_with_grad`). Every process then holds the one-process views and computes the one-process
    loss; the gather's backward hands each process the whole gradient of its own slice, and DDP's average over the P
    identical losses gives one process's gradient. One process: plain `views`."""
    from sslkit.core import distributed

    world = distributed.world_size()
    if world == 1:
        return [v.float() for v in encoder.views(x)]
    m, rank = x.shape[0], torch.distributed.get_rank()
    per = -(-m // world)
    part = x[rank * per:(rank + 1) * per]
    if part.shape[0] < per:
        part = F.pad(part, (0, 0, 0, per - part.shape[0]))
    views = [v.float() for v in encoder.views(part)]
    full = distributed.gather_with_grad(torch.cat(views, dim=1))[:m]
    return list(full.chunk(len(views), dim=1))


def step_noise(like: Tensor, seed: Tensor | None) -> Tensor:
    """Standard normal noise shaped like `like`, drawn from the batch's "seed" (the same on every process, see
    `batches.step_seed`) so P processes add the noise one process adds; without a seed, from torch's own state."""
    if seed is None:
        return torch.randn_like(like)
    gen = torch.Generator(device=like.device).manual_seed(int(seed))
    return torch.randn(like.shape, generator=gen, device=like.device, dtype=like.dtype)


class SCGC(nn.Module):
    """forward({"x": (B, D) smoothed features, and the mask as `mask_tensors` gives it}) -> (loss, metrics).

    cumulative=True is SCGC* (IAC mask, no decoder); False is SCGC (A^r mask + reconstruction).
    """

    loss_terms = ("loss_nc", "loss_rec", "loss_kl")

    def __init__(self, in_dim: int, hops: int, clusters: int | None, model: GraphModel, loss: GraphLoss,
                 cumulative: bool = True) -> None:
        super().__init__()
        self.in_dim, self.hops, self.cfg, self.lcfg, self.cumulative = in_dim, hops, model, loss, cumulative
        self.encoder = SCGCEncoder(in_dim, model.hidden, model.out_dim, hops, model.branches)
        self.decoder = None
        if not cumulative:
            dims = [model.out_dim, *reversed(model.hidden), in_dim]
            layers: list[nn.Module] = []
            for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
                layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(dims) - 2 else [])
            self.decoder = nn.Sequential(*layers)
        self.clusters = clusters
        self.centroids = nn.Parameter(torch.zeros(clusters or 1, model.out_dim))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))
        self.kl = DECLoss()

    def _maybe_init_centroids(self, z: Tensor) -> None:
        if not self.clusters or bool(self.ready) or int(self.step) < self.lcfg.cluster_warmup:
            return
        with torch.no_grad():
            self.centroids.copy_(kmeans_init(z, self.clusters))
            if torch.distributed.is_initialized():
                torch.distributed.broadcast(self.centroids.data, src=0)
            self.ready.fill_(True)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        x = batch["x"]
        if "x0" in batch:  # full batch, linear branches: weights before the filter (same values, cheaper)
            views = self.encoder.lowpass_views(batch["x0"], batch["adj"], batch["row_scale"], batch.get("x0_t"))
        elif "shard" in batch:  # a node block that every process holds: each encodes its slice
            views = sharded_views(self.encoder, x)
        else:
            views = [v.float() for v in self.encoder.views(x)]
        z = self.encoder.fuse(views)  # the embedding the exported encoder returns
        if self.lcfg.objective == "mse":
            z1, z2 = F.normalize(views[0], dim=1), F.normalize(views[-1], dim=1)
            if self.lcfg.noise:
                z2 = z2 + self.lcfg.noise * step_noise(z2, batch.get("seed"))
            l_nc = neighbour_mse(z1, z2, batch["support_crow"], batch["support_col"])
        else:
            l_nc = neighbour_contrastive(z, batch["pos_index"], batch["pos_weight"], self.lcfg.tau)
        loss = self.lcfg.alpha * l_nc
        metrics: dict[str, Tensor] = {"loss_nc": l_nc.detach()}
        if self.decoder is not None:
            l_rec = F.mse_loss(self.decoder(z).float(), x.float())
            loss = loss + self.lcfg.recon_weight * l_rec
            metrics["loss_rec"] = l_rec.detach()
        self._maybe_init_centroids(z)
        if self.clusters and bool(self.ready):
            q = soft_assignment(z.float(), self.centroids.float(), self.lcfg.kernel_scale)
            l_kl = self.kl(q)
            loss = loss + self.lcfg.beta * l_kl
            metrics["loss_kl"] = l_kl.detach()
        else:
            loss = loss + 0.0 * self.centroids.sum()  # keeps DDP's gradient buckets complete before the head starts
        return loss, metrics

    def param_groups(self) -> list[dict]:
        """Encoder (and decoder) at the base lr; the centroids at lr × loss.centroid_lr_mult. Adam normalises
        each gradient, so a small β alone would not keep the centroids from drifting off the embeddings."""
        rest = [p for n, p in self.named_parameters() if n != "centroids" and p.requires_grad]
        return [{"params": rest},
                {"params": [self.centroids], "lr_mult": self.lcfg.centroid_lr_mult}]

    def after_step(self, step: int, total: int) -> None:  # noqa: ARG002
        self.step.fill_(step)

    def encoder_spec(self) -> dict:
        return encoder_spec("graph", "scgc_mlp", in_dim=self.in_dim, hidden=list(self.cfg.hidden),
                            out_dim=self.cfg.out_dim, hops=self.hops, branches=self.cfg.branches)


def drop_edges(edge_index: Tensor, p: float) -> Tensor:
    """Keep each directed edge with probability 1 − p (GRACE's dropout_adj)."""
    return edge_index[:, torch.rand(edge_index.shape[1], device=edge_index.device) >= p]


def mask_features(x: Tensor, p: float) -> Tensor:
    """Zero each feature column with probability p (the same columns for every node)."""
    keep = (torch.rand(x.shape[1], device=x.device) >= p).to(x.dtype)
    return x * keep


class GRACE(nn.Module):
    """forward({"x": (N, D), "edge_index": (2, E)}) -> (loss, metrics): NT-Xent between two corrupted views."""

    def __init__(self, in_dim: int, model: GraphModel, loss: GraphLoss) -> None:
        super().__init__()
        self.in_dim, self.cfg, self.lcfg = in_dim, model, loss
        self.layers = max(2, len(model.hidden) + 1)
        self.encoder = GCNEncoder(in_dim, model.hidden[0], model.out_dim, self.layers)
        self.proj = nn.Sequential(nn.Linear(model.out_dim, model.proj_dim), nn.ELU(), nn.Linear(model.proj_dim, model.out_dim))

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        x, ei = batch["x"], batch["edge_index"]
        (pe1, pe2), (pf1, pf2) = self.lcfg.drop_edge, self.lcfg.drop_feature
        h1 = self.encoder(mask_features(x, pf1), drop_edges(ei, pe1))
        h2 = self.encoder(mask_features(x, pf2), drop_edges(ei, pe2))
        loss = nt_xent(self.proj(h1).float(), self.proj(h2).float(), self.lcfg.temperature)
        return loss, {}

    def encoder_spec(self) -> dict:
        return encoder_spec("graph", "gcn", in_dim=self.in_dim, hidden=self.cfg.hidden[0], out_dim=self.cfg.out_dim,
                            layers=self.layers)


def build_method(recipe: GraphRecipe, in_dim: int, hops: int) -> nn.Module:
    if recipe.method == "grace":
        return GRACE(in_dim, recipe.model, recipe.loss)
    return SCGC(in_dim, hops, recipe.clusters, recipe.model, recipe.loss, cumulative=recipe.method == "scgc-star")
