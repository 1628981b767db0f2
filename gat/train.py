"""One GAT training step (D step, then G step) as a library function.

A single process can run it as is; the Ray Train stage runs one per worker and the
gradients are averaged across workers by :func:`sync_gradients` (all-reduce), the same
data-parallel scheme as DDP but compatible with the several D forwards per step and the
frozen-D G step.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn

from gat.augment import AugmentParams, align_tokens, apply_augment, sample_augment
from gat.losses import (
    approx_gradient_penalty,
    d_relativistic,
    g_relativistic,
    repa_loss,
    resize_token_grid,
)
from gat.mng import mng_alphas, nested_noise, perturb_levels
from gat.models import MNG_LEVELS, Z_DIM, build_models, class_ids, model_config
from gat.optim import ADAM_BETAS, EMA, SLOW_LR_FACTOR, build_optimizers, width_aware_lr


@dataclass(frozen=True)
class TrainConfig:
    """The method's training hyperparameters, with the paper's values as defaults.

    The one definition: the pipeline's ``train`` params section extends this class.
    """

    lr_base: float = 4e-4  # tuned at GAT-S; the width-aware rule scales it (model_lr)
    c_base: int = 384  # width at which lr_base was tuned (GAT-S)
    mng: Literal["none", "lin", "exp", "msg"] = "exp"
    ema_decay: float = 0.999
    agp_weight: float = 0.1  # lambda_aGP, for R1 and R2 alike
    agp_sigma: float = 0.01
    repa_weight: float = 1.0
    augment: bool = True  # DiffAugment on D's inputs
    augment_p: float = 1.0  # probability that a sample is augmented (DiffAugment: 1)
    w_avg_beta: float = 0.995  # per-class running mean of w (truncation centre)
    ema_rampup: float = 0.0  # >0: EMA half-life <= ema_rampup * step (gat.optim.EMA)
    mapping_lr_factor: float = SLOW_LR_FACTOR  # G's mapping network: lr x this
    class_mlp_lr_factor: float = SLOW_LR_FACTOR  # D's class-embedding MLP: lr x this
    adam_beta1: float = ADAM_BETAS[0]
    adam_beta2: float = ADAM_BETAS[1]


def model_lr(cfg: TrainConfig, name: str) -> float:
    """The learning rate of model ``name`` (G and D alike): the width-aware rule applied to
    ``cfg.lr_base`` tuned at width ``cfg.c_base``. Everything that needs an lr calls this."""
    return width_aware_lr(cfg.lr_base, cfg.c_base, model_config(name).width)


def lr_base_for(cfg: TrainConfig, name: str, lr: float) -> float:
    """The ``lr_base`` under which :func:`model_lr` gives model ``name`` the learning rate
    ``lr`` (with ``cfg.c_base``)."""
    return lr * model_config(name).width / cfg.c_base


def lr_base_at(cfg: TrainConfig, name: str, like: str) -> float:
    """The ``lr_base`` that trains ``name`` at the learning rate the rule gives ``like``:
    how the paper's Fig. 5b trains one size at another size's lr."""
    return lr_base_for(cfg, name, model_lr(cfg, like))


class NonFiniteError(RuntimeError):
    """A loss or logit became NaN/inf: training diverged."""


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sync_gradients(module: nn.Module) -> None:
    """Average gradients over all workers (one flat all-reduce); no-op in one process."""
    _, world = _world()
    if world == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def _average_buffer(tensor: torch.Tensor) -> None:
    _, world = _world()
    if world > 1:
        dist.all_reduce(tensor)
        tensor /= world


def broadcast_module(module: nn.Module) -> None:
    """Make every worker start from rank 0's parameters and buffers."""
    if _world()[1] == 1:
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


def grad_norm(module: nn.Module) -> float:
    """Global L2 norm of the gradients (one foreach kernel, not one op per parameter)."""
    grads = [p.grad.detach().float() for p in module.parameters() if p.grad is not None]
    return torch.stack(torch._foreach_norm(grads)).norm().item() if grads else 0.0


