"""Train one model size with one training seed, with Ray Train (workers, GPUs and length
from params.yaml).

    python -m stages.train GAT-T1/4 [--seed 0] [--dry-run]

Writes outputs/train/<SIZE>/seed<N>/generator/ (EMA generator: generator.pt + config.json)
and results/train/<SIZE>/seed<N>/{metrics.json,log.csv} (per-step losses, logit gap, R1, R2, REPA,
grad norms, images/s), and logs all of it to the MLflow run of this training
configuration. To resume after a kill, run the same command again: it continues from the
last checkpoint with the same step counter. A larger train.iterations continues the
finished shorter run from its last checkpoint.
"""

from __future__ import annotations

import argparse
import sys

from gat.train import NonFiniteError
from pipeline.config import Params
from pipeline.shards import ShardError
from pipeline.stage import stage_main
from pipeline.training import run_training
from pipeline.training.job import derived


def run(params: Params, args: argparse.Namespace) -> None:
    """Train args.size; exit naming the step if it diverged, the stage to run when the
    shards do not fit params (and, through stage_main, what to set when the cluster or
    MLflow store cannot serve the run)."""
    try:
        metrics = run_training(params, args.size, args.seed)
    except NonFiniteError as err:
        sys.exit(f"error: training {args.size} diverged: {err}")
    except ShardError as err:  # data missing or not what params ask for: before any step
        sys.exit(f"error: {err}")
    print(f"{args.size} seed {args.seed}: {metrics['steps']} steps, "
          f"{metrics['images_per_s_per_worker']:.1f} images/s per worker; MLflow run "
          f"{metrics['mlflow_run_id']}")


if __name__ == "__main__":
    stage_main(__doc__, run, size=True, extra=lambda params, args: derived(params, args.size))
