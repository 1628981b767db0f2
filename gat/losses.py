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
    projected: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over [cls] and patch tokens of 1 - cos(P(h_i), teacher_i).

    projected, teacher: [B, 1+N, T]; mask [B, 1+N] (False: token has no teacher target).
    """
    dist = 1.0 - F.cosine_similarity(projected.float(), teacher.float(), dim=-1)
    if mask is None:
        return dist.mean()
    return (dist * mask).sum() / mask.sum().clamp_min(1)


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
