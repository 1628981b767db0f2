"""Flat vs bucketed (overlapped) gradient all-reduce: step times of 2 gloo workers on this CPU.

    python benchmarks/allreduce_overlap.py                        # GAT-S/4, batch 4 per worker
    python benchmarks/allreduce_overlap.py --model GAT-T4/4 --batch 16 --bucket-mb 5
    python benchmarks/allreduce_overlap.py --device cuda --model GAT-B/2 --batch 32 \
        --latent 4,32 --teacher-dim 768        # NCCL, one GPU per worker, bf16 autocast

Spawns ``--workers`` processes (gloo on 127.0.0.1, ``--threads`` torch threads each) that
build one :class:`gat.train.GATTrainer` each and time its full step (D step + G step) with
the two ways of averaging gradients (:mod:`gat.distributed`), alternating flat and bucketed
step by step (the order swapped every round) on a fixed batch in memory, so both see the
same load. Both reducers belong to the same trainer (the bucketed one's hooks only act when
it is armed), so the model, data and memory are the same. Prints the median step times,
their ratio, the time of one flat all-reduce of all of G's and D's gradients alone (how
much communication there is to hide), and ``uptime`` (the machine is shared).

The default GAT-S/4 on 16x16 latents has 65M parameters but only 17 tokens, so its
gradients (260 MB a step) are large next to its compute: communication is visible.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gat.distributed import GradientReducer
from gat.models import count_params
from gat.train import GATTrainer, TrainConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed_step(trainer: GATTrainer, batch) -> float:
    dist.barrier()  # start together: a step's time includes waiting for the slower worker
    t0 = time.perf_counter()
    trainer.step(*batch)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _flat_allreduce_s(trainer: GATTrainer, reps: int = 3) -> float:
    """Median time of one all-reduce of every gradient of G and D (communication alone)."""
    flat = torch.cat([p.grad.flatten() for net in (trainer.G, trainer.D)
                      for p in net.parameters() if p.grad is not None])
    times = []
    for _ in range(reps):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(flat)
        if flat.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def worker(rank: int, args: argparse.Namespace, port: int) -> None:
    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=args.workers)
    channels, size = (int(v) for v in args.latent.split(","))
    trainer = GATTrainer(args.model, channels, size, args.classes, args.teacher_dim,
                         TrainConfig(), device, seed=0, allreduce="bucketed",
                         bucket_mb=args.bucket_mb, precision="bf16" if cuda else "fp32")
    reducers = {"flat": (GradientReducer(trainer.G, "flat"), GradientReducer(trainer.D, "flat")),
                "bucketed": (trainer.reduce_g, trainer.reduce_d)}
    g = torch.Generator().manual_seed(rank)
    batch = (torch.randn(args.batch, channels, size, size, generator=g),
             torch.randint(0, args.classes, (args.batch,), generator=g),
             torch.randn(args.batch, 1 + (size // 4) ** 2, args.teacher_dim, generator=g))
    batch = tuple(t.to(device) for t in batch)
    times: dict[str, list[float]] = {mode: [] for mode in reducers}
    for i in range(args.warmup + args.rounds):
        order = list(reducers) if i % 2 == 0 else list(reversed(reducers))
        for mode in order:
            trainer.reduce_g, trainer.reduce_d = reducers[mode]
            step_s = _timed_step(trainer, batch)
            if i >= args.warmup:
                times[mode].append(step_s)
    comm_s = _flat_allreduce_s(trainer)
    if rank == 0:
        flat, bucketed = (statistics.median(times[m]) for m in ("flat", "bucketed"))
        grads_mb = 4 * (count_params(trainer.G) + count_params(trainer.D)) / 2**20
        print(f"{args.model}, latents [{channels},{size},{size}], batch {args.batch} per worker, "
              f"{args.workers} {'NCCL GPU' if cuda else 'gloo'} workers x {args.threads} "
              f"threads, {grads_mb:.0f} MB of "
              f"gradients a step; buckets of {args.bucket_mb} MB: D "
              f"{len(trainer.reduce_d.buckets)}, G {len(trainer.reduce_g.buckets)}")
        print(f"median of {args.rounds} steps each, alternating: flat {flat * 1e3:.0f} ms, "
              f"bucketed {bucketed * 1e3:.0f} ms, flat/bucketed {flat / bucketed:.3f}x")
        print(f"one flat all-reduce of all gradients alone: {comm_s * 1e3:.0f} ms "
              f"({comm_s / flat:.0%} of a flat step)")
        print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="GAT-S/4")
    parser.add_argument("--batch", type=int, default=4, help="per worker")
    parser.add_argument("--latent", default="4,16", help="C,H of the latents")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--teacher-dim", type=int, default=96)
    parser.add_argument("--bucket-mb", type=float, default=25.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: NCCL, worker r on GPU r (needs --workers GPUs), bf16")
    args = parser.parse_args()
    if args.device == "cuda" and torch.cuda.device_count() < args.workers:
        parser.error(f"--device cuda needs {args.workers} GPUs (one per worker); "
                     f"{torch.cuda.device_count()} visible")
    mp.spawn(worker, args=(args, _free_port()), nprocs=args.workers, join=True)


if __name__ == "__main__":
    main()
