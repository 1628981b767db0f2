"""Multi-level Noise-perturbed image Guidance (MNG, paper Sec. 2.3 and A.1).

G's K outputs x_1..x_K are perturbed with decreasing noise, E(x_k) = s_k x_k + n_k, so early
stages only need to get right what survives heavy noise (coarse structure). Two schedules
share the signal levels a_k (exp: 2^-(K-k)) and differ in how the noise enters:

- ``release`` (the default: the authors' code made the paper's numbers): flow-style,
  s_k = 1 - t_k and std(n_k) = t_k with t_k = 1 - a_k + 0.01, i.e. t = (0.885, 0.76, 0.51,
  0.01) for exp, so even the last level carries a little noise. The noises lie on one
  forward trajectory: n_{k-1} = (s_{k-1}/s_k) n_k + fresh noise, so the noisier level is
  the cleaner one, scaled and noised further.
- ``paper`` (Eq. 2 and A.1 as written): variance-preserving, s_k = a_k and n_k =
  sqrt(1-a_k^2) e_k with unit noises nested as e_{k-1} = r_k e_k + sqrt(1 - r_k^2) eta_k,
  r_k = a_{k-1}/a_k; the last level is clean.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MNG_VARIANTS = ("none", "lin", "exp", "msg")
MNG_SCHEDULES = ("release", "paper")
RELEASE_T_OFFSET = 0.01  # the release adds 1e-2 to every level's t: x_K is not clean


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


def mng_levels(variant: str, schedule: str = "release",
               levels: int = 4) -> tuple[list[float], list[float]]:
    """(signal s_k, noise std sigma_k) per level k = 1..K: D sees s_k x_k + sigma_k e.

    ``none`` and ``msg`` add no noise (s = 1, sigma = 0) under either schedule.
    """
    if schedule not in MNG_SCHEDULES:
        raise ValueError(f"unknown MNG schedule {schedule!r}; allowed: "
                         f"{', '.join(MNG_SCHEDULES)}")
    alphas = mng_alphas(variant, levels)
    if variant in ("none", "msg"):
        return alphas, [0.0] * levels
    if schedule == "paper":
        return alphas, [math.sqrt(max(0.0, 1.0 - a * a)) for a in alphas]
    t = [1.0 - a + RELEASE_T_OFFSET for a in alphas]
    return [1.0 - v for v in t], t


def nested_noise(
    shape: tuple[int, ...], variant: str = "exp", schedule: str = "release",
    generator: torch.Generator | None = None, device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32, levels: int = 4,
) -> list[torch.Tensor]:
    """The K noise terms n_1..n_K of ``shape`` (already scaled: std(n_k) = sigma_k), nested
    so that all levels lie on one trajectory (module docstring)."""
    signal, sigma = mng_levels(variant, schedule, levels)

    def randn() -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    if schedule == "paper":  # unit noises, corr(e_j, e_k) = a_j / a_k, then scaled
        eps = [randn()]
        for k in range(levels - 1, 0, -1):
            r = signal[k - 1] / signal[k]
            eps.insert(0, r * eps[0] + math.sqrt(max(0.0, 1.0 - r * r)) * randn())
        return [s * e for s, e in zip(sigma, eps)]
    noise = [sigma[-1] * randn()]  # release: from the cleanest level back
    for k in range(levels - 1, 0, -1):
        decay = signal[k - 1] / signal[k]
        fresh = math.sqrt(max(0.0, sigma[k - 1] ** 2 - (decay * sigma[k]) ** 2))
        noise.insert(0, decay * noise[0] + fresh * randn())
    return noise


def msg_degrade(x: torch.Tensor, level: int, levels: int) -> torch.Tensor:
    """MSG variant: level k keeps only 1/2^(K-k) of the resolution (pool, then upsample)."""
    factor = 2 ** (levels - 1 - level)
    if factor == 1 or x.shape[-1] < factor:
        return x
    low = F.avg_pool2d(x, factor)
    return F.interpolate(low, size=x.shape[-2:], mode="nearest")


def perturb_levels(
    levels: list[torch.Tensor], variant: str, noise: list[torch.Tensor] | None = None,
    generator: torch.Generator | None = None, schedule: str = "release",
) -> torch.Tensor:
    """K latents [B, C, H, W] -> D's input [B, K*C, H, W], each level perturbed by MNG.

    ``noise`` (from :func:`nested_noise`, same ``variant`` and ``schedule``) lets two inputs
    share one draw, as the approximated gradient penalty needs; by default it is drawn here.
    """
    if variant == "none":
        # Only the final output is supervised: D sees it at every level.
        levels = [levels[-1]] * len(levels)
    if variant in ("none", "msg"):
        if variant == "msg":
            levels = [msg_degrade(x, k, len(levels)) for k, x in enumerate(levels)]
        return torch.cat(levels, dim=1)
    signal, _ = mng_levels(variant, schedule, len(levels))
    if noise is None:
        x0 = levels[-1]
        noise = nested_noise(x0.shape, variant, schedule, generator, x0.device, x0.dtype,
                             len(levels))
    return torch.cat([s * x + n for s, x, n in zip(signal, levels, noise)], dim=1)
