"""GAT generator and discriminator (Hyun, Lee, Heo: "Scalable GANs with Transformers").

Both networks are plain ViTs over latent patches. G has no input image: its tokens start as
fixed 2D sin-cos embeddings and every sample-to-sample difference enters through per-channel
modulation by the style vector w = mapping(z, c). G returns K=4 accumulated outputs (MNG);
D sees the K noised levels stacked on channels.

Shapes: latents are [B, C_lat, H, W]; tokens are [B, N, C] with N = (H/p) * (W/p).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

# ----------------------------------------------------------------------------- size table


@dataclass(frozen=True)
class GATConfig:
    depth: int
    width: int
    heads: int
    patch: int
    proj_dim: int = 2048  # D's projection-conditioning and REPA hidden width


_SIZES = {
    # The paper's sizes (same as DiT).
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
    # A CPU ladder for the embedded Fashion-MNIST study: width and depth both grow, so the
    # compute ladder spans ~20x, enough points for a power law in minutes on 2 cores.
    "T1": (2, 32, 2),
    "T2": (3, 48, 2),
    "T3": (4, 64, 2),
    "T4": (6, 96, 3),
}
# The paper's 2048-wide D heads would dwarf the CPU ladder's trunks (and their cost): the
# tiny presets use 4x their width there instead.
_TINY_PROJ = {"T1": 128, "T2": 192, "T3": 256, "T4": 384}
_PATCHES = (1, 2, 4, 8)

GAT_MODELS: dict[str, GATConfig] = {
    f"GAT-{size}/{p}": GATConfig(depth, width, heads, p, _TINY_PROJ.get(size, 2048))
    for size, (depth, width, heads) in _SIZES.items()
    for p in _PATCHES
    if not (p == 1 and size in ("S", "B", "L", "XL"))
}

Z_DIM = 64
CLASS_EMBED_DIM = 64
MNG_LEVELS = 4
# xavier gain of the Linear layers that turn w into G's per-channel scales and gates
MODULATION_GAIN = 0.1


def conditioning_classes(dataset_classes: int) -> int:
    """The class count a model is built with: a dataset with one class trains an
    unconditional model (0 classes), as the paper's FFHQ run."""
    return 0 if dataset_classes <= 1 else dataset_classes


def class_ids(c: torch.Tensor | None, num_classes: int, batch: int,
              device: torch.device) -> torch.Tensor:
    """Class ids [B] a model embeds: ``c`` as given, or all 0 when the model is
    unconditional (``num_classes`` 0: one learned constant stands in for the class)."""
    if num_classes == 0 or c is None:
        return torch.zeros(batch, dtype=torch.long, device=device)
    return c


def model_config(name: str) -> GATConfig:
    """Look up a model name such as ``GAT-XL/2``; unknown names list the allowed ones."""
    if name not in GAT_MODELS:
        raise KeyError(f"unknown model {name!r}; allowed: {', '.join(GAT_MODELS)}")
    return GAT_MODELS[name]


# ----------------------------------------------------------------------------- building blocks


def sincos_2d(width: int, grid: int) -> torch.Tensor:
    """Fixed 2D sin-cos embeddings, [grid*grid, width] (half the channels per axis)."""
    quarter = width // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    coords = torch.arange(grid, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    parts = []
    for axis in (yy.flatten(), xx.flatten()):
        angles = axis[:, None] * omega[None]
        parts += [angles.sin(), angles.cos()]
    emb = torch.cat(parts, dim=1)
    return F.pad(emb, (0, width - emb.shape[1])).float()


ROPE_BASE = 10000.0  # the release's theta (EVA-02's VisionRotaryEmbeddingFast)


