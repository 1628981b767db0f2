"""Width-aware learning rate (paper Sec. 2.4), optimizers and EMA of G."""

from __future__ import annotations

import copy

import torch
from torch import nn

SLOW_LR_FACTOR = 0.01  # G's mapping network and D's class-embedding MLP (StyleGAN practice)
ADAM_BETAS = (0.0, 0.99)


def width_aware_lr(lr_base: float, c_base: int, c_model: int) -> float:
    """lr_model = lr_base * C_base / C_model: keeps the update size constant across widths.

    With unit-variance inputs the squared norm of a layer's input grows with its width C,
    so the same step size moves a wider layer's outputs further; dividing by C undoes it.
    """
    return lr_base * c_base / c_model


def _param_groups(params: list[nn.Parameter], slow: list[nn.Parameter], lr: float) -> list[dict]:
    slow_ids = {id(p) for p in slow}
    fast = [p for p in params if id(p) not in slow_ids]
    return [{"params": fast, "lr": lr}, {"params": slow, "lr": lr * SLOW_LR_FACTOR}]


def build_optimizers(
    gen: nn.Module, disc: nn.Module, lr: float, lr_d: float | None = None
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """AdamW (betas (0, 0.99), no weight decay) for G (at ``lr``) and D (at ``lr_d``, default
    ``lr``), each with a slow group."""
    lr_d = lr if lr_d is None else lr_d
    opt_g = torch.optim.AdamW(
        _param_groups(list(gen.parameters()), gen.mapping_parameters(), lr),
        betas=ADAM_BETAS, weight_decay=0.0,
    )
    opt_d = torch.optim.AdamW(
        _param_groups(list(disc.parameters()), disc.slow_parameters(), lr_d),
        betas=ADAM_BETAS, weight_decay=0.0,
    )
    return opt_g, opt_d


class EMA:
    """Exponential moving average of a model's parameters; buffers are copied as they are."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - self.decay)
        for ema_buf, buf in zip(self.model.buffers(), model.buffers()):
            ema_buf.copy_(buf)
