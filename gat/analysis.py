"""Analyses of a trained generator (paper Sec. 3.2: Figs. 4a, 4b, 6b, 9a, 9b).

What each measures, on G's blocks (:class:`gat.models.GBlock`, run in order by
:meth:`gat.models.Generator.synthesize`):

- Fig. 4b, a block's contribution: skip block i (identity), re-synthesise, and the distance
  of the final output to the unablated one (:func:`block_contributions`; the distance is a
  parameter, latent RMS by default, so a caller can use an image distance such as LPIPS).
- Fig. 9a: cosine similarity between each block's input and output tokens, at the same
  position, averaged over tokens and samples (:func:`token_cosine`).
- Fig. 9b: cosine similarity between the tokens of different z for the same class, at the
  same position, averaged over pairs and tokens (:func:`cross_z_cosine`).
- Fig. 4a: the first 3 principal components of a block's tokens as RGB on the token grid
  (:func:`pca_images`).
- Fig. 6b: CKNNA (Huh et al. 2024), CKA restricted to mutual k-nearest neighbours, between
  two feature sets of the same samples (:func:`cknna`).

Tokens are captured with forward hooks, and a block is skipped by a hook that returns its
input, so :meth:`Generator.synthesize` stays the one place that runs G (MNG heads included):
an ablated block still feeds the heads that read out after it, as in the paper.

Shapes: z [B, 64], c [B], w [B, C]; tokens [B, N, C] with N = g * g; latents [B, C_lat, H, W].
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gat.models import Discriminator, Generator

# (ablated latents [B, C, H, W], unablated latents [B, C, H, W]) -> distance per sample [B]
Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- hooks


@contextlib.contextmanager
def _hooked(modules: Sequence[nn.Module], hook: Callable) -> Iterator[None]:
    """Register ``hook(index, module, args, output)`` on each module; always removed."""
    handles = [m.register_forward_hook(lambda mod, args, out, i=i: hook(i, mod, args, out))
               for i, m in enumerate(modules)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def record_outputs(modules: Sequence[nn.Module]) -> Iterator[list[torch.Tensor | None]]:
    """Within the block, ``outputs[i]`` holds the last output of ``modules[i]`` (detached)."""
    outputs: list[torch.Tensor | None] = [None] * len(modules)

    def keep(i: int, mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
        outputs[i] = out.detach()

    with _hooked(modules, keep):
        yield outputs


@contextlib.contextmanager
def skip_blocks(gen: Generator, indices: Sequence[int]) -> Iterator[None]:
    """Within the block, G's blocks ``indices`` (0-based) pass their input through.

    The block still computes (a forward hook replaces its output by its input), so G's own
    loop, its MNG heads and gradient checkpointing all run unchanged.
    """
    depth = len(gen.blocks)
    bad = [i for i in indices if not 0 <= i < depth]
    if bad:
        raise IndexError(f"blocks {bad} out of range: G has blocks 0..{depth - 1}")
    chosen = [gen.blocks[i] for i in indices]
    with _hooked(chosen, lambda i, mod, args, out: args[0]):
        yield


# ----------------------------------------------------------------------------- capture


@dataclass
class BlockCapture:
    """One synthesis of G with every block's tokens.

    latents: the K accumulated MNG outputs [B, C_lat, H, W] (the last is the image latent);
    inputs / outputs: per block, its input and output tokens [B, N, C] (detached).
    """

    latents: list[torch.Tensor]
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]

    @property
    def depth(self) -> int:
        return len(self.outputs)


@torch.no_grad()
def capture_blocks(gen: Generator, z: torch.Tensor, c: torch.Tensor) -> BlockCapture:
    """Synthesise from z [B, 64], classes c [B] (no truncation, no guidance: the raw G)
    and keep each block's input and output tokens [B, N, C]."""
    inputs: list[torch.Tensor | None] = [None] * len(gen.blocks)

    def keep_input(i: int, mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
        inputs[i] = args[0].detach()

    with _hooked(gen.blocks, keep_input), record_outputs(gen.blocks) as outputs:
        latents = gen(z, c)
    return BlockCapture(latents, list(inputs), list(outputs))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- Fig. 4b


def latent_distance(ablated: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Root-mean-square difference per sample of latents [B, C, H, W] -> [B].

    The default distance: it needs no decoder, but weighs every latent channel alike,
    which is not how an image looks different (the pipeline passes an image distance).
    """
    return (ablated.float() - reference.float()).square().flatten(1).mean(1).sqrt()


@torch.no_grad()
def block_contributions(gen: Generator, z: torch.Tensor, c: torch.Tensor,
                        distance: Distance = latent_distance) -> torch.Tensor:
    """Distance [depth, B] of the final output with block i skipped to the unablated one.

    ``distance(ablated, reference)`` gets latents [B, C_lat, H, W] and returns [B]; the
    ``reference`` tensor is the same object for every block, so a distance may cache
    what it computes from it (decoded images, features).
    """
    w = gen.mapping(z, c)
    reference = gen.synthesize(w)[-1]
    rows = []
    for i in range(len(gen.blocks)):
        with skip_blocks(gen, [i]):
            ablated = gen.synthesize(w)[-1]
        rows.append(distance(ablated, reference).float().cpu())
    return torch.stack(rows)


# ----------------------------------------------------------------------------- Figs. 9a, 9b


def token_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of tokens at the same position, averaged over tokens:
    a, b [B, N, C] -> [B]. (Fig. 9a with a block's input and output.)"""
    return F.cosine_similarity(a.float(), b.float(), dim=-1).mean(-1)


def cross_z_cosine(tokens: torch.Tensor) -> float:
    """Mean cosine similarity between the tokens of different samples at the same position:
    tokens [M, N, C] of M >= 2 samples of one class (different z) -> a scalar.

    Averaged over all M(M-1) ordered pairs i != j and the N positions (Fig. 9b). The pair
    sum is |sum_i u_i|^2 - sum_i |u_i|^2 for unit tokens u, so the cost is linear in M.
    """
    m = tokens.shape[0]
    if m < 2:
        raise ValueError(f"cross-z cosine needs >= 2 samples of a class, got {m}")
    unit = F.normalize(tokens.double(), dim=-1)  # a zero token stays 0: cosine 0 with it
    total = unit.sum(0).square().sum(-1) - unit.square().sum(-1).sum(0)  # [N]
    return float(total.mean() / (m * (m - 1)))


# ----------------------------------------------------------------------------- Fig. 4a


def pca_images(tokens: torch.Tensor, joint: bool = False) -> torch.Tensor:
    """Tokens [B, N, C] (N = g * g) -> uint8 images [B, 3, g, g]: the first 3 principal
    components of the tokens, one per colour channel.

    ``joint=False`` fits each sample's tokens on their own (the spatial structure inside one
    image, as feature PCA figures show it); ``joint=True`` fits all samples together, so
    colours mean the same in every image. Each component's sign is fixed (its largest
    loading positive) and its range is stretched to 0..255 over what was fitted together.
    """
    b, n, c = tokens.shape
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"{n} tokens do not form a square grid")
    groups = [tokens.reshape(1, b * n, c)] if joint else list(tokens.split(1))
    rgb = torch.cat([_pca_rgb(x.reshape(-1, c).double()) for x in groups])  # [B*N, 3]
    return rgb.view(b, g, g, 3).permute(0, 3, 1, 2).contiguous()


def _pca_rgb(x: torch.Tensor) -> torch.Tensor:
    """Rows [M, C] -> uint8 [M, 3]: projections on the top 3 components, each min-max
    stretched; a flat component (all rows alike) is mid-grey."""
    x = x - x.mean(0)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    comps = vh[:3]
    # SVD's sign is arbitrary: make each component's largest-magnitude loading positive so
    # the colours do not flip between runs or blocks for no reason.
    sign = comps.gather(1, comps.abs().argmax(1, keepdim=True)).sign()
    comps = comps * torch.where(sign == 0, 1.0, sign)
    proj = x @ comps.T
    proj = F.pad(proj, (0, 3 - proj.shape[1]))  # fewer than 3 channels: pad with zeros
    lo, hi = proj.min(0).values, proj.max(0).values
    span = hi - lo
    flat = span <= 1e-9 * (1.0 + hi.abs())
    unit = torch.where(flat, torch.full_like(proj, 0.5), (proj - lo) / span.clamp_min(1e-300))
    return (unit * 255).round().clamp(0, 255).to(torch.uint8)


# ----------------------------------------------------------------------------- D's tokens


@torch.no_grad()
def discriminator_tokens(disc: Discriminator, x: torch.Tensor, c: torch.Tensor
                         ) -> list[torch.Tensor]:
    """D's block outputs [B, 1 + N, C] per block ([cls] first) for D input x
    [B, K*C_lat, H, W] (the MNG levels stacked) and classes c [B]."""
    with record_outputs(disc.blocks) as outputs:
        disc(x, c)
    return list(outputs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- Fig. 6b


def _hsic_unbiased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:  # noqa: E741
    """Unbiased HSIC estimator (Song et al. 2012, Eq. 5) of kernels [n, n], n >= 4."""
    n = k.shape[0]
    k = k.clone().fill_diagonal_(0)
    l = l.clone().fill_diagonal_(0)  # noqa: E741
    value = ((k * l.T).sum() + k.sum() * l.sum() / ((n - 1) * (n - 2))
             - 2 * (k @ l).sum() / (n - 2))
    return value / (n * (n - 3))


def _knn_mask(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """[n, n] with 1 at (i, j) when j is one of i's k most similar others (i excluded)."""
    scores = kernel.clone().fill_diagonal_(float("-inf"))
    idx = scores.topk(k, dim=1).indices
    return torch.zeros_like(kernel).scatter_(1, idx, 1.0)


def cknna(a: torch.Tensor, b: torch.Tensor, k: int = 10, normalize: bool = True) -> float:
    """CKNNA alignment (Huh et al. 2024) of features a [n, Da] and b [n, Db] of the same
    n samples: CKA on linear kernels, each restricted to the pairs (i, j) that are k-nearest
    neighbours of each other in both spaces.

    CKNNA = HSIC(M K, M L) / sqrt(HSIC(M_K K, M_K K) HSIC(M_L L, M_L L)), with K = a a^T,
    L = b b^T, M_K / M_L the k-NN masks of K / L, M = M_K M_L, and the unbiased HSIC, as
    in the authors' release. 1 for identical features (also after rotating or scaling one
    set); near 0 for unrelated ones. ``normalize``: unit-length rows first (as their
    release does), so only directions count. Needs n >= 4 and 1 <= k < n.
    """
    n = a.shape[0]
    if b.shape[0] != n:
        raise ValueError(f"cknna: {n} samples in a but {b.shape[0]} in b")
    if n < 4 or not 1 <= k < n:
        raise ValueError(f"cknna needs n >= 4 samples and 1 <= k < n, got n={n}, k={k}")
    a, b = a.double().flatten(1), b.double().flatten(1)
    if normalize:
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    kern_a, kern_b = a @ a.T, b @ b.T
    mask_a, mask_b = _knn_mask(kern_a, k), _knn_mask(kern_b, k)
    both = mask_a * mask_b
    cross = _hsic_unbiased(both * kern_a, both * kern_b)
    self_a = _hsic_unbiased(mask_a * kern_a, mask_a * kern_a)
    self_b = _hsic_unbiased(mask_b * kern_b, mask_b * kern_b)
    denom = self_a * self_b
    if denom <= 0:  # a degenerate set (e.g. all rows alike): no alignment to speak of
        return float("nan")
    return float(cross / denom.sqrt())
