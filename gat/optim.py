"""Width-aware learning rate (paper Sec. 2.4), optimizers and EMA of G."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

SLOW_LR_FACTOR = 0.01  # G's mapping network and D's class-embedding MLP (StyleGAN practice)
ADAM_BETAS = (0.0, 0.99)
# One fused kernel per optimizer step instead of a Python loop over parameters (torch's
# CPU default is the per-parameter loop); same update within float rounding.
FUSED_ADAMW = True


def width_aware_lr(lr_base: float, c_base: int, c_model: int) -> float:
    """lr_model = lr_base * C_base / C_model: keeps the update size constant across widths.

    With unit-variance inputs the squared norm of a layer's input grows with its width C,
    so the same step size moves a wider layer's outputs further; dividing by C undoes it.
    """
    return lr_base * c_base / c_model


def _param_groups(params: list[nn.Parameter], slow: list[nn.Parameter], lr: float,
                  factor: float) -> list[dict]:
    slow_ids = {id(p) for p in slow}
    fast = [p for p in params if id(p) not in slow_ids]
    return [{"params": fast, "lr": lr}, {"params": slow, "lr": lr * factor}]


def build_optimizers(
    gen: nn.Module, disc: nn.Module, lr: float, lr_d: float | None = None,
    mapping_lr_factor: float = SLOW_LR_FACTOR, class_mlp_lr_factor: float = SLOW_LR_FACTOR,
    betas: tuple[float, float] = ADAM_BETAS,
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """AdamW (betas (0, 0.99), no weight decay) for G (at ``lr``) and D (at ``lr_d``,
    default ``lr``), each with a slow group: G's mapping network at ``lr *
    mapping_lr_factor``, D's class-embedding MLP at ``lr_d * class_mlp_lr_factor``."""
    lr_d = lr if lr_d is None else lr_d
    opt_g = torch.optim.AdamW(
        _param_groups(list(gen.parameters()), gen.mapping_parameters(), lr, mapping_lr_factor),
        betas=betas, weight_decay=0.0, fused=FUSED_ADAMW or None,
    )
    opt_d = torch.optim.AdamW(
        _param_groups(list(disc.parameters()), disc.slow_parameters(), lr_d,
                      class_mlp_lr_factor),
        betas=betas, weight_decay=0.0, fused=FUSED_ADAMW or None,
    )
    return opt_g, opt_d


class EMA:
    """Exponential moving average of a model's parameters; buffers are copied as they are.

    ``rampup`` > 0 warms the average up (StyleGAN2-ADA's ema_rampup, counted in steps):
    the half-life in steps is min(half-life of ``decay``, rampup * step), so early on the
    average forgets the random initialisation quickly. 0: constant ``decay``.
    """

    def __init__(self, model: nn.Module, decay: float, rampup: float = 0.0):
        self.decay, self.rampup = decay, rampup
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """Decay applied by the update after ``step`` optimiser steps (1-based)."""
        if self.rampup <= 0 or self.decay <= 0:
            return self.decay
        half_life = math.log(0.5) / math.log(self.decay) if self.decay < 1 else math.inf
        half_life = min(half_life, self.rampup * max(step, 1))
        return 0.5 ** (1.0 / half_life)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        decay = self.decay if step is None else self.decay_at(step)
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for ema_buf, buf in zip(self.model.buffers(), model.buffers()):
            ema_buf.copy_(buf)
