"""How long a checkpoint stalls training: Ray's synchronous vs asynchronous upload.

    python benchmarks/checkpoint_stall.py                     # 1 worker, GAT-B/2-sized state
    python benchmarks/checkpoint_stall.py --mb 2000 --reports 6 --storage /mnt/nfs/bench

A real Ray Train run (``TorchTrainer``, ``--workers`` CPU workers on a local Ray) reports
``--reports`` checkpoints per upload mode, alternating SYNC and ASYNC (the order swapped
every round, so both see the same load), each a ``--mb`` MB state written and sealed the way
the training worker does it (``torch.save``, then :func:`pipeline.training.checkpoint.seal`:
every file's sha256) into a fresh folder, then ``ray.train.report(..., checkpoint=...,
checkpoint_upload_mode=...)``. It times, on rank 0, the write (the same in both modes) and
the report call: what every rank waits for before its next step (the report is a barrier).
With SYNC the call returns after Ray has copied the folder to ``--storage``; with ASYNC it
returns at once and Ray copies it in a thread (what ``pipeline.training.worker`` does for
every checkpoint but the final one). Prints the medians, their ratio and ``uptime``.

The default 1,000 MB is about GAT-B/2's G, D, EMA and both Adam states in fp32 (the paper's
smallest ImageNet size; XL/2 is ~10x). On local disk the copy is the fastest it gets; on a
cluster's shared file system or an object store it is slower, and so is SYNC.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from pipeline.ray_utils import init_ray
from pipeline.training.checkpoint import CHECKPOINT_PREFIX, STATE, seal


def _loop(config: dict) -> None:
    import ray.train

    mb, reports = config["mb"], config["reports"]
    state = {"w": torch.randn(mb * 2**20 // 4)}
    times: dict[str, dict[str, list[float]]] = {m: {"write": [], "report": []}
                                                 for m in ("SYNC", "ASYNC")}
    step = 0
    for rnd in range(reports):
        for mode in (("SYNC", "ASYNC") if rnd % 2 == 0 else ("ASYNC", "SYNC")):
            step += 1
            folder = Path(tempfile.mkdtemp(prefix="bench-ckpt-"))
            t0 = time.perf_counter()
            torch.save(state, folder / STATE)
            seal(folder, step)
            t1 = time.perf_counter()
            ray.train.report({"step": float(step)},
                             checkpoint=ray.train.Checkpoint.from_directory(folder),
                             checkpoint_dir_name=f"{CHECKPOINT_PREFIX}{step:08d}",
                             checkpoint_upload_mode=ray.train.CheckpointUploadMode[mode],
                             delete_local_checkpoint_after_upload=True)
            t2 = time.perf_counter()
            times[mode]["write"].append(t1 - t0)
            times[mode]["report"].append(t2 - t1)
            # Let an async upload finish before the next write, as a training run's
            # checkpoint interval would: the figure is the stall, not disk contention.
            ray.train.get_all_reported_checkpoints(
                consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
    if ray.train.get_context().get_world_rank() == 0:  # for the driver (this machine)
        Path(config["out"]).write_text(json.dumps({
            f"{mode}_{part}": statistics.median(values)
            for mode, t in times.items() for part, values in t.items()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=1000, help="state size per checkpoint")
    parser.add_argument("--reports", type=int, default=4, help="checkpoints per mode")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--storage", type=Path, default=None,
                        help="Ray's storage_path (default: a temp folder on this disk)")
    args = parser.parse_args()

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage = args.storage or Path(tempfile.mkdtemp(prefix="bench-storage-"))
    init_ray(num_cpus=max(2, args.workers))  # the stages' local Ray (loopback, pacing)
    out = storage / "stall.json"
    trainer = TorchTrainer(_loop, train_loop_config={"mb": args.mb, "reports": args.reports,
                                                     "out": str(out)},
                           scaling_config=ScalingConfig(num_workers=args.workers),
                           run_config=RunConfig(name="checkpoint-stall",
                                                storage_path=str(storage)))
    trainer.fit()
    m = json.loads(out.read_text())
    ray.shutdown()
    print(f"{args.mb} MB per checkpoint, {args.reports} per mode, {args.workers} worker(s), "
          f"storage {storage}; median seconds on rank 0:")
    print("| upload | write + seal | report call (every rank waits) | stall in all |")
    print("|---|---|---|---|")
    stall = {}
    for mode in ("SYNC", "ASYNC"):
        w, r = m[f"{mode}_write"], m[f"{mode}_report"]
        stall[mode] = w + r
        print(f"| {mode} | {w:.2f} | {r:.2f} | {w + r:.2f} |")
    print(f"report call SYNC/ASYNC: {m['SYNC_report'] / max(m['ASYNC_report'], 1e-6):.1f}x; "
          f"stall in all SYNC/ASYNC: {stall['SYNC'] / stall['ASYNC']:.2f}x")
    if args.storage is None:
        shutil.rmtree(storage, ignore_errors=True)
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
