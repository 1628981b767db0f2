"""FLOPs of one generator forward, counted by torch's own FlopCounterMode."""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from gat.models import Z_DIM, Generator


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
