"""Latent walks and edits (:mod:`gat.walk`) rendered: rows of styles -> G -> the one
decoder -> a strip PNG (one walk per row) and an animation (frame t of every row).

Animations are MP4 (H.264, by the ffmpeg binary of the imageio-ffmpeg package), or
animated GIF or WebP (written by PIL), by the file's suffix.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
from pathlib import Path
from typing import Literal

import torch

from gat import walk
from gat.sample import check_settings, seed_z
from gat.walk import Directions
from pipeline.files import atomic_path
from pipeline.images import save_grid
from pipeline.pretrained.tokenizer import Tokenizer

Kind = Literal["z", "w", "class"]
KINDS = ("z", "w", "class")
ANIMATIONS = (".mp4", ".gif", ".webp")


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
        raise ValueError(f"{path}: an animation must end in {', '.join(ANIMATIONS)}")
    if path.suffix.lower() == ".mp4" and importlib.util.find_spec("imageio_ffmpeg") is None:
        raise ValueError(f"{path}: MP4 needs the imageio-ffmpeg package (in requirements.txt: "
                         "bash scripts/setup.sh); or write a .gif or .webp")
    return path


def save_animation(images: torch.Tensor, path: str | os.PathLike, fps: float = 12.0,
                   min_side: int = 128) -> Path:
    """uint8 [rows, frames, 3, H, W] -> an MP4 (H.264), animated GIF or WebP (by suffix):
    frame t shows frame t of every row, stacked; small images are enlarged (nearest) to
    ``min_side``. Written to a temporary name, then renamed."""
    from torchvision.utils import make_grid

    path = check_animation(path)
    frames = [make_grid(images[:, t], nrow=1, padding=1) for t in range(images.shape[1])]
    zoom = max(1, -(-min_side // min(frames[0].shape[1:])))  # ceil
    pictures = [f.repeat_interleave(zoom, 1).repeat_interleave(zoom, 2).permute(1, 2, 0)
                for f in frames]  # [H, W, 3] uint8, nearest-neighbour enlarged
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".mp4":
            _write_mp4(pictures, tmp, fps)
        else:
            _write_pillow(pictures, tmp, fps, path.suffix.lower())
    return path


def _write_pillow(pictures: list[torch.Tensor], path: Path, fps: float, suffix: str) -> None:
    from PIL import Image

    images = [Image.fromarray(p.numpy()) for p in pictures]
    images[0].save(path, format=suffix.lstrip(".").upper(), save_all=True,
                   append_images=images[1:], loop=0, duration=round(1000 / fps),
                   **({"lossless": True} if suffix == ".webp" else {}))


def _write_mp4(pictures: list[torch.Tensor], path: Path, fps: float) -> None:
    """H.264 in yuv420p (what every player decodes): sides padded with black to multiples
    of 16, the codec's macro block, rather than rescaled."""
    import imageio_ffmpeg
    import torch.nn.functional as F

    h, w = pictures[0].shape[:2]
    pad_h, pad_w = -h % 16, -w % 16
    writer = imageio_ffmpeg.write_frames(str(path), (w + pad_w, h + pad_h), fps=fps,
                                         codec="libx264", pix_fmt_out="yuv420p",
                                         output_params=["-f", "mp4"], macro_block_size=16)
    writer.send(None)  # start ffmpeg
    for p in pictures:
        padded = F.pad(p.permute(2, 0, 1), (0, pad_w, 0, pad_h)).permute(1, 2, 0)
        writer.send(padded.contiguous().numpy().tobytes())
    writer.close()


def evaluation_strip(gen, tokenizer: Tokenizer, psi: float, frames: int) -> torch.Tensor:
    """What ``evaluate`` logs, uint8 [rows, frames, 3, H, W]: seed 0 -> 1 of the first
    class by slerp in z, then by lerp in w; then (conditional) seed 0 from the first class
    to the last by their embeddings, as the paper's Fig. 1."""
    styles = [interpolation(gen, kind, [0], [0, 1], frames, psi) for kind in ("z", "w")]
    if gen.num_classes > 1:
        styles.append(interpolation(gen, "class", [0, gen.num_classes - 1], [0], frames, psi))
    return render(gen, tokenizer, torch.cat(styles))
