"""Training images/s per worker: the library's full GAT step (D step + G step, aGP, MNG,
DiffAugment, REPA, EMA) as one Ray worker of the train stage runs it.

    python benchmarks/train_throughput.py                       # GAT-T1/2..T4/2, params.yaml
    python benchmarks/train_throughput.py --models GAT-T1/4 GAT-T2/4 --threads 2
    python benchmarks/train_throughput.py --models GAT-S/2 GAT-B/2 --batch 64 --device cuda

Batches sit in memory (no loader), latents [B, 4, 16, 16] (the embedded default), teacher
tokens [B, 17, 96] (the embedded stand-in's shape); batch per worker defaults to
train.batch / runtime.workers and lr to the width-aware rule, both from params.yaml. Torch
uses ``--threads`` CPU threads (default runtime.cpus_per_worker, what Ray gives a worker).
Prints a table: G/D parameters, G MFLOPs per sample (DiT convention), median ms per step, images/s,
and on CUDA (bf16 autocast from the library) the peak memory.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from gat.flops import generator_gflops
from gat.models import count_params
from gat.train import GATTrainer
from pipeline.config import load_params

DEFAULT_MODELS = ["GAT-T1/2", "GAT-T2/2", "GAT-T3/2", "GAT-T4/2"]


def bench(name: str, batch: int, latent: tuple[int, int], tokens: tuple[int, int],
          classes: int, cfg, grad_accum: int, device: torch.device, warmup: int,
          iters: int) -> dict:
    """Median time of ``GATTrainer.step`` on a fixed batch of ``batch`` latents [C, H, H]."""
    channels, size = latent
    trainer = GATTrainer(name, channels, size, classes, tokens[1], cfg, device,
                         grad_accum=grad_accum)
    x = torch.randn(batch, channels, size, size)
    c = torch.randint(0, classes, (batch,))
    t = torch.randn(batch, *tokens)
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        trainer.step(x, c, t)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step_s = sorted(times)[len(times) // 2]
    row = {"model": name, "G_params_M": count_params(trainer.G) / 1e6,
           "D_params_M": count_params(trainer.D) / 1e6,
           "G_mflops": generator_gflops(trainer.G) * 1e3, "batch": batch, "lr": trainer.lr,
           "step_ms": step_s * 1e3, "images_per_s": batch / step_s}
    if device.type == "cuda":
        row["peak_mem_GiB"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def print_table(rows: list[dict]) -> None:
    cols = list(rows[0])
    fmt = {"model": "{:<10}", "batch": "{:>5}", "lr": "{:>9.3g}"}
    print("  ".join(f"{c:>12}" if c != "model" else f"{c:<10}" for c in cols))
    for row in rows:
        print("  ".join(fmt.get(c, "{:>12.2f}").format(row[c]) for c in cols))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--params", default=None, help="params file (default params.yaml)")
    parser.add_argument("--batch", type=int, help="per worker (default train.batch/workers)")
    parser.add_argument("--latent", default="4,16", help="C,H of the latents (default 4,16)")
    parser.add_argument("--tokens", default="17,96", help="1+N,T of the teacher tokens")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--threads", type=int, help="torch threads (default cpus_per_worker)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = parser.parse_args()
    params = load_params(args.params, check_paths=False)
    rt = params.runtime
    torch.set_num_threads(args.threads or max(1, round(rt.cpus_per_worker)))
    batch = args.batch or params.train.batch // rt.workers
    latent = tuple(int(v) for v in args.latent.split(","))
    tokens = tuple(int(v) for v in args.tokens.split(","))
    print(f"device {args.device}, {torch.get_num_threads()} thread(s), batch {batch} per "
          f"worker, latents {latent[0]}x{latent[1]}x{latent[1]}, grad_accum {rt.grad_accum}")
    rows = [bench(m, batch, latent, tokens, args.classes, params.train, rt.grad_accum,
                  torch.device(args.device), args.warmup, args.iters) for m in args.models]
    print_table(rows)
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
