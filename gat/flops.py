"""FLOPs of one generator forward, counted by torch's own FlopCounterMode; model facts."""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from gat.models import Z_DIM, Generator, build_models, count_params


def generator_gflops(gen: Generator) -> float:
    """GFLOPs of G for one sample, all K outputs, multiply-add counted once (DiT convention).

    torch counts a multiply-add as 2 FLOPs, so its total is halved. The math SDPA backend is
    forced because FlopCounterMode sees no FLOPs inside fused CPU attention kernels. G may
    live on the meta device (build under ``torch.device("meta")``): only shapes matter.
    """
    device = next(gen.buffers()).device
    z = torch.zeros(1, Z_DIM, device=device)
    c = torch.zeros(1, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        gen(z, c)
    return counter.get_total_flops() / 2 / 1e9


def model_facts(name: str, channels: int = 4, size: int = 32, num_classes: int = 1000,
                teacher_dim: int = 768) -> dict[str, float | int]:
    """G and D parameter counts and G's forward GFLOPs (one sample, DiT convention) of model
    ``name`` for latents [channels, size, size]; built on the meta device (no memory)."""
    with torch.device("meta"):
        gen, disc = build_models(name, channels, size, num_classes, teacher_dim)
    return {"g_params": count_params(gen), "d_params": count_params(disc),
            "g_gflops": generator_gflops(gen)}
