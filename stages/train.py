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

from gat.train import NonFiniteError
from pipeline.params import Params, size_dir
from pipeline.stage import stage_main
from pipeline.training import adapted_lr, run_training, total_steps


def out_dir(size: str):
    return size_dir("train", size)


def run(params: Params, args: argparse.Namespace) -> None:
    try:
        metrics = run_training(params, args.size, out_dir(args.size))
    except NonFiniteError as err:
        sys.exit(f"error: training {args.size} diverged: {err}")
    rate = metrics["images_per_s_per_worker"]
    print(f"{args.size}: {metrics['steps']} steps, {rate:.1f} images/s per worker "
          f"-> {out_dir(args.size)}")


def derived(params: Params, args: argparse.Namespace) -> dict:
    return {"size": args.size, "lr": adapted_lr(params, args.size),
            "steps": total_steps(params), "batch_per_worker": params.train.batch
            // params.train.workers // params.train.grad_accum}


if __name__ == "__main__":
    stage_main(__doc__, run, size=True, extra=derived)
