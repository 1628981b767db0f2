"""Train one model size with Ray Train (workers, GPUs and length from params.yaml).

    python -m stages.train GAT-T1/4 [--dry-run]

Writes outputs/train/<SIZE>/generator/ (EMA generator: safetensors + config.json),
metrics.json and log.csv (per-step losses, logit gap, R1, R2, REPA, grad norms, images/s),
and logs all of it to the size's MLflow run. To resume after a kill, run the same command
again: it continues from the last checkpoint with the same step counter.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gat.train import NonFiniteError
from pipeline.params import Params, size_dir
from pipeline.stage import stage_main
from pipeline.training import adapted_lr, run_training, total_steps


def out_dir(size: str) -> Path:
    """outputs/train/<SIZE>: generator/, metrics.json, log.csv."""
    return size_dir("train", size)


def run(params: Params, args: argparse.Namespace) -> None:
    """Train args.size; exit with the divergence message (naming the step) if it diverged."""
    try:
        metrics = run_training(params, args.size, out_dir(args.size))
    except NonFiniteError as err:
        sys.exit(f"error: training {args.size} diverged: {err}")
    rate = metrics["images_per_s_per_worker"]
    print(f"{args.size}: {metrics['steps']} steps, {rate:.1f} images/s per worker "
          f"-> {out_dir(args.size)}")


def derived(params: Params, args: argparse.Namespace) -> dict:
    """What the stage computes from params: the width-adapted lr, length, per-worker batch."""
    t = params.train
    return {"size": args.size, "lr": float(f"{adapted_lr(params, args.size):.6g}"),
            "steps": total_steps(params), "batch_per_worker": t.batch // t.workers,
            "micro_batch": t.batch // t.workers // t.grad_accum,
            "out_dir": str(out_dir(args.size))}


if __name__ == "__main__":
    stage_main(__doc__, run, size=True, extra=derived)
