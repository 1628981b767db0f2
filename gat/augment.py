"""DiffAugment on latents, as the authors' release applies it to D's inputs.

Colour (brightness, saturation, contrast together) on half of the samples, translation by
up to 1/8 of the side in latent pixels (zero fill), a cutout square of half the side, and a
horizontal flip of 40% of the samples. One set of parameters per sample is shared by all K
MNG levels of that sample (D sees them stacked on channels).

REPA targets follow the release: the teacher describes the image flipped as D's input was
(AugmentParams.flip), and not translated (the release scales the latent shift down to the raw
image by 32/256 with a floor, which leaves it within one pixel of the original).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

COLOUR_P = 0.5  # share of samples whose colour is jittered (the release's p)
FLIP_P = 0.4  # share of samples flipped horizontally (the release's ratio)
TRANSLATION = 1 / 8  # largest shift, as a share of the side
CUTOUT = 1 / 2  # side of the zeroed square, as a share of the side


@dataclass
class AugmentParams:
    """Per-sample augmentation parameters; every field is a tensor with leading dim B."""

    brightness: torch.Tensor  # [B] added (0 when the sample's colour is not jittered)
    saturation: torch.Tensor  # [B] factor on deviation from the channel mean
    contrast: torch.Tensor  # [B] factor on deviation from the sample mean
    flip: torch.Tensor  # [B] bool, horizontal
    shift: torch.Tensor  # [B, 2] (dy, dx) in latent pixels
    cutout: torch.Tensor  # [B, 2] (y, x) top-left corner of the zeroed square (may be < 0)
    cutout_size: int  # side of the zeroed square


def sample_augment(
    batch: int, size: int, device: torch.device | str = "cpu",
    generator: torch.Generator | None = None, p: float = 1.0,
) -> AugmentParams:
    """Draw parameters for ``batch`` samples of a [*, size, size] latent.

    ``p`` < 1: each sample is augmented with probability p, else left as it is (identity
    parameters: no colour change, flip or shift, the cutout square outside the frame).
    """

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=device)

    def randint(low: int, high: int, *shape: int) -> torch.Tensor:
        return torch.randint(low, high, shape, generator=generator, device=device)

    max_shift = int(size * TRANSLATION + 0.5)
    side = int(size * CUTOUT + 0.5)
    # The square's centre runs over 0..size (0..size-1 for an odd side), clipped at edges.
    centre = randint(0, size + (1 - side % 2), batch, 2)
    colour = rand(batch) < COLOUR_P
    brightness, saturation, contrast = rand(batch) - 0.5, rand(batch) * 2.0, rand(batch) + 0.5
    params = AugmentParams(
        brightness=torch.where(colour, brightness, 0.0),
        saturation=torch.where(colour, saturation, 1.0),
        contrast=torch.where(colour, contrast, 1.0),
        flip=rand(batch) < FLIP_P,
        shift=randint(-max_shift, max_shift + 1, batch, 2),
        cutout=centre - side // 2,
        cutout_size=side,
    )
    if p >= 1.0:
        return params
    keep = rand(batch) < p
    identity = {"brightness": 0.0, "saturation": 1.0, "contrast": 1.0, "flip": False,
                "shift": 0, "cutout": -2 * size}  # a square at -2*size covers nothing
    for name, value in identity.items():
        field = getattr(params, name)
        mask = keep.view(-1, *([1] * (field.dim() - 1)))
        setattr(params, name, torch.where(mask, field, torch.full_like(field, value)))
    return params


def apply_augment(x: torch.Tensor, params: AugmentParams, levels: int = 1) -> torch.Tensor:
    """Augment x [B, levels*C, H, W]. Colour statistics (the channel mean for saturation,
    the sample mean for contrast) are the final level's, before any jitter, for every
    level: the release draws them with the final output and reuses them for the others."""
    b, kc, h, w = x.shape
    v = x.view(b, levels, kc // levels, h, w)
    last = v[:, -1:]
    mean_c = last.mean(dim=2, keepdim=True)
    mean = last.mean(dim=(2, 3, 4), keepdim=True)

    def per_sample(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, 1, 1, 1, 1).to(x.dtype)

    v = v + per_sample(params.brightness)
    v = (v - mean_c) * per_sample(params.saturation) + mean_c
    v = (v - mean) * per_sample(params.contrast) + mean
    x = v.reshape(b, kc, h, w)
    x = _translate(x, params.shift)
    x = x * _cutout_mask(params.cutout, params.cutout_size, h, w, x.dtype)
    return torch.where(params.flip.view(b, 1, 1, 1), x.flip(-1), x)


def _translate(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Shift each sample by (dy, dx) pixels, zero-filling what enters the frame."""
    b, _, h, w = x.shape
    iy = torch.arange(h, device=x.device)[None] - shift[:, 0:1]  # [B, H]
    ix = torch.arange(w, device=x.device)[None] - shift[:, 1:2]  # [B, W]
    valid = ((iy >= 0) & (iy < h))[:, :, None] & ((ix >= 0) & (ix < w))[:, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = x[batch, :, iy.clamp(0, h - 1)[:, :, None], ix.clamp(0, w - 1)[:, None, :]]
    return out.permute(0, 3, 1, 2) * valid[:, None].to(x.dtype)


def _cutout_mask(corner: torch.Tensor, side: int, h: int, w: int,
                 dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, H, W] mask zeroing a ``side`` x ``side`` square from each top-left corner."""
    ys = torch.arange(h, device=corner.device)[None, :, None] - corner[:, 0, None, None]
    xs = torch.arange(w, device=corner.device)[None, None, :] - corner[:, 1, None, None]
    inside = (ys >= 0) & (ys < side) & (xs >= 0) & (xs < side)
    return (~inside)[:, None].to(dtype)




def cached_target_mask(flip: torch.Tensor, tokens: int) -> torch.Tensor:
    """[B, 1+N] REPA mask for cached teacher tokens (of the unflipped image): a flipped
    sample keeps its [cls] target and loses its patch targets. A mirrored token grid is no
    stand-in for the flipped image's tokens (cos 0.765 to them, measured: worse than none)."""
    patches = (~flip)[:, None].expand(-1, tokens - 1)
    return torch.cat([torch.ones_like(flip)[:, None], patches], dim=1)
