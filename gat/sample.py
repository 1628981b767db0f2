"""Sampling from a trained generator: chosen classes and seeds, truncation, w guidance.

Decoding latents to pixels needs the tokenizer the latents came from: a diffusers
AutoencoderKL directory (imported lazily, so the model library itself needs only torch).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from gat.models import Z_DIM, Generator


def parse_seeds(text: str) -> list[int]:
    """``"0-3,7"`` -> [0, 1, 2, 3, 7]."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds += list(range(int(lo), int(hi or lo) + 1))
    return seeds


@torch.no_grad()
def sample_latents(
    gen: Generator, classes: list[int], seeds: list[int], psi: float = 1.0,
    guidance: float = 1.0, batch: int = 64,
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Latents [len(classes)*len(seeds), C, H, W], class-major; z of each seed is fixed.

    Returns the latents and the (class, seed) of each. The same seed gives the same z for
    every class, so a row of a grid shows one class and a column one z.
    """
    bad = [c for c in classes if not 0 <= c < gen.num_classes]
    if bad:
        raise ValueError(f"classes {bad} out of range: the generator has {gen.num_classes}")
    device = next(gen.parameters()).device
    z_of = {s: torch.randn(Z_DIM, generator=torch.Generator().manual_seed(s)) for s in seeds}
    pairs = [(c, s) for c in classes for s in seeds]
    out = []
    for i in range(0, len(pairs), batch):
        chunk = pairs[i : i + batch]
        z = torch.stack([z_of[s] for _, s in chunk]).to(device)
        c = torch.tensor([c for c, _ in chunk], device=device)
        out.append(gen.sample(z, c, psi=psi, guidance=guidance).float().cpu())
    return torch.cat(out), pairs


@torch.no_grad()
def decode(latents: torch.Tensor, decoder: str | os.PathLike, scale_factor: float,
           batch: int = 64) -> torch.Tensor:
    """Scaled latents [N, C, h, w] -> uint8 images [N, 3, H, W] with an AutoencoderKL."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(decoder)).eval()
    images = []
    for i in range(0, len(latents), batch):
        x = vae.decode(latents[i : i + batch] / scale_factor).sample
        images.append(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
    return torch.cat(images)


def save_images(images: torch.Tensor, out: str | os.PathLike, pairs: list[tuple[int, int]],
                nrow: int) -> list[Path]:
    """A grid PNG when ``out`` ends in .png, else one PNG per sample in the folder ``out``."""
    from torchvision.utils import save_image

    out = Path(out)
    if out.suffix.lower() == ".png":
        out.parent.mkdir(parents=True, exist_ok=True)
        save_image(images.float() / 255, out, nrow=nrow, padding=1)
        return [out]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for image, (c, s) in zip(images, pairs):
        path = out / f"class{c:04d}_seed{s:06d}.png"
        save_image(image.float() / 255, path)
        paths.append(path)
    return paths
