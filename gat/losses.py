"""GAT objective (paper Sec. 2.5, R3GAN-style).

L_D = softplus(-(D(real) - D(fake))) + l_aGP (aR1 + aR2) + l_REPA * REPA
L_G = softplus(-(D(fake) - D(real)))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def d_relativistic(logit_real: torch.Tensor, logit_fake: torch.Tensor) -> torch.Tensor:
    """D's relativistic pairing loss, mean over pairs [B] -> []."""
    return F.softplus(-(logit_real - logit_fake)).mean()


def g_relativistic(logit_real: torch.Tensor, logit_fake: torch.Tensor) -> torch.Tensor:
    """G's relativistic pairing loss, mean over pairs [B] -> []."""
    return F.softplus(-(logit_fake - logit_real)).mean()


def approx_gradient_penalty(
    logit: torch.Tensor, logit_perturbed: torch.Tensor, sigma: float
) -> torch.Tensor:
    """Approximated R1/R2: (1/sigma^2) * mean (D(x) - D(x + eps'))^2, eps' ~ N(0, sigma^2 I).

    To first order D(x + eps') - D(x) = <grad D, eps'>, whose second moment is
    sigma^2 ||grad D||^2: this estimates the true penalty ||grad_x D||^2 (factor 1)
    without a double backward.
    """
    return (logit - logit_perturbed).square().mean() / (sigma * sigma)


def repa_loss(
    projected: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None,
    weighting: str = "release",
) -> torch.Tensor:
    """REPA: 1 - cos(P(h_i), teacher_i) over [cls] and patch tokens -> [].

    projected, teacher: [B, 1+N, T]; mask [B, 1+N] (False: the token has no target).
    ``release``: the [cls] term plus the mean over patch tokens (the [cls] token, which D's
    logit reads, weighs as much as all patches together); ``paper``: Eq. 9's mean over all
    1+N tokens.
    """
    dist = 1.0 - F.cosine_similarity(projected.float(), teacher.float(), dim=-1)
    if mask is None:
        mask = torch.ones_like(dist, dtype=torch.bool)
    mask = mask.to(dist.dtype)
    if weighting == "paper":
        return (dist * mask).sum() / mask.sum().clamp_min(1)
    if weighting != "release":
        raise ValueError(f"REPA weighting {weighting!r}: choose release or paper")
    cls = (dist[:, 0] * mask[:, 0]).sum() / mask[:, 0].sum().clamp_min(1)
    patches = (dist[:, 1:] * mask[:, 1:]).sum() / mask[:, 1:].sum().clamp_min(1)
    return cls + patches


def resize_token_grid(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """Teacher tokens [B, 1+n*n, T] -> [B, 1+grid*grid, T] (bilinear on the patch grid).

    DINOv2's grid (16x16 at 224px/14) rarely equals D's (16x16 at /2 of 32x32, 8x8 at
    /4): resampling keeps one teacher target per D token.
    """
    b, n1, t = tokens.shape
    n = math.isqrt(n1 - 1)
    if n == grid:
        return tokens
    patches = tokens[:, 1:].transpose(1, 2).reshape(b, t, n, n).float()
    patches = F.interpolate(patches, size=(grid, grid), mode="bilinear", align_corners=False)
    patches = patches.flatten(2).transpose(1, 2).to(tokens.dtype)
    return torch.cat([tokens[:, :1], patches], dim=1)