def rope_2d(head_dim: int, grid: int, offset: tuple[float, float] = (0.0, 0.0),
            base: float = ROPE_BASE) -> torch.Tensor:
    """Rotation angles for 2D RoPE, [grid*grid, head_dim // 2].

    Channel pair j < head_dim/4 rotates with the row at frequency base^(-j/(head_dim/4)),
    the next head_dim/4 pairs with the column at the same frequencies, so q.k depends only
    on the relative 2D offset between tokens.
    """
    quarter = head_dim // 4
    freqs = 1.0 / (base ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    coords = torch.arange(grid, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords + offset[0], coords + offset[1], indexing="ij")
    angles = torch.cat([yy.flatten()[:, None] * freqs, xx.flatten()[:, None] * freqs], dim=1)
    return F.pad(angles, (0, head_dim // 2 - angles.shape[1]))  # odd leftovers: no rotation


class Rope(nn.Module):
    """2D RoPE of one token grid: cos and sin computed once (buffers), not in every call."""

    def __init__(self, head_dim: int, grid: int):
        super().__init__()
        angles = rope_2d(head_dim, grid)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate x [B, heads, N, head_dim]; leading tokens beyond the grid ([cls]) stay."""
        return rotate(x, self.cos, self.sin)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2j, 2j+1) of x [B, heads, N, head_dim] by the angles whose
    cos and sin are [n, head_dim//2]; the first N - n tokens are left as they are."""
    n_rot = cos.shape[0]
    extra, x_rot = x[:, :, : x.shape[2] - n_rot], x[:, :, x.shape[2] - n_rot :]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x_rot[..., 0::2], x_rot[..., 1::2]
    rotated = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return torch.cat([extra, rotated], dim=2) if extra.shape[2] else rotated


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of x [B, heads, N, head_dim] by angles [N, head_dim//2].

    Leading tokens beyond ``angles`` (D's [cls]) are left unrotated.
    """
    return rotate(x, angles.cos(), angles.sin())


def rms_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), eps=eps)


class RMSNorm(nn.Module):
    """RMSNorm with an optional learned per-channel scale (G's blocks: none; D's blocks and
    every qk-norm: learned). ``eps`` None: the dtype's machine epsilon (nn.RMSNorm's)."""

    def __init__(self, dim: int, affine: bool, eps: float | None = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, eps=self.eps)


class Attention(nn.Module):
    """Multi-head self-attention with qk-RMSNorm, 2D RoPE and SDPA."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        # qk-norm keeps attention logits bounded as width grows; its learned per-channel
        # scales (the release's nn.RMSNorm(head_dim)) let a head sharpen past sqrt(head_dim).
        self.q_norm = RMSNorm(width // heads, affine=True, eps=None)
        self.k_norm = RMSNorm(width // heads, affine=True, eps=None)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, rope: Rope) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k = rope(self.q_norm(q)), rope(self.k_norm(k))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class SwiGLU(nn.Module):
    """SwiGLU FFN with hidden = int(2/3 * 4C): the same FLOPs as a 4C GELU MLP."""

    def __init__(self, width: int):
        super().__init__()
        hidden = int(2 / 3 * 4 * width)
        self.gate_up = nn.Linear(width, 2 * hidden)
        self.down = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------- generator


class GBlock(nn.Module):
    """GAT block: ViT block whose norms are scaled by w and whose residuals are gated by w.

    SiLU then one Linear(C -> 4C) per block turn w into (attn scale, attn gate, ffn scale,
    ffn gate). The Linear starts small, so every block starts near identity, scales near 1.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = Attention(width, heads)
        self.ffn = SwiGLU(width)
        self.modulation = modulation(width, 4 * width)

    def forward(self, x: torch.Tensor, w: torch.Tensor, rope: Rope) -> torch.Tensor:
        scale1, gate1, scale2, gate2 = self.modulation(w)[:, None].chunk(4, dim=-1)
        x = x + gate1 * self.attn(rms_norm(x) * (1 + scale1), rope)
        return x + gate2 * self.ffn(rms_norm(x) * (1 + scale2))


def modulation(width: int, out: int) -> nn.Sequential:
    """w [B, C] -> per-channel scales and gates [B, out]: SiLU, then Linear (the release's
    adaLN path; the SiLU is one more nonlinearity between z and every block)."""
    return nn.Sequential(nn.SiLU(), nn.Linear(width, out))


class OutputHead(nn.Module):
    """MNG output: RMSNorm, scale from w, Linear(C -> p*p*C_lat), then unpatchify."""

    def __init__(self, width: int, patch: int, channels: int):
        super().__init__()
        self.patch, self.channels = patch, channels
        self.modulation = modulation(width, width)
        self.linear = nn.Linear(width, patch * patch * channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = self.linear(rms_norm(x) * (1 + self.modulation(w)[:, None]))
        return unpatchify(x, self.patch, self.channels)


def unpatchify(x: torch.Tensor, patch: int, channels: int) -> torch.Tensor:
    """[B, N, p*p*C] -> [B, C, H, W] with H = W = sqrt(N) * p."""
    b, n, _ = x.shape
    grid = math.isqrt(n)
    x = x.view(b, grid, grid, patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, grid * patch, grid * patch)


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, N, p*p*C] (inverse of :func:`unpatchify`)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


class MappingNetwork(nn.Module):
    """(z, c) -> w. Both inputs are normalised to unit second moment before the MLP.

    Unconditional (``num_classes`` 0): one embedding row, used for every sample.
    """

    def __init__(self, width: int, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.class_embed = nn.Embedding(max(num_classes, 1), CLASS_EMBED_DIM)
        self.mlp = nn.Sequential(
            nn.Linear(Z_DIM + CLASS_EMBED_DIM, width), nn.SiLU(), nn.Linear(width, width)
        )

    def forward(self, z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        c = class_ids(c, self.num_classes, z.shape[0], z.device)
        return self.embedded(z, self.class_embed(c))

    def embedded(self, z: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """w [B, C] from z [B, 64] and class embeddings [B, 64] (interpolated ones too)."""
        return self.mlp(torch.cat([rms_norm(z), rms_norm(embedding)], dim=1))


class Generator(nn.Module):
    """G(z [B, 64], c [B]) -> list of K latents [B, C_lat, H, W], accumulated (x_K = image).

    ``num_classes`` 0 builds an unconditional G: c is ignored (may be None).
    """

    def __init__(self, cfg: GATConfig, channels: int, size: int, num_classes: int):
        super().__init__()
        self.cfg, self.channels, self.size, self.num_classes = cfg, channels, size, num_classes
        grid = size // cfg.patch
        self.mapping = MappingNetwork(cfg.width, num_classes)
        self.register_buffer("tokens", sincos_2d(cfg.width, grid), persistent=False)
        self.rope = Rope(cfg.width // cfg.heads, grid)
        self.blocks = nn.ModuleList(GBlock(cfg.width, cfg.heads) for _ in range(cfg.depth))
        self.heads = nn.ModuleList(
            OutputHead(cfg.width, cfg.patch, channels) for _ in range(MNG_LEVELS)
        )
        # Blocks after which an MNG head reads out: depth/4, depth/2, 3depth/4, depth (1-based).
        # (ceil, so shallow CPU presets still get K heads; several may share a block)
        self.head_after = [
            math.ceil(cfg.depth * (k + 1) / MNG_LEVELS) - 1 for k in range(MNG_LEVELS)
        ]
        # Per-class running mean of w, for truncation (beta 0.995); one row if unconditional.
        self.register_buffer("w_avg", torch.zeros(max(num_classes, 1), cfg.width))
        self.grad_checkpointing = False
        self._init_weights()

    def _init_weights(self) -> None:
        self.apply(_init_linear)
        nn.init.normal_(self.mapping.class_embed.weight, std=0.02)
        for mod in [b.modulation for b in self.blocks] + [h.modulation for h in self.heads]:
            # Style-derived scales and gates start small (gain 0.1): blocks start near
            # identity, which keeps early adversarial training stable.
            nn.init.xavier_uniform_(mod[-1].weight, gain=MODULATION_GAIN)

    def mapping_parameters(self) -> list[nn.Parameter]:
        """Parameters trained at 1/100 of G's learning rate (StyleGAN practice): the mapping
        MLP only, as in the release; the class embedding trains at G's full rate."""
        return list(self.mapping.mlp.parameters())

    def synthesize(self, w: torch.Tensor) -> list[torch.Tensor]:
        """w [B, C] -> K accumulated latents [B, C_lat, H, W]."""
        # fp32 tokens keep the residual stream fp32 under bf16 autocast (each branch's bf16
        # output is added to fp32), as the release's fp32 position embedding does.
        x = self.tokens.expand(w.shape[0], -1, -1)
        outputs, acc, level = [], None, 0
        for i, block in enumerate(self.blocks):
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, w, self.rope, use_reentrant=False)
            else:
                x = block(x, w, self.rope)
            while level < MNG_LEVELS and self.head_after[level] == i:
                out = self.heads[level](x, w)
                acc = out if acc is None else acc + out
                outputs.append(acc)
                level += 1
        return outputs

    def forward(self, z: torch.Tensor, c: torch.Tensor | None) -> list[torch.Tensor]:
        return self.synthesize(self.mapping(z, c))

    @torch.no_grad()
    def update_w_avg(self, w: torch.Tensor, c: torch.Tensor, beta: float = 0.995) -> None:
        """Move each class's mean w toward this batch's mean w of that class (w [B, C],
        c [B]); classes absent from the batch keep theirs. Scatter-adds only: no loop over
        the classes and no host sync."""
        w = w.float()
        sums = torch.zeros_like(self.w_avg).index_add_(0, c, w)
        counts = torch.zeros(len(self.w_avg), device=w.device).index_add_(
            0, c, torch.ones_like(c, dtype=w.dtype))
        means = sums / counts.clamp_min(1)[:, None]
        self.w_avg.lerp_(means, ((1 - beta) * (counts > 0))[:, None])

    def guided(self, z: torch.Tensor, w: torch.Tensor, guidance: float) -> torch.Tensor:
        """w-space guidance: w_null + s * (w - w_null), w_null the mean of w(z, c') over all
        classes c' for the same z [B, 64]. Unconditional: w itself (w_null is w)."""
        if guidance == 1.0 or self.num_classes == 0:
            return w
        all_c = torch.arange(self.num_classes, device=z.device)
        w_all = self.mapping(
            z.repeat_interleave(self.num_classes, 0), all_c.repeat(z.shape[0])
        ).view(z.shape[0], self.num_classes, -1)
        w_null = w_all.mean(1)
        return w_null + guidance * (w - w_null)

    @staticmethod
    def truncated(w: torch.Tensor, centre: torch.Tensor, psi: float) -> torch.Tensor:
        """Truncation toward ``centre`` [B, C] (a class's mean w): centre + psi (w - centre)."""
        if psi == 1.0:
            return w
        centre = centre.to(w.dtype)
        return centre + psi * (w - centre)

    def style(self, z: torch.Tensor, c: torch.Tensor | None, psi: float = 1.0,
              guidance: float = 1.0) -> torch.Tensor:
        """w [B, C] of z [B, 64] and classes c [B]: truncated toward w_avg[c], then guided.

        The release's order (paper l.419: both in w-space before the backbone): truncation
        first, then guidance around w_null, the untruncated mean over classes. ``psi`` is
        StyleGAN's (1: none, 0: the class mean); the release's ``truncation_psi`` is 1 - psi.
        """
        c = class_ids(c, self.num_classes, z.shape[0], z.device)
        w = self.truncated(self.mapping(z, c), self.w_avg[c], psi)
        return self.guided(z, w, guidance)

    @torch.no_grad()
    def sample(
        self, z: torch.Tensor, c: torch.Tensor | None, psi: float = 1.0, guidance: float = 1.0
    ) -> torch.Tensor:
        """Final latent [B, C_lat, H, W] of z [B, 64] and classes c [B] (:meth:`style`).

        Truncation: w_avg[c] + psi * (w - w_avg[c]); then guidance: w_null + s * (w -
        w_null), with w_null the mean of w(z, c') over all classes c' for the same z.
        """
        return self.synthesize(self.style(z, c, psi, guidance))[-1]


# ----------------------------------------------------------------------------- discriminator


class DBlock(nn.Module):
    """ViT block with learned RMSNorm scales and LayerScale 0.1 on both residual branches."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(width, affine=True), RMSNorm(width, affine=True)
        self.attn = Attention(width, heads)
        self.ffn = SwiGLU(width)
        self.gamma1 = nn.Parameter(torch.full((width,), 0.1))
        self.gamma2 = nn.Parameter(torch.full((width,), 0.1))

    def forward(self, x: torch.Tensor, rope: Rope) -> torch.Tensor:
        x = x + self.gamma1 * self.attn(self.norm1(x), rope)
        return x + self.gamma2 * self.ffn(self.norm2(x))


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class Discriminator(nn.Module):
    """D(x [B, K*C_lat, H, W], c [B]) -> logit [B]; optionally REPA tokens [B, 1+N, T].

    The logit uses projection conditioning: <Linear(RMSNorm(h_cls)), MLP(embed(c))>.
    Unconditional (``num_classes`` 0): one embedding row, so the head is a learned linear
    readout of h_cls.
    """

    def __init__(
        self, cfg: GATConfig, channels: int, size: int, num_classes: int, teacher_dim: int
    ):
        super().__init__()
        self.cfg, self.grid, self.num_classes = cfg, size // cfg.patch, num_classes
        self.patch_embed = nn.Linear(cfg.patch * cfg.patch * channels * MNG_LEVELS, cfg.width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        # Absolute 2D sin-cos position of every patch token (not [cls]), beside RoPE's
        # relative one: D can tell where in the image a token is.
        self.register_buffer("pos_embed", sincos_2d(cfg.width, self.grid), persistent=False)
        self.rope = Rope(cfg.width // cfg.heads, self.grid)
        self.blocks = nn.ModuleList(DBlock(cfg.width, cfg.heads) for _ in range(cfg.depth))
        self.norm = RMSNorm(cfg.width, affine=True)
        proj = cfg.proj_dim
        self.head = nn.Linear(cfg.width, proj)
        self.class_embed = nn.Embedding(max(num_classes, 1), proj)
        self.class_mlp = _mlp([proj, proj, proj])  # trained at lr x 0.01
        self.repa = _mlp([cfg.width, proj, proj, teacher_dim])
        self.grad_checkpointing = False
        self.apply(_init_linear)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.class_embed.weight, std=0.02)

    def slow_parameters(self) -> list[nn.Parameter]:
        """Parameters trained at 1/100 of D's learning rate (the class-embedding MLP)."""
        return list(self.class_mlp.parameters())

    def forward(
        self, x: torch.Tensor, c: torch.Tensor | None, repa_first: int = 0
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits [B]; with ``repa_first=n`` also REPA tokens [n, 1+N, T] of the first n.

        The REPA head runs only on the samples that need it (reals), so the trainer can
        batch reals, fakes and their aGP-perturbed copies into one forward.
        """
        h = self.patch_embed(patchify(x, self.cfg.patch)) + self.pos_embed
        h = torch.cat([self.cls_token.to(h.dtype).expand(h.shape[0], -1, -1), h], dim=1)
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                h = checkpoint(block, h, self.rope, use_reentrant=False)
            else:
                h = block(h, self.rope)
        c = class_ids(c, self.num_classes, x.shape[0], x.device)
        # The plain inner product, as the release computes it (no 1/sqrt(proj_dim)).
        logit = (self.head(self.norm(h[:, 0])) * self.class_mlp(self.class_embed(c))).sum(1)
        if repa_first:
            return logit, self.repa(h[:repa_first])
        return logit


# ----------------------------------------------------------------------------- factory


def build_models(
    name: str,
    channels: int = 4,
    size: int = 32,
    num_classes: int = 1000,
    teacher_dim: int = 768,
    d_name: str | None = None,
) -> tuple[Generator, Discriminator]:
    """Build G and D for a model name (``GAT-XL/2``) and a latent shape [channels, size, size].

    ``d_name``: D's own size when it differs from G's (the paper's Fig. 7a scales G and D
    apart). ``num_classes`` 0: unconditional G and D (see :func:`conditioning_classes`).
    Call under ``torch.device("meta")`` to count parameters without allocating memory.
    """
    g_cfg, d_cfg = model_config(name), model_config(d_name or name)
    for cfg, which in ((g_cfg, name), (d_cfg, d_name or name)):
        if size % cfg.patch:
            raise ValueError(f"latent size {size} is not divisible by {which}'s patch "
                             f"{cfg.patch}")
    gen = Generator(g_cfg, channels, size, num_classes)
    disc = Discriminator(d_cfg, channels, size, num_classes, teacher_dim)
    return gen, disc


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
