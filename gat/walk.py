"""Walks through a generator's latent spaces, and edit directions (paper Figs. 1 and 13).

- in z: spherical interpolation (a Gaussian z's norm concentrates near sqrt(64): slerp
  stays on that shell, a straight line would cut through the low-norm middle);
- in w: linear interpolation between two samples' styles;
- between classes: linear interpolation of two class embeddings at one z (Fig. 1);
- editing (GANSpace, Fig. 13): principal components of w over many samples; an edit moves
  w along component k by ``a`` of its standard deviations, ``w + a * sigma_k * d_k``.

Every walk returns styles w [frames, C] for :meth:`gat.models.Generator.synthesize`, with
truncation and guidance applied as :meth:`~gat.models.Generator.sample` does, so a walk's
endpoints are the endpoint samples. Latents only: decoding lives a floor up.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from gat.models import Z_DIM, Generator
from gat.sample import UNCONDITIONAL, all_classes, check_classes, check_ids, check_settings


def check_frames(frames: int) -> None:
    if frames < 2:
        raise ValueError(f"frames {frames}: an interpolation needs at least 2 frames "
                         "(its two endpoints)")


def positions(frames: int) -> torch.Tensor:
    """``frames`` positions t in [0, 1], endpoints included: [frames]."""
    check_frames(frames)
    return torch.linspace(0.0, 1.0, frames)


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """a, b [D], t [T] -> [T, D]; exactly a at t = 0 and b at t = 1."""
    t = t.to(a.dtype)[:, None]
    return torch.lerp(a.expand(len(t), -1), b.expand(len(t), -1), t)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation: a, b [D], t [T] -> [T, D]; a at t = 0, b at t = 1.

    Falls back to :func:`lerp` for (anti)parallel a and b, where the arc is undefined.
    """
    cos = torch.dot(a / a.norm(), b / b.norm()).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    if omega.sin().abs() < 1e-6:
        return lerp(a, b, t)
    t = t.to(a.dtype)[:, None]
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / omega.sin()


def _classes(gen: Generator, c: int, frames: int) -> torch.Tensor:
    device = gen.w_avg.device
    if gen.num_classes == 0:
        return torch.zeros(frames, dtype=torch.long, device=device)
    check_classes([c], gen.num_classes)
    return torch.full((frames,), c, dtype=torch.long, device=device)


@torch.no_grad()
def z_walk(gen: Generator, z0: torch.Tensor, z1: torch.Tensor, c: int, frames: int,
           psi: float = 1.0, guidance: float = 1.0) -> torch.Tensor:
    """Styles [frames, C] along the great circle from z0 to z1 [Z_DIM], class c."""
    check_settings(gen.num_classes, psi, guidance)
    z = slerp(z0.float(), z1.float(), positions(frames)).to(gen.w_avg.device)
    return gen.style(z, _classes(gen, c, frames), psi, guidance)


@torch.no_grad()
def w_walk(gen: Generator, z0: torch.Tensor, z1: torch.Tensor, c: int, frames: int,
           psi: float = 1.0, guidance: float = 1.0) -> torch.Tensor:
    """Styles [frames, C] on the straight line between the styles of z0 and z1, class c."""
    check_settings(gen.num_classes, psi, guidance)
    t = positions(frames)
    z = torch.stack([z0, z1]).float().to(gen.w_avg.device)
    w = gen.style(z, _classes(gen, c, 2), psi, guidance)
    return lerp(w[0], w[1], t.to(w.device))


