"""Training FLOPs per image of one full GATTrainer.step, its speed, and CPU MFU.

    python benchmarks/train_flops.py                              # GAT-T1/4..T4/4, batch 32
    python benchmarks/train_flops.py --models GAT-T4/4 --batch 32 64 --threads 2
    python benchmarks/train_flops.py --models GAT-T4/4 --compare compile --rounds 3

FLOPs: one ``GATTrainer.step`` (D step: G forward for the fakes, D forward/backward on
reals, fakes and their aGP-perturbed copies with the K=4 MNG levels and the REPA head;
G step: G forward/backward through a frozen D; EMA) under
``torch.utils.flop_counter.FlopCounterMode`` with the math SDPA backend (fused CPU
attention kernels count 0 otherwise). FlopCounterMode counts matmuls, convolutions and
attention, with a multiply-add as 2 FLOPs; elementwise work (norms, activations, Adam,
EMA, augmentation) is not counted. The table gives it per image (``/batch``) in both
conventions: ``GFLOP/img`` (torch's, what MFU uses) and ``GMAC/img`` (the paper's and
DiT's, half of it), with one G forward and one D forward (REPA head included) of one
sample beside it for scale.

Speed: the median step time of ``--iters`` steps after ``--warmup`` on a fixed batch in
memory (no loader), at ``--threads`` torch threads. MFU = counted FLOPs per second /
the fp32 matmul peak of this CPU, measured here with a large ``torch.matmul`` at the same
thread count. Every timing line carries the load average (the machine is shared).

``--compare BASE VARIANT`` times two variants alternately (``--rounds`` times, the order
swapped every round, each built afresh), prints the images/s ratio per round, and checks
that both give the same losses on the same inputs. Variants: ``lib`` (the library as it
is), ``loops`` (the per-parameter Python loops the library had before: unfused AdamW,
a norm per gradient and a clip per parameter, a w_avg update per class), ``compile``
(torch.compile, inductor, of G's and D's blocks and heads), ``threads1`` (1 torch
thread), ``batch2x``/``batch4x`` (images/s at 2x/4x the batch).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import gat.optim
import gat.train
from gat.flops import generator_gflops
from gat.train import GATTrainer, TrainConfig, compile_blocks

DEFAULT_MODELS = ["GAT-T1/4", "GAT-T2/4", "GAT-T3/4", "GAT-T4/4"]
_LIB_FUSED = gat.optim.FUSED_ADAMW
_LIB_CLIP = gat.train.clip_gradients


def load_avg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def matmul_peak(threads: int, n: int = 2048, reps: int = 10) -> float:
    """Best fp32 GFLOP/s of an n x n x n torch.matmul (2 n^3 FLOPs) at ``threads``."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def make_batch(batch: int, latent: tuple[int, int], tokens: tuple[int, int], classes: int,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c, s = latent
    return (torch.randn(batch, c, s, s, generator=g),
            torch.randint(0, classes, (batch,), generator=g),
            torch.randn(batch, *tokens, generator=g))


VARIANTS = ("lib", "loops", "compile", "threads1", "batch2x", "batch4x")


def build(name: str, latent, tokens, classes: int, cfg: TrainConfig, variant: str = "lib"
          ) -> GATTrainer:
    """A trainer for ``variant``: ``lib`` is the library as it is; ``loops`` puts back the
    per-parameter Python loops the library had before this benchmark (unfused AdamW, one
    norm per gradient, one w_avg update per class); ``compile`` compiles G's and D's blocks
    and heads; ``threads1``/``batch2x``/``batch4x`` are set by the caller (threads, batch)."""
    gat.optim.FUSED_ADAMW = _LIB_FUSED and variant != "loops"
    trainer = GATTrainer(name, latent[0], latent[1], classes, tokens[1], cfg, "cpu", seed=0)
    gat.optim.FUSED_ADAMW = _LIB_FUSED
    if variant == "loops":
        _use_loops(trainer)
    if variant == "compile":
        compile_trainer(trainer)
    return trainer


def _use_loops(trainer: GATTrainer) -> None:
    """The pre-benchmark Python-level implementations, for a before/after ratio."""

    def clip_gradients(module, max_norm: float) -> torch.Tensor:
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        norm = torch.stack([g.detach().float().norm() for g in grads]).norm()
        if max_norm > 0 and norm.item() > max_norm:
            for g in grads:
                g.mul_(max_norm / norm.item())
        return norm

    def update_w_avg(w, c, beta=0.995) -> None:
        with torch.no_grad():
            for cls in c.unique():
                trainer.G.w_avg[cls].lerp_(w[c == cls].float().mean(0), 1 - beta)

    gat.train.clip_gradients = clip_gradients  # restored by _restore_lib before the next build
    trainer.G.update_w_avg = update_w_avg


def _restore_lib() -> None:
    gat.train.clip_gradients = _LIB_CLIP


def _variant_threads(variant: str, threads: int) -> int:
    return 1 if variant == "threads1" else threads


def _variant_batch(variant: str, batch: int) -> int:
    return {"batch2x": 2, "batch4x": 4}.get(variant, 1) * batch


def compile_trainer(trainer: GATTrainer) -> None:
    """torch.compile (inductor) every G and D block and G's output heads, in place: what
    ``runtime.compile`` does (:func:`gat.train.compile_blocks`)."""
    compile_blocks(trainer.G, trainer.D)


def count_flops(trainer: GATTrainer, batch) -> float:
    """FLOPs (torch convention: a multiply-add is 2) of one whole step."""
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        trainer.step(*batch)
    return float(counter.get_total_flops())


