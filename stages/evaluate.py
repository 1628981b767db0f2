"""Evaluate one trained size: FID (Inception) or FD-classifier (offline stand-in), GFLOPs.

    python -m stages.evaluate GAT-T1/4 [--seed 0]

Reads the EMA generator in outputs/train/<SIZE>/seed<N>/generator (training seed N), and
decodes with the tokenizer it was trained on. Draws evaluate.num_samples
samples, classes balanced, in batches of evaluate.batch (truncation evaluate.psi), decodes
them with the tokenizer and measures, through torch-fidelity against the `reference`
statistics: the Frechet distance, precision and recall, and (classifier only) how often
the classifier recognises the conditioning class. Adds G's forward GFLOPs (one sample,
multiply-add = 1) and G/D parameter counts. Writes results/eval/<SIZE>/seed<N>/metrics.json
and outputs/eval/<SIZE>/seed<N>/samples.png (one row per class), and logs both to the MLflow run of
the training configuration that made the generator (metrics as ``eval.*`` and the FD under
its own name, FID or FD-classifier, at the generator's last training step).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from torchvision.utils import save_image

from gat.io import load_generator
from pipeline import cluster, evaluation, fidelity, tracking
from pipeline.config import Params
from pipeline.files import atomic_path, write_json
from pipeline.layout import LAYOUT
from pipeline.pretrained.tokenizer import load_tokenizer
from pipeline.stage import stage_main


def log_to_mlflow(params: Params, meta: dict, metrics: dict, grid: Path) -> str:
    """Into the generator's training run: the metric under its own name (FID or
    FD-classifier) and ``eval.*`` at its last step, settings as tags, the grid."""
    tr = tracking.tracker(params)
    run_id = tracking.training_run(
        tr, params, meta["name"], meta["run_key"], meta["study_key"],
        {k: meta[k] for k in ("name", "steps", "run_key", "study_key")})
    step = int(meta["steps"])
    tr.log_metrics(run_id, {metrics["metric"]: metrics["fd"]}, step)
    tr.log_metrics(run_id, {f"eval.{k}": v for k, v in metrics.items()}, step)
    # tags, not params: evaluation settings may change while the training run stays
    tr.set_tags(run_id, {"eval.metric": metrics["metric"],
                         "eval.num_samples": metrics["num_samples"], "eval.psi": metrics["psi"]})
    tr.log_artifact(run_id, grid, "eval")
    return run_id


def run(params: Params, args: argparse.Namespace) -> None:
    size, seed = args.size, args.seed
    device = cluster.device(params.runtime.use_gpu)  # refuses a GPU study without one
    gen, meta = load_generator(LAYOUT.generator(size, seed), device)
    tokenizer = load_tokenizer(meta["tokenizer"], device, meta["scale_factor"])
    ev = fidelity.evaluator(params.evaluator.source)
    reference = fidelity.load_reference(fidelity.reference_path(), metric=ev.metric)
    metrics = {"size": size, "seed": seed, **evaluation.evaluate_generator(
        ev, gen, tokenizer, reference, params.evaluate.num_samples, params.evaluate.batch,
        params.evaluate.psi, seed=params.study.seed + 1),  # +1: not the training z stream
        **evaluation.model_facts(gen, meta)}
    grid = LAYOUT.samples(size, seed)
    with atomic_path(grid) as tmp:
        save_image(evaluation.class_grid(gen, tokenizer, params.evaluate.psi).float() / 255, tmp,
                   nrow=evaluation.GRID_SEEDS, padding=1, format="png")
    metrics["mlflow_run_id"] = log_to_mlflow(params, meta, metrics, grid)
    metrics["run_key"] = meta["run_key"]
    write_json(LAYOUT.eval_metrics(size, seed), metrics)
    print(f"{size} seed {seed}: {metrics['metric']} {metrics['fd']:.4g} "
          f"({metrics['num_samples']} samples), precision {metrics['precision']:.3f}, "
          f"recall {metrics['recall']:.3f}"
          + (f", class accuracy {metrics['class_accuracy']:.3f}" if "class_accuracy" in metrics
             else "") + f", G {metrics['g_gflops']:.4g} GFLOPs")


if __name__ == "__main__":
    stage_main(__doc__, run, size=True)