class GATTrainer:
    """Holds G, D, EMA of G and both optimizers; :meth:`step` runs one training iteration.

    Args:
        name: model size, e.g. ``GAT-S/2``. channels/size: latent shape [channels, size, size].
        num_classes: classes of the conditioning (0: unconditional).
        teacher_dim: width of the REPA teacher.
        d_name: D's size when it differs from G's (its own width-aware lr then).
        grad_accum: micro-batches per step (same result, less memory).
        grad_checkpointing: recompute activations in backward (same result, less memory).
    """

    def __init__(
        self, name: str, channels: int, size: int, num_classes: int, teacher_dim: int,
        cfg: TrainConfig = TrainConfig(), device: str | torch.device = "cpu", seed: int = 0,
        grad_accum: int = 1, grad_checkpointing: bool = False, d_name: str | None = None,
    ):
        self.cfg, self.name, self.device = cfg, name, torch.device(device)
        self.grad_accum = grad_accum
        torch.manual_seed(seed)  # identical initialisation on every worker
        self.G, self.D = build_models(name, channels, size, num_classes, teacher_dim, d_name)
        self.G.to(self.device).train()
        self.D.to(self.device).train()
        self.G.grad_checkpointing = self.D.grad_checkpointing = grad_checkpointing
        broadcast_module(self.G)
        broadcast_module(self.D)
        self.lr, self.lr_d = model_lr(cfg, name), model_lr(cfg, d_name or name)
        self.opt_g, self.opt_d = build_optimizers(
            self.G, self.D, self.lr, self.lr_d, cfg.mapping_lr_factor, cfg.class_mlp_lr_factor,
            (cfg.adam_beta1, cfg.adam_beta2))
        self.ema = EMA(self.G, cfg.ema_decay, cfg.ema_rampup)
        self.alphas = mng_alphas(cfg.mng, MNG_LEVELS)
        self.step_count = 0
        rank, _ = _world()
        torch.manual_seed(seed + 1 + 7919 * rank)  # but different noise and z per worker

    @property
    def G_ema(self) -> nn.Module:
        return self.ema.model

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ D inputs

    def _augment_params(self, batch: int) -> AugmentParams | None:
        if not self.cfg.augment:
            return None
        return sample_augment(batch, self.G.size, self.D.cfg.patch, self.device,
                              p=self.cfg.augment_p)

    def _d_input(
        self, levels: list[torch.Tensor], aug: AugmentParams | None,
        eps: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Levels [B,C,H,W] x K -> D input [B, K*C, H, W]: augment (shared), then MNG noise."""
        x = torch.cat(levels, dim=1)
        if aug is not None:
            x = apply_augment(x, aug, MNG_LEVELS)
        return perturb_levels(list(x.chunk(MNG_LEVELS, dim=1)), self.cfg.mng, eps)

    def _clean_and_perturbed(
        self, levels: list[torch.Tensor]
    ) -> tuple[torch.Tensor, AugmentParams | None]:
        """D inputs [2B, ...] of x and x + eps' (aGP), sharing augmentation and MNG noise."""
        b = levels[0].shape[0]
        eps_agp = torch.randn_like(levels[-1]) * self.cfg.agp_sigma
        both = [torch.cat([x, x + eps_agp]) for x in levels]
        aug = self._augment_params(b)
        if aug is not None:
            aug = _repeat_params(aug)
        mng_eps = nested_noise(levels[-1].shape, self.alphas, None, self.device, levels[-1].dtype)
        return self._d_input(both, aug, [torch.cat([e, e]) for e in mng_eps]), aug

    # ------------------------------------------------------------------ the step

    def step(
        self, latents: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None = None
    ) -> dict[str, float]:
        """One D step then one G step on a batch.

        latents [B, C, H, W] (scaled VAE latents), labels [B] (int64), teacher [B, 1+n, T]
        teacher tokens of the same (unaugmented) images, or None to skip REPA.
        Returns scalar metrics. Raises NonFiniteError naming the step on divergence.
        """
        latents, labels = latents.to(self.device), labels.to(self.device)
        # An unconditional model (0 classes) sees one class id: 0, whatever the data's labels.
        labels = class_ids(labels, self.G.num_classes, len(labels), self.device)
        if teacher is not None:
            teacher = resize_token_grid(teacher.to(self.device), self.D.grid)
        accum = self.grad_accum
        parts = list(zip(latents.chunk(accum), labels.chunk(accum),
                         teacher.chunk(accum) if teacher is not None else [None] * accum))
        metrics = self._d_step(parts)
        metrics.update(self._g_step(parts))
        self.step_count += 1
        self.ema.update(self.G, self.step_count)
        return metrics

    def _d_step(self, parts: list) -> dict[str, float]:
        cfg, sums = self.cfg, {}
        self.opt_d.zero_grad(set_to_none=True)
        for x, c, tokens in parts:
            b = x.shape[0]
            with torch.no_grad(), self._autocast():
                fakes = [f.float() for f in self.G(torch.randn(b, Z_DIM, device=self.device), c)]
            real_in, aug_real = self._clean_and_perturbed([x] * MNG_LEVELS)
            fake_in, _ = self._clean_and_perturbed(fakes)
            use_repa = tokens is not None and cfg.repa_weight > 0
            with self._autocast():
                out = self.D(torch.cat([real_in, fake_in]), c.repeat(4), b if use_repa else 0)
            logits, projected = out if use_repa else (out, None)
            logits = logits.float()
            l_real, l_real_p, l_fake, l_fake_p = logits.chunk(4)
            adv = d_relativistic(l_real, l_fake)
            r1 = approx_gradient_penalty(l_real, l_real_p, cfg.agp_sigma)
            r2 = approx_gradient_penalty(l_fake, l_fake_p, cfg.agp_sigma)
            repa = torch.zeros((), device=self.device)
            if use_repa:
                target, mask = tokens, None
                if aug_real is not None:
                    target, mask = align_tokens(tokens, _first(aug_real, b), self.D.cfg.patch)
                repa = repa_loss(projected, target, mask)
            loss = adv + cfg.agp_weight * (r1 + r2) + cfg.repa_weight * repa
            self._check_finite(step_part="D", loss=loss, logits=logits)
            (loss / len(parts)).backward()
            _accumulate(sums, loss_d=loss, d_adv=adv, r1=r1, r2=r2, repa=repa,
                        logit_real=l_real.mean(), logit_fake=l_fake.mean())
        sync_gradients(self.D)
        out = {k: v / len(parts) for k, v in sums.items()}
        out["logit_gap"] = out["logit_real"] - out["logit_fake"]
        out["grad_norm_d"] = grad_norm(self.D)
        self.opt_d.step()
        return out

    def _g_step(self, parts: list) -> dict[str, float]:
        sums: dict[str, float] = {}
        self.D.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        try:
            for x, c, _ in parts:
                b = x.shape[0]
                with self._autocast():
                    w = self.G.mapping(torch.randn(b, Z_DIM, device=self.device), c)
                    fakes = [f.float() for f in self.G.synthesize(w)]
                    real_in = self._d_input([x] * MNG_LEVELS, self._augment_params(b))
                    fake_in = self._d_input(fakes, self._augment_params(b))
                    with torch.no_grad():
                        l_real = self.D(real_in, c).float()
                    l_fake = self.D(fake_in, c).float()
                loss = g_relativistic(l_real, l_fake)
                self._check_finite(step_part="G", loss=loss, logits=l_fake)
                (loss / len(parts)).backward()
                self.G.update_w_avg(w.detach(), c, self.cfg.w_avg_beta)
                _accumulate(sums, loss_g=loss)
        finally:
            self.D.requires_grad_(True)
        sync_gradients(self.G)
        _average_buffer(self.G.w_avg)  # each worker saw other w: keep one truncation centre
        out = {k: v / len(parts) for k, v in sums.items()}
        out["grad_norm_g"] = grad_norm(self.G)
        self.opt_g.step()
        return out

    def _check_finite(self, step_part: str, loss: torch.Tensor, logits: torch.Tensor) -> None:
        if not torch.isfinite(logits).all():
            raise NonFiniteError(
                f"non-finite D logit in the {step_part} step at step {self.step_count + 1}: "
                "training diverged (lower train.lr_base, or resume from the last checkpoint)"
            )
        if not math.isfinite(loss.item()):
            raise NonFiniteError(
                f"non-finite {step_part} loss ({loss.item()}) at step {self.step_count + 1}: "
                "training diverged (lower train.lr_base, or resume from the last checkpoint)"
            )

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """Everything needed to resume; tensors only, so ``torch.load(weights_only=True)`` works."""
        state = {
            "G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "step": torch.tensor(self.step_count), "rng_cpu": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["rng_cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.step_count = int(state["step"])
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["rng_cuda"])


def _accumulate(sums: dict[str, float], **values: torch.Tensor) -> None:
    for key, value in values.items():
        sums[key] = sums.get(key, 0.0) + float(value.detach())


def _repeat_params(aug: AugmentParams) -> AugmentParams:
    """The same per-sample parameters for the clean and the aGP-perturbed copy."""
    fields = {k: torch.cat([v, v]) if torch.is_tensor(v) else v for k, v in vars(aug).items()}
    return AugmentParams(**fields)


def _first(aug: AugmentParams, n: int) -> AugmentParams:
    fields = {k: v[:n] if torch.is_tensor(v) else v for k, v in vars(aug).items()}
    return AugmentParams(**fields)