def forward_gmacs(trainer: GATTrainer) -> tuple[float, float]:
    """(G forward, D forward with its REPA head) GMACs of one sample (paper convention).

    FlopCounterMode's per-module split of a training step is not usable here (it charges
    backward matmuls to whichever module's hook fired last), so the split is given as
    one forward of each network instead.
    """
    d = trainer.D
    x = torch.zeros(1, d.patch_embed.in_features // d.cfg.patch**2, trainer.G.size,
                    trainer.G.size)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        d(x, torch.zeros(1, dtype=torch.long), 1)
    return generator_gflops(trainer.G), counter.get_total_flops() / 2 / 1e9


def time_steps(trainer: GATTrainer, batch, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        trainer.step(*batch)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        trainer.step(*batch)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def losses_match(name: str, latent, tokens, classes: int, cfg: TrainConfig, batch_size: int,
                 variants: tuple[str, str], threads: int, steps: int = 3) -> float:
    """Largest relative difference of the step losses of two variants on the same inputs
    (the same batch size, so batch variants are compared at the base batch)."""
    results = []
    for v in variants:
        _restore_lib()
        torch.set_num_threads(_variant_threads(v, threads))
        trainer = build(name, latent, tokens, classes, cfg, v)
        torch.manual_seed(123)
        out = []
        for i in range(steps):
            m = trainer.step(*make_batch(batch_size, latent, tokens, classes, seed=i))
            out.append([m["loss_d"], m["loss_g"], m["r1"], m["r2"], m["repa"]])
        results.append(torch.tensor(out, dtype=torch.float64))
    _restore_lib()
    torch.set_num_threads(threads)
    a, b = results
    return float(((a - b).abs() / a.abs().clamp_min(1e-6)).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--batch", type=int, nargs="+", default=[32])
    parser.add_argument("--latent", default="4,16", help="C,H of the latents")
    parser.add_argument("--tokens", default="17,96", help="1+N,T of the teacher tokens")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--compare", nargs=2, choices=VARIANTS, metavar=("BASE", "VARIANT"),
                        default=None, help=f"two of {', '.join(VARIANTS)}")
    parser.add_argument("--rounds", type=int, default=2, help="alternations for --compare")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="TrainConfig override (as in quality_probe.py)")
    args = parser.parse_args()
    from quality_probe import parse_overrides  # beside this script

    latent = tuple(int(v) for v in args.latent.split(","))
    tokens = tuple(int(v) for v in args.tokens.split(","))
    cfg = TrainConfig(**{"ema_decay": 0.99, **parse_overrides(args.set)})
    peak = matmul_peak(args.threads)
    torch.set_num_threads(args.threads)
    print(f"fp32 matmul peak {peak:.1f} GFLOP/s at {args.threads} thread(s); load {load_avg()}")
    print(f"{'model':<9} {'batch':>5} {'GFLOP/img':>10} {'GMAC/img':>9} {'G fwd':>8} "
          f"{'D fwd':>8} {'ms/step':>8} {'img/s':>7} {'MFU':>6}  load")
    flops_of: dict[tuple[str, int], float] = {}
    for name in args.models:
        for b in args.batch:
            batch = make_batch(b, latent, tokens, args.classes)
            trainer = build(name, latent, tokens, args.classes, cfg)
            total = count_flops(trainer, batch)
            flops_of[(name, b)] = total
            g_fwd, d_fwd = forward_gmacs(trainer)
            step_s = time_steps(trainer, batch, args.warmup, args.iters)
            print(f"{name:<9} {b:>5} {total / b / 1e9:>10.4f} {total / b / 2e9:>9.4f} "
                  f"{g_fwd:>8.5f} {d_fwd:>8.5f} {step_s * 1e3:>8.1f} {b / step_s:>7.1f} "
                  f"{total / step_s / 1e9 / peak:>6.1%}  {load_avg()}", flush=True)
    if not args.compare:
        return
    base, variant = args.compare
    print(f"\n--compare {base} {variant}: {args.rounds} round(s), alternating")
    for name in args.models:
        b = args.batch[0]
        diff = losses_match(name, latent, tokens, args.classes, cfg, b, (base, variant),
                            args.threads)
        ratios = []
        for r in range(args.rounds):
            row = {}
            for v in (base, variant) if r % 2 == 0 else (variant, base):
                vb = _variant_batch(v, b)
                _restore_lib()
                torch.set_num_threads(_variant_threads(v, args.threads))
                t0 = time.perf_counter()
                trainer = build(name, latent, tokens, args.classes, cfg, v)
                batch = make_batch(vb, latent, tokens, args.classes)
                step_s = time_steps(trainer, batch, args.warmup, args.iters)
                setup_s = time.perf_counter() - t0 - step_s * args.iters
                if (name, vb) not in flops_of:
                    flops_of[(name, vb)] = count_flops(
                        build(name, latent, tokens, args.classes, cfg), batch)
                row[v] = vb / step_s
                print(f"  round {r} {name:<9} {v:<8} batch {vb:>3} {step_s * 1e3:>8.1f} ms/step "
                      f"{vb / step_s:>7.1f} img/s MFU "
                      f"{flops_of[(name, vb)] / step_s / 1e9 / peak:>6.1%} "
                      f"(build+warmup {setup_s:.1f} s)  load {load_avg()}", flush=True)
            ratios.append(row[variant] / row[base])
        _restore_lib()
        torch.set_num_threads(args.threads)
        print(f"  {name}: img/s ratio {variant}/{base} per round "
              f"{', '.join(f'{x:.3f}' for x in ratios)} (median "
              f"{statistics.median(ratios):.3f}); max rel. loss diff over 3 steps at batch "
              f"{b}: {diff:.2e}", flush=True)


if __name__ == "__main__":
    main()
