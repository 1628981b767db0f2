"""Multi-level Noise-perturbed image Guidance (MNG, paper Sec. 2.3 and A.1).

G's K outputs x_1..x_K are perturbed with decreasing noise, E(x_k) = a_k x_k + sqrt(1-a_k^2) e_k,
so early stages only need to get right what survives heavy noise (coarse structure). The
noise is nested: e_{k-1} = r_k e_k + sqrt(1 - r_k^2) eta_k with r_k = a_{k-1}/a_k, so all
levels lie on one trajectory and each e_k keeps unit variance.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MNG_VARIANTS = ("none", "lin", "exp", "msg")


def mng_alphas(variant: str, levels: int = 4) -> list[float]:
    """Signal level a_k per output, k = 1..K (the last is always 1: clean).

    exp: a_k = 2^-(K-k), i.e. (0.125, 0.25, 0.5, 1) for K=4 (the paper's default);
    lin: a_k = k/K; none and msg: no noise (msg degrades by resizing instead).
    """
    if variant == "exp":
        return [2.0 ** -(levels - k) for k in range(1, levels + 1)]
    if variant == "lin":
        return [k / levels for k in range(1, levels + 1)]
    if variant in ("none", "msg"):
        return [1.0] * levels
    raise ValueError(f"unknown MNG variant {variant!r}; allowed: {', '.join(MNG_VARIANTS)}")


def nested_noise(
    shape: tuple[int, ...], alphas: list[float], generator: torch.Generator | None = None,
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
) -> list[torch.Tensor]:
    """Unit-variance noises e_1..e_K of ``shape``; corr(e_j, e_k) = a_j / a_k for j < k."""
    eps = [torch.randn(shape, generator=generator, device=device, dtype=dtype)]
    for k in range(len(alphas) - 1, 0, -1):
        r = alphas[k - 1] / alphas[k]
        eta = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        eps.insert(0, r * eps[0] + math.sqrt(max(0.0, 1.0 - r * r)) * eta)
    return eps


def msg_degrade(x: torch.Tensor, level: int, levels: int) -> torch.Tensor:
    """MSG variant: level k keeps only 1/2^(K-k) of the resolution (pool, then upsample)."""
    factor = 2 ** (levels - 1 - level)
    if factor == 1 or x.shape[-1] < factor:
        return x
    low = F.avg_pool2d(x, factor)
    return F.interpolate(low, size=x.shape[-2:], mode="nearest")


def perturb_levels(
    levels: list[torch.Tensor], variant: str, eps: list[torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """K latents [B, C, H, W] -> D's input [B, K*C, H, W], each level perturbed by MNG.

    ``eps`` (from :func:`nested_noise`) lets two inputs share one noise draw, as the
    approximated gradient penalty needs; by default it is drawn here.
    """
    if variant == "none":
        # Only the final output is supervised: D sees it at every level.
        levels = [levels[-1]] * len(levels)
    if variant in ("none", "msg"):
        if variant == "msg":
            levels = [msg_degrade(x, k, len(levels)) for k, x in enumerate(levels)]
        return torch.cat(levels, dim=1)
    alphas = mng_alphas(variant, len(levels))
    if eps is None:
        x0 = levels[-1]
        eps = nested_noise(x0.shape, alphas, generator, x0.device, x0.dtype)
    noised = [a * x + math.sqrt(1.0 - a * a) * e for a, x, e in zip(alphas, levels, eps)]
    return torch.cat(noised, dim=1)