@torch.no_grad()
def class_walk(gen: Generator, z: torch.Tensor, c0: int, c1: int, frames: int,
               psi: float = 1.0, guidance: float = 1.0) -> torch.Tensor:
    """Styles [frames, C] of one z [Z_DIM] as its class embedding moves from c0 to c1.

    Truncation pulls toward the same blend of the two classes' mean w.
    """
    if gen.num_classes == 0:
        raise ValueError(f"class interpolation: {UNCONDITIONAL}")
    check_classes([c0, c1], gen.num_classes)
    check_settings(gen.num_classes, psi, guidance)
    t = positions(frames).to(gen.w_avg.device)
    table = gen.mapping.class_embed.weight
    zz = z.float().to(table.device).expand(frames, -1)
    w = gen.truncated(gen.mapping.embedded(zz, lerp(table[c0], table[c1], t)),
                      lerp(gen.w_avg[c0], gen.w_avg[c1], t), psi)
    return gen.guided(zz, w, guidance)


# ----------------------------------------------------------------------------- editing


@dataclass(frozen=True)
class Directions:
    """GANSpace directions of one generator's w: ``components`` [k, C] (orthonormal rows,
    by decreasing variance), ``stdev`` [k] (w's spread along each), ``mean`` [C]."""

    components: torch.Tensor
    stdev: torch.Tensor
    mean: torch.Tensor
    samples: int

    def check(self, gen: Generator) -> None:
        if self.components.shape[1] != gen.cfg.width:
            raise ValueError(f"directions of width {self.components.shape[1]} do not fit "
                             f"this generator (w has {gen.cfg.width} channels)")


@torch.no_grad()
def pca_directions(gen: Generator, num: int = 10_000, k: int = 10, seed: int = 0,
                   classes: list[int] | None = None, batch: int = 1000) -> Directions:
    """Top ``k`` principal components of w = mapping(z, c) over ``num`` samples: z from a
    CPU stream seeded by ``seed``, classes cycling through ``classes`` (default: all)."""
    classes = all_classes(gen.num_classes) if classes is None else classes
    check_ids(classes, gen.num_classes)
    if not 1 <= k <= min(num, gen.cfg.width):
        raise ValueError(f"components {k}: expected 1..{min(num, gen.cfg.width)} "
                         f"(at most w's width and the number of samples)")
    rng, device = torch.Generator().manual_seed(seed), gen.w_avg.device
    labels = torch.tensor(classes)[torch.arange(num) % len(classes)]
    ws = []
    for start in range(0, num, batch):
        c = labels[start : start + batch]
        z = torch.randn(len(c), Z_DIM, generator=rng)
        ws.append(gen.mapping(z.to(device), c.to(device)).float().cpu())
    w = torch.cat(ws)
    mean = w.mean(0)
    _, singular, vh = torch.linalg.svd(w - mean, full_matrices=False)
    components = vh[:k]
    # An eigenvector's sign is arbitrary: make each one's largest entry positive, so the
    # same generator gives the same directions on any machine.
    sign = components.gather(1, components.abs().argmax(1, keepdim=True)).sign()
    return Directions(components * sign, singular[:k] / math.sqrt(max(num - 1, 1)), mean, num)


def edit(w: torch.Tensor, directions: Directions, component: int,
         amounts: torch.Tensor) -> torch.Tensor:
    """w [C] moved along one component by each of ``amounts`` [A] standard deviations:
    [A, C]; an amount of 0 returns w itself."""
    if not 0 <= component < len(directions.components):
        raise ValueError(f"component {component}: the directions hold "
                         f"0..{len(directions.components) - 1}")
    d = directions.components[component].to(w.device, w.dtype)
    sigma = directions.stdev[component].to(w.device, w.dtype)
    return w + amounts.to(w.device, w.dtype)[:, None] * sigma * d


def save_directions(path: str | os.PathLike, directions: Directions, meta: dict) -> None:
    """Tensors and ``meta`` (plain values: the generator they belong to) in one file."""
    torch.save({"components": directions.components, "stdev": directions.stdev,
                "mean": directions.mean, "samples": directions.samples, "meta": meta}, path)


def load_directions(path: str | os.PathLike) -> tuple[Directions, dict]:
    """(directions, meta) saved by :func:`save_directions` (no pickled code runs)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return (Directions(state["components"], state["stdev"], state["mean"], state["samples"]),
            state["meta"])
