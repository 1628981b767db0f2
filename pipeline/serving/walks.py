"""Latent walks and edits (:mod:`gat.walk`) rendered: rows of styles -> G -> the one
decoder -> a strip PNG (one walk per row) and an animation (frame t of every row).

No MP4 encoder is installed on the machines this project is built on (no imageio-ffmpeg,
PyAV or ffmpeg), so animations are animated GIF or WebP, written by PIL.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Literal

import torch

from gat import walk
from gat.sample import check_settings, seed_z
from gat.walk import Directions
from pipeline.images import save_grid
from pipeline.pretrained.tokenizer import Tokenizer

Kind = Literal["z", "w", "class"]
KINDS = ("z", "w", "class")
ANIMATIONS = (".gif", ".webp")
STRIP_FRAMES = 8  # frames of the strip the evaluate stage logs


def pairs(items: list[int], what: str) -> list[tuple[int, int]]:
    """Consecutive pairs of a path through ``items``: [a, b, c] -> [(a, b), (b, c)]."""
    if len(items) < 2:
        raise ValueError(f"{what} {items}: a walk needs at least 2 (its endpoints)")
    return list(itertools.pairwise(items))


def interpolation(gen, kind: Kind, classes: list[int], seeds: list[int], frames: int,
                  psi: float = 1.0, guidance: float = 1.0) -> torch.Tensor:
    """Styles [rows, frames, C]. ``z`` / ``w``: one row per class and pair of consecutive
    seeds; ``class``: one row per seed and pair of consecutive classes."""
    if kind == "class":
        rows = [walk.class_walk(gen, seed_z(s), a, b, frames, psi, guidance)
                for s in seeds for a, b in pairs(classes, "classes")]
    elif kind in ("z", "w"):
        step = walk.z_walk if kind == "z" else walk.w_walk
        rows = [step(gen, seed_z(a), seed_z(b), c, frames, psi, guidance)
                for c in classes for a, b in pairs(seeds, "seeds")]
    else:
        raise ValueError(f"kind {kind!r}: expected one of {KINDS}")
    return torch.stack(rows)


@torch.no_grad()
def edits(gen, directions: Directions, components: list[int], classes: list[int],
          seeds: list[int], steps: int, sigma: float, psi: float = 1.0,
          guidance: float = 1.0) -> torch.Tensor:
    """Styles [rows, steps, C]: per component, class and seed, the sample's w moved from
    -sigma to +sigma standard deviations along the component (0 in the middle column
    when ``steps`` is odd: the sample itself)."""
    directions.check(gen)
    walk.check_frames(steps)
    check_settings(gen.num_classes, psi, guidance)
    amounts = torch.linspace(-sigma, sigma, steps)
    device = gen.w_avg.device
    rows = []
    for k in components:
        for c in classes:
            z = torch.stack([seed_z(s) for s in seeds]).to(device)
            w = gen.style(z, torch.full((len(seeds),), c, device=device), psi, guidance)
            rows += [walk.edit(one, directions, k, amounts) for one in w]
    return torch.stack(rows)


@torch.no_grad()
def render(gen, tokenizer: Tokenizer, styles: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Styles [rows, frames, C] -> uint8 images [rows, frames, 3, H, W]."""
    flat = styles.flatten(0, 1)
    latents = torch.cat([gen.synthesize(w)[-1].float().cpu() for w in flat.split(batch)])
    images = tokenizer.decode(latents)
    return images.view(*styles.shape[:2], *images.shape[1:])


def save_strip(images: torch.Tensor, path: str | os.PathLike) -> Path:
    """uint8 [rows, frames, 3, H, W] -> a PNG, one walk per row."""
    return save_grid(images.flatten(0, 1), path, nrow=images.shape[1])


def check_animation(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() not in ANIMATIONS:
        raise ValueError(f"{path}: an animation must end in {' or '.join(ANIMATIONS)} (no MP4 "
                         "encoder is installed: imageio-ffmpeg, PyAV or ffmpeg)")
    return path


def save_animation(images: torch.Tensor, path: str | os.PathLike, fps: float = 12.0,
                   min_side: int = 128) -> Path:
    """uint8 [rows, frames, 3, H, W] -> an animated GIF or WebP (by suffix): frame t shows
    frame t of every row, stacked; small images are enlarged (nearest) to ``min_side``."""
    from PIL import Image
    from torchvision.utils import make_grid

    path = check_animation(path)
    frames = [make_grid(images[:, t], nrow=1, padding=1) for t in range(images.shape[1])]
    zoom = max(1, -(-min_side // min(frames[0].shape[1:])))  # ceil
    pictures = [Image.fromarray(f.permute(1, 2, 0).numpy()).resize(
        (f.shape[2] * zoom, f.shape[1] * zoom), Image.NEAREST) for f in frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures[0].save(path, save_all=True, append_images=pictures[1:], loop=0,
                     duration=round(1000 / fps), **({"lossless": True}
                                                    if path.suffix.lower() == ".webp" else {}))
    return path


def evaluation_strip(gen, tokenizer: Tokenizer, psi: float = 1.0,
                     frames: int = STRIP_FRAMES) -> torch.Tensor:
    """What ``evaluate`` logs, uint8 [rows, frames, 3, H, W]: seed 0 -> 1 of the first
    class by slerp in z, then by lerp in w; then (conditional) seed 0 from the first class
    to the last by their embeddings, as the paper's Fig. 1."""
    styles = [interpolation(gen, kind, [0], [0, 1], frames, psi) for kind in ("z", "w")]
    if gen.num_classes > 1:
        styles.append(interpolation(gen, "class", [0, gen.num_classes - 1], [0], frames, psi))
    return render(gen, tokenizer, torch.cat(styles))
