"""DiffAugment on latents (colour, translation 1/8, cutout 1/2, flip).

One set of parameters per sample is shared by all K MNG levels of that sample (D sees them
stacked on channels), and is returned so the teacher's token grid can follow the flip and
translation (REPA needs teacher token i to describe the same place as D's token i).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class AugmentParams:
    """Per-sample augmentation parameters; every field is a tensor with leading dim B."""

    brightness: torch.Tensor  # [B] added
    saturation: torch.Tensor  # [B] factor on deviation from the channel mean
    contrast: torch.Tensor  # [B] factor on deviation from the sample mean
    flip: torch.Tensor  # [B] bool, horizontal
    shift: torch.Tensor  # [B, 2] (dy, dx) in latent pixels, multiples of ``step``
    cutout: torch.Tensor  # [B, 2] (cy, cx) centre of the zeroed square
    step: int  # translation granularity: D's patch size, so token grids shift exactly


def sample_augment(
    batch: int, size: int, step: int = 1, device: torch.device | str = "cpu",
    generator: torch.Generator | None = None, p: float = 1.0,
) -> AugmentParams:
    """Draw parameters for ``batch`` samples of a [*, size, size] latent.

    ``p`` < 1: each sample is augmented with probability p, else left as it is (identity
    parameters: no colour change, flip or shift, the cutout square outside the frame).
    """

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=device)

    max_shift = max(size // 8 // step, 0)  # translation up to 1/8 of the size, in steps
    shift = torch.randint(-max_shift, max_shift + 1, (batch, 2), generator=generator,
                          device=device) * step
    cutout = torch.randint(0, size, (batch, 2), generator=generator, device=device)
    params = AugmentParams(
        brightness=rand(batch) - 0.5,
        saturation=rand(batch) * 2.0,
        contrast=rand(batch) + 0.5,
        flip=rand(batch) < 0.5,
        shift=shift,
        cutout=cutout,
        step=step,
    )
    if p >= 1.0:
        return params
    keep = rand(batch) < p
    identity = {"brightness": 0.0, "saturation": 1.0, "contrast": 1.0, "flip": False,
                "shift": 0, "cutout": -size}  # a cutout centred at -size covers nothing
    for name, value in identity.items():
        field = getattr(params, name)
        mask = keep.view(-1, *([1] * (field.dim() - 1)))
        setattr(params, name, torch.where(mask, field, torch.full_like(field, value)))
    return params


def apply_augment(x: torch.Tensor, params: AugmentParams, levels: int = 1) -> torch.Tensor:
    """Augment x [B, levels*C, H, W]; colour statistics are taken per level."""
    b, kc, h, w = x.shape
    v = x.view(b, levels, kc // levels, h, w)
    v = v + params.brightness.view(b, 1, 1, 1, 1).to(x.dtype)
    mean_c = v.mean(dim=2, keepdim=True)
    v = (v - mean_c) * params.saturation.view(b, 1, 1, 1, 1).to(x.dtype) + mean_c
    mean = v.mean(dim=(2, 3, 4), keepdim=True)
    v = (v - mean) * params.contrast.view(b, 1, 1, 1, 1).to(x.dtype) + mean
    x = v.reshape(b, kc, h, w)
    x = torch.where(params.flip.view(b, 1, 1, 1), x.flip(-1), x)
    x = _translate(x, params.shift)
    return x * _cutout_mask(params.cutout, h, w, x.dtype)


def _translate(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Shift each sample by (dy, dx) pixels, zero-filling what enters the frame."""
    b, _, h, w = x.shape
    iy = torch.arange(h, device=x.device)[None] - shift[:, 0:1]  # [B, H]
    ix = torch.arange(w, device=x.device)[None] - shift[:, 1:2]  # [B, W]
    valid = ((iy >= 0) & (iy < h))[:, :, None] & ((ix >= 0) & (ix < w))[:, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = x[batch, :, iy.clamp(0, h - 1)[:, :, None], ix.clamp(0, w - 1)[:, None, :]]
    return out.permute(0, 3, 1, 2) * valid[:, None].to(x.dtype)


def _cutout_mask(centre: torch.Tensor, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, H, W] mask zeroing a square of half the image side around each centre."""
    ys = torch.arange(h, device=centre.device)[None, :, None]
    xs = torch.arange(w, device=centre.device)[None, None, :]
    inside = ((ys - centre[:, 0, None, None]).abs() < h // 4) & (
        (xs - centre[:, 1, None, None]).abs() < w // 4
    )
    return (~inside)[:, None].to(dtype)


def align_tokens(
    tokens: torch.Tensor, params: AugmentParams, patch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move teacher tokens [B, 1+N, T] with the flip and shift D's input received.

    Returns the moved tokens and a mask [B, 1+N] that is False for patch tokens whose
    content was shifted out of the frame (they have no teacher target). [cls] stays.
    """
    b, n1, t = tokens.shape
    grid = math.isqrt(n1 - 1)
    cls = tokens[:, :1]
    patches = tokens[:, 1:].transpose(1, 2).reshape(b, t, grid, grid)
    patches = torch.where(params.flip.view(b, 1, 1, 1), patches.flip(-1), patches)
    token_shift = torch.div(params.shift, patch, rounding_mode="floor")
    moved = _translate(patches, token_shift)
    ones = torch.ones(b, 1, grid, grid, device=tokens.device, dtype=tokens.dtype)
    valid = _translate(ones, token_shift).flatten(1) > 0
    mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=tokens.device), valid], 1)
    return torch.cat([cls, moved.flatten(2).transpose(1, 2)], dim=1), mask
