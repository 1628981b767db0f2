"""FLOPs counted by torch's own FlopCounterMode: G's forward, a whole training step; model
facts. Every figure counts a multiply-add once (DiT's and the paper's convention): torch
counts it twice, so its totals are halved. The math SDPA backend is forced while counting,
because FlopCounterMode sees no FLOPs inside fused CPU attention kernels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from gat.models import Z_DIM, Generator, build_models, count_params

T = TypeVar("T")


def counted(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
    """``fn(*args, **kwargs)`` and the GFLOPs it took (multiply-add = 1)."""
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        result = fn(*args, **kwargs)
    return result, counter.get_total_flops() / 2 / 1e9


def generator_gflops(gen: Generator) -> float:
    """GFLOPs of G for one sample, all K outputs. G may live on the meta device (build under
    ``torch.device("meta")``): only shapes matter."""
    device = next(gen.buffers()).device
    z = torch.zeros(1, Z_DIM, device=device)
    c = torch.zeros(1, dtype=torch.long, device=device)
    with torch.no_grad():
        return counted(gen, z, c)[1]


def model_facts(name: str, channels: int = 4, size: int = 32, num_classes: int = 1000,
                teacher_dim: int = 768, d_name: str | None = None) -> dict[str, float | int]:
    """G and D parameter counts and G's forward GFLOPs (one sample, DiT convention) of model
    ``name`` (D: ``d_name``, default the same) for latents [channels, size, size]; built on
    the meta device (no memory)."""
    with torch.device("meta"):
        gen, disc = build_models(name, channels, size, num_classes, teacher_dim, d_name)
    return {"g_params": count_params(gen), "d_params": count_params(disc),
            "g_gflops": generator_gflops(gen)}
