"""Forward+backward speed of G (all K outputs) and D (with its REPA head).

    python benchmarks/model_speed.py                      # S/2 and B/2, batch 8, this device
    python benchmarks/model_speed.py --models GAT-S/2 GAT-B/2 GAT-L/2 GAT-XL/2 --batch 64 \
        --bf16 --compile                                  # on a GPU

Prints ms per step and images/s for G, D and G+D together, and, on CUDA, model FLOPs
utilisation (MFU) against the bf16 peak given by --peak-tflops.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch

from gat.flops import generator_gflops
from gat.models import MNG_LEVELS, Z_DIM, build_models


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds of ``fn()`` over ``iters`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def bench(name: str, batch: int, device: torch.device, bf16: bool, compile_: bool,
          checkpointing: bool, warmup: int, iters: int) -> dict:
    gen, disc = build_models(name, 4, 32, 1000, 768)
    gen.to(device).train()
    disc.to(device).train()
    gen.grad_checkpointing = disc.grad_checkpointing = checkpointing
    g_fwd, d_fwd = gen, disc
    if compile_:
        g_fwd, d_fwd = torch.compile(gen), torch.compile(disc)
    z = torch.randn(batch, Z_DIM, device=device)
    c = torch.randint(0, 1000, (batch,), device=device)
    x = torch.randn(batch, 4 * MNG_LEVELS, 32, 32, device=device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if bf16
                else contextlib.nullcontext())

    def g_step():
        with autocast:
            out = torch.cat(g_fwd(z, c), 1)
        out.float().square().mean().backward()

    def d_step():
        with autocast:
            logit, tokens = d_fwd(x, c, batch)
        (logit.float().mean() + tokens.float().square().mean()).backward()

    def both():
        g_step()
        d_step()

    t_g = time_fn(g_step, device, warmup, iters)
    t_d = time_fn(d_step, device, warmup, iters)
    t_both = time_fn(both, device, warmup, iters)
    with torch.device("meta"):
        meta_gen, _ = build_models(name, 4, 32, 1000, 768)
    gflops = generator_gflops(meta_gen)
    return {"model": name, "batch": batch, "device": str(device), "bf16": bf16,
            "compile": compile_, "checkpointing": checkpointing,
            "g_ms": t_g * 1e3, "d_ms": t_d * 1e3, "g_plus_d_ms": t_both * 1e3,
            "g_img_s": batch / t_g, "d_img_s": batch / t_d, "g_plus_d_img_s": batch / t_both,
            # fwd+bwd of G ~ 3x its forward; 2 FLOPs per multiply-add
            "g_train_tflops": 3 * 2 * gflops * batch / t_g / 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["GAT-S/2", "GAT-B/2"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--compile", action="store_true", help="torch.compile G and D")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="bf16 dense peak for MFU (H100 SXM: 989)")
    parser.add_argument("--json", action="store_true", help="one JSON line per model")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"# device={device} torch={torch.__version__} threads={torch.get_num_threads()}")
    for name in args.models:
        r = bench(name, args.batch, device, args.bf16, args.compile, args.checkpointing,
                  args.warmup, args.iters)
        if device.type == "cuda":
            r["g_mfu"] = r["g_train_tflops"] / args.peak_tflops
        if args.json:
            print(json.dumps(r))
            continue
        print(f"{name:10s} batch {args.batch:3d}  G fwd+bwd {r['g_ms']:8.1f} ms "
              f"({r['g_img_s']:7.1f} img/s)  D fwd+bwd {r['d_ms']:8.1f} ms "
              f"({r['d_img_s']:7.1f} img/s)  G+D {r['g_plus_d_ms']:8.1f} ms "
              f"({r['g_plus_d_img_s']:7.1f} img/s)"
              + (f"  G MFU {r['g_mfu']:.1%}" if "g_mfu" in r else ""))


if __name__ == "__main__":
    main()
