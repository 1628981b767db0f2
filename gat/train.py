"""One GAT training step (D step, then G step) as a library function.

A single process can run it as is; the Ray Train stage runs one per worker and the
gradients are averaged across workers by :class:`gat.distributed.GradientReducer` (a flat
or DDP-like bucketed all-reduce), compatible with the D step's G-without-gradients and the
frozen-D G step. Numerics: fp32, or bf16 autocast (the paper's; on CPU too); G's and D's
blocks can be compiled (inductor).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from gat.augment import AugmentParams, apply_augment, cached_target_mask, sample_augment
from gat.distributed import (
    BUCKET_MB,
    AllReduce,
    GradientReducer,
    all_workers,
    average_tensor,
    broadcast_module,
    world,
)
from gat.losses import (
    approx_gradient_penalty,
    d_relativistic,
    g_relativistic,
    repa_loss,
    resize_token_grid,
)
from gat.mng import nested_noise, perturb_levels
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
    # release: flow-style t = (0.885, 0.76, 0.51, 0.01); paper: Eq. 2's VP alphas (gat.mng)
    mng_schedule: Literal["release", "paper"] = "release"
    ema_decay: float = 0.999
    agp_weight: float = 0.1  # lambda_aGP (the release's gamma), for R1 and R2 alike
    # release: the penalty enters as gamma/2 * aR (StyleGAN's R1 form, 0.05 at 0.1);
    # paper: Eq. 10 as written, lambda * aR
    agp_convention: Literal["release", "paper"] = "release"
    agp_sigma: float = 0.01
    repa_weight: float = 1.0
    # release: 1-cos of [cls] plus the mean over patch tokens; paper: Eq. 9's mean over
    # all 1+N tokens (the [cls] token, which the logit reads, then weighs 1/(N+1))
    repa_weighting: Literal["release", "paper"] = "release"
    grad_clip: float = 1.0  # clip G's and D's gradient norm to this (0: off); the release's
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


Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")


def compile_blocks(*modules: nn.Module) -> None:
    """torch.compile (inductor) the transformer blocks and output heads of G and D, in place.

    Regional compilation: identical blocks share one compiled graph (their parameters are
    graph inputs), so compile time does not grow with depth; the trainer's Python (MNG,
    aGP, augmentation, losses) stays eager, where inductor has little to fuse; and
    ``nn.Module.compile`` keeps ``state_dict`` keys, so checkpoints are unchanged.
    """
    for module in modules:
        for name in ("blocks", "heads"):
            for block in getattr(module, name, []):
                block.compile()


class NonFiniteError(RuntimeError):
    """A loss or logit became NaN/inf: training diverged. ``here``: on this worker (every
    worker raises at the same step; only where it began is ``here`` true)."""

    def __init__(self, message: str, here: bool = True):
        super().__init__(message)
        self.here = here


def clip_gradients(module: nn.Module, max_norm: float) -> torch.Tensor:
    """Scale the gradients of ``module`` to a global L2 norm of at most ``max_norm`` (0: no
    clipping); returns the norm before clipping, a 0-dim tensor (no host sync)."""
    params = [p for p in module.parameters() if p.grad is not None]
    if not params:
        return torch.zeros(())
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    return torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)


# REPA targets computed in the step: (rows of the batch, which of them D sees flipped) ->
# the teacher's tokens [n, 1+N', T] of those images, flipped as D saw them (teacher.mode
# online). A tensor instead holds cached tokens of the unflipped images.
TeacherFn = Callable[[slice, torch.Tensor], torch.Tensor]


class GATTrainer:
    """Holds G, D, EMA of G and both optimizers; :meth:`step` runs one training iteration.

    Args:
        name: model size, e.g. ``GAT-S/2``. channels/size: latent shape [channels, size, size].
        num_classes: classes of the conditioning (0: unconditional).
        teacher_dim: width of the REPA teacher.
        d_name: D's size when it differs from G's (its own width-aware lr then).
        grad_accum: micro-batches per step (same result, less memory).
        grad_checkpointing: recompute activations in backward (same result, less memory).
        precision: ``bf16`` runs G's and D's forwards under bf16 autocast (on CPU too),
            ``fp32`` without, ``auto`` bf16 on CUDA and fp32 elsewhere. Parameters, optimizer
            state, losses and the logits' checks stay fp32.
        compile_models: torch.compile G's and D's blocks (:func:`compile_blocks`); the EMA
            copy stays eager (it only samples).
        allreduce: how gradients are averaged over workers: ``flat`` (one all-reduce per
            network after the backward) or ``bucketed`` (DDP's overlapped buckets of
            ``bucket_mb``); see :mod:`gat.distributed`.
    """

    def __init__(
        self, name: str, channels: int, size: int, num_classes: int, teacher_dim: int,
        cfg: TrainConfig = TrainConfig(), device: str | torch.device = "cpu", seed: int = 0,
        grad_accum: int = 1, grad_checkpointing: bool = False, d_name: str | None = None,
        precision: Precision = "auto", compile_models: bool = False,
        allreduce: AllReduce = "flat", bucket_mb: float = BUCKET_MB,
    ):
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: choose one of {PRECISIONS}")
        self.cfg, self.name, self.device = cfg, name, torch.device(device)
        self.grad_accum = grad_accum
        self.bf16 = precision == "bf16" or (precision == "auto" and self.device.type == "cuda")
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
        if compile_models:  # after the EMA's deep copy: it stays an eager module
            compile_blocks(self.G, self.D)
        self.reduce_g = GradientReducer(self.G, allreduce, bucket_mb)
        self.reduce_d = GradientReducer(self.D, allreduce, bucket_mb)
        self.step_count = 0
        rank, _ = world()
        torch.manual_seed(seed + 1 + 7919 * rank)  # but different noise and z per worker

    @property
    def G_ema(self) -> nn.Module:
        return self.ema.model

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ D inputs

    def _augment_params(self, batch: int) -> AugmentParams | None:
        if not self.cfg.augment:
            return None
        return sample_augment(batch, self.G.size, self.device, p=self.cfg.augment_p)

    def _d_input(
        self, levels: list[torch.Tensor], aug: AugmentParams | None,
        noise: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Levels [B,C,H,W] x K -> D input [B, K*C, H, W]: augment (shared), then MNG noise."""
        x = torch.cat(levels, dim=1)
        if aug is not None:
            x = apply_augment(x, aug, MNG_LEVELS)
        return perturb_levels(list(x.chunk(MNG_LEVELS, dim=1)), self.cfg.mng, noise,
                              schedule=self.cfg.mng_schedule)

    def _clean_and_perturbed(
        self, levels: list[torch.Tensor], real: bool
    ) -> tuple[torch.Tensor, AugmentParams | None]:
        """D inputs [2B, ...] of x and x + eps' (aGP), sharing augmentation and MNG noise.

        A real image is one image at every level: one eps' perturbs it. G's K outputs are K
        images: each gets its own eps' (the release's R2 draws per level)."""
        b, sigma = levels[0].shape[0], self.cfg.agp_sigma
        if real:
            eps = torch.randn_like(levels[-1]) * sigma
            perturbed = [x + eps for x in levels]
        else:
            perturbed = [x + torch.randn_like(x) * sigma for x in levels]
        both = [torch.cat([x, xp]) for x, xp in zip(levels, perturbed)]
        aug = self._augment_params(b)
        if aug is not None:
            aug = _repeat_params(aug)
        noise = nested_noise(levels[-1].shape, self.cfg.mng, self.cfg.mng_schedule, None,
                             self.device, levels[-1].dtype, MNG_LEVELS)
        return self._d_input(both, aug, [torch.cat([n, n]) for n in noise]), aug

    def _agp_factor(self) -> float:
        half = 0.5 if self.cfg.agp_convention == "release" else 1.0
        return half * self.cfg.agp_weight

    # ------------------------------------------------------------------ the step

    def step(
        self, latents: torch.Tensor, labels: torch.Tensor,
        teacher: torch.Tensor | TeacherFn | None = None,
    ) -> dict[str, float]:
        """One D step then one G step on a batch; the G step reuses the D step's z.

        latents [B, C, H, W] (scaled VAE latents), labels [B] (int64). teacher: REPA
        targets of the same (unaugmented) images, either cached tokens [B, 1+n, T] or a
        :data:`TeacherFn` that computes them for the flips D's input receives; None skips
        REPA. Returns scalar metrics (two host syncs in all: one per network, before its
        optimizer step). Raises NonFiniteError naming the step on divergence.
        """
        latents, labels = latents.to(self.device), labels.to(self.device)
        # An unconditional model (0 classes) sees one class id: 0, whatever the data's labels.
        labels = class_ids(labels, self.G.num_classes, len(labels), self.device)
        if torch.is_tensor(teacher):
            teacher = resize_token_grid(teacher.to(self.device), self.D.grid)
        accum, b = self.grad_accum, len(latents)
        rows = [slice(i * b // accum, (i + 1) * b // accum) for i in range(accum)]
        parts = [(latents[r], labels[r], torch.randn(r.stop - r.start, Z_DIM, device=self.device),
                  _rows_of(teacher, r)) for r in rows]
        metrics = self._d_step(parts)
        metrics.update(self._g_step(parts))
        self.step_count += 1
        self.ema.update(self.G, self.step_count)
        return metrics

    def _repa_targets(self, tokens: torch.Tensor | Callable, b: int,
                      aug: AugmentParams | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """REPA targets [b, 1+N, T] and mask for the first b (real) rows of D's input."""
        flip = aug.flip[:b] if aug is not None else torch.zeros(b, dtype=torch.bool,
                                                                device=self.device)
        if callable(tokens):  # the teacher sees the images flipped as D does: all targets
            return resize_token_grid(tokens(flip).to(self.device), self.D.grid), None
        mask = cached_target_mask(flip, tokens.shape[1]) if aug is not None else None
        return tokens, mask

    def _d_step(self, parts: list) -> dict[str, float]:
        cfg, sums = self.cfg, {}
        self.opt_d.zero_grad(set_to_none=True)
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        for i, (x, c, z, tokens) in enumerate(parts):
            b = x.shape[0]
            with torch.no_grad(), self._autocast():
                fakes = [f.float() for f in self.G(z, c)]
            real_in, aug_real = self._clean_and_perturbed([x] * MNG_LEVELS, real=True)
            fake_in, _ = self._clean_and_perturbed(fakes, real=False)
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
                target, mask = self._repa_targets(tokens, b, aug_real)
                repa = repa_loss(projected, target, mask, cfg.repa_weighting)
            loss = adv + self._agp_factor() * (r1 + r2) + cfg.repa_weight * repa
            finite &= torch.isfinite(logits).all() & torch.isfinite(loss)
            if i == len(parts) - 1:
                self.reduce_d.arm()  # workers average the accumulated gradient only
            (loss / len(parts)).backward()
            _accumulate(sums, loss_d=loss, d_adv=adv, r1=r1, r2=r2, repa=repa,
                        logit_real=l_real.mean(), logit_fake=l_fake.mean())
        self.reduce_d.finish()
        sums["grad_norm_d"] = clip_gradients(self.D, cfg.grad_clip) * len(parts)
        out = self._fetch(sums, len(parts), finite, "D")
        out["logit_gap"] = out["logit_real"] - out["logit_fake"]
        self.opt_d.step()
        return out

    def _g_step(self, parts: list) -> dict[str, float]:
        sums: dict[str, torch.Tensor] = {}
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        self.D.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        try:
            for i, (x, c, z, _) in enumerate(parts):
                b = x.shape[0]
                with self._autocast():
                    w = self.G.mapping(z, c)  # the D step's z: G trains on the fakes D saw
                    fakes = [f.float() for f in self.G.synthesize(w)]
                    real_in = self._d_input([x] * MNG_LEVELS, self._augment_params(b))
                    fake_in = self._d_input(fakes, self._augment_params(b))
                    with torch.no_grad():
                        l_real = self.D(real_in, c).float()
                    l_fake = self.D(fake_in, c).float()
                loss = g_relativistic(l_real, l_fake)
                finite &= torch.isfinite(l_fake).all() & torch.isfinite(loss)
                if i == len(parts) - 1:
                    self.reduce_g.arm()  # D is frozen: only G's hooks fire
                (loss / len(parts)).backward()
                self.G.update_w_avg(w.detach(), c, self.cfg.w_avg_beta)
                _accumulate(sums, loss_g=loss)
        finally:
            self.D.requires_grad_(True)
        self.reduce_g.finish()
        average_tensor(self.G.w_avg)  # each worker saw other w: keep one truncation centre
        sums["grad_norm_g"] = clip_gradients(self.G, self.cfg.grad_clip) * len(parts)
        out = self._fetch(sums, len(parts), finite, "G")
        self.opt_g.step()
        return out

    def _fetch(self, sums: dict[str, torch.Tensor], parts: int, finite: torch.Tensor,
               step_part: str) -> dict[str, float]:
        """One host sync: the metrics' means and the finite flags, this worker's and every
        worker's (all stop at the same step); raises on divergence."""
        everyone = all_workers(finite)
        values = torch.stack([v.detach().float().reshape(()) for v in sums.values()]
                             + [finite.float(), everyone.float()]).tolist()
        if values[-1] != 1.0:
            here = values[-2] != 1.0
            raise NonFiniteError(
                f"non-finite D logit or {step_part} loss in the {step_part} step"
                f"{'' if here else ' of another worker'} at step {self.step_count + 1}: "
                "training diverged (lower train.lr_base, or resume from the last checkpoint)",
                here)
        return {k: v / parts for k, v in zip(sums, values[:len(sums)])}

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


def _accumulate(sums: dict[str, torch.Tensor], **values: torch.Tensor) -> None:
    """Add each value (a 0-dim tensor, detached) to its running sum: no host sync."""
    for key, value in values.items():
        sums[key] = sums[key] + value.detach() if key in sums else value.detach()


def _rows_of(teacher: torch.Tensor | TeacherFn | None,
             rows: slice) -> torch.Tensor | Callable | None:
    """The REPA targets of one micro-batch: a slice of cached tokens, or the teacher
    function bound to those rows (it then takes only the flips)."""
    if teacher is None or torch.is_tensor(teacher):
        return None if teacher is None else teacher[rows]
    return lambda flip: teacher(rows, flip)


def _repeat_params(aug: AugmentParams) -> AugmentParams:
    """The same per-sample parameters for the clean and the aGP-perturbed copy."""
    fields = {k: torch.cat([v, v]) if torch.is_tensor(v) else v for k, v in vars(aug).items()}
    return AugmentParams(**fields)
