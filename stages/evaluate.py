"""Evaluate one trained size: FID (Inception) or FD-classifier (offline stand-in), GFLOPs.

    python -m stages.evaluate GAT-T1/4

Reads the EMA generator in outputs/train/<SIZE>/generator. Draws evaluate.num_samples
samples, classes balanced, in batches of evaluate.batch (truncation evaluate.psi), decodes
them with the tokenizer and measures, through torch-fidelity against the `reference`
statistics: the Frechet distance, precision and recall, and (classifier only) how often
the classifier recognises the conditioning class. Adds G's forward GFLOPs (one sample,
multiply-add = 1) and G/D parameter counts. Writes outputs/eval/<SIZE>/metrics.json and
samples.png (one row per class), and logs both to the size's MLflow run
(metrics as ``eval.*`` and the FD under its own name, FID or FD-classifier).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow
import torch
from torchvision.utils import save_image

from gat.flops import generator_gflops
from gat.io import load_generator
from gat.models import build_models, count_params
from gat.sample import sample_latents
from pipeline import fidelity, tracking
from pipeline.files import atomic_path
from pipeline.params import Params, size_dir
from pipeline.pretrained import load_tokenizer
from pipeline.stage import stage_main

GRID_SEEDS = 10  # columns of the grid
GRID_CLASSES = 16  # rows at most: ImageNet's 1000 classes are shown 16, evenly spaced


def grid_classes(num_classes: int, rows: int = GRID_CLASSES) -> list[int]:
    """All classes when they fit, else ``rows`` of them spread over the range."""
    if num_classes <= rows:
        return list(range(num_classes))
    return [round(i * (num_classes - 1) / (rows - 1)) for i in range(rows)]


def class_grid(gen, tokenizer, psi: float = 1.0) -> torch.Tensor:
    """uint8 [rows * GRID_SEEDS, 3, H, W]: row r is one class, column s is seed s."""
    latents, _ = sample_latents(gen, grid_classes(gen.num_classes), list(range(GRID_SEEDS)),
                                psi=psi)
    return tokenizer.decode(latents)


def model_facts(gen, meta: dict) -> dict[str, float | int]:
    """G's forward GFLOPs (one sample) and the G and D parameter counts."""
    with torch.device("meta"):  # shapes only: no memory, no init cost
        g, d = build_models(meta["name"], gen.channels, gen.size, gen.num_classes,
                            meta.get("teacher_dim", 768))
    return {"g_gflops": generator_gflops(g), "g_params": count_params(g),
            "d_params": count_params(d)}


def log_to_mlflow(params: Params, size: str, metrics: dict, out: Path) -> None:
    """The metric under its own name (FID or FD-classifier), settings as tags, the grid."""
    with tracking.active_run(params, size):
        mlflow.log_metric(metrics["metric"], metrics["fd"])
        # tags, not params: MLflow refuses to change a param when a size is re-evaluated
        mlflow.set_tags({"eval.metric": metrics["metric"],
                         "eval.num_samples": metrics["num_samples"], "eval.psi": metrics["psi"]})
        mlflow.log_artifact(str(out / "samples.png"), "eval")  # metrics: logged as metrics


def run(params: Params, args: argparse.Namespace) -> None:
    size = args.size
    out = size_dir("eval", size)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen, meta = load_generator(size_dir("train", size) / "generator", device)
    tokenizer = load_tokenizer(params.tokenizer.source, device,
                               scale_factor=meta.get("scale_factor", 0.0))
    ev = fidelity.evaluator(params.evaluator.source)
    reference = fidelity.load_reference(metric=ev.metric)
    metrics = {"size": size, **fidelity.evaluate_generator(
        ev, gen, tokenizer, reference, params.evaluate.num_samples, params.evaluate.batch,
        params.evaluate.psi, seed=params.study.seed + 1),  # +1: not the training z stream
        **model_facts(gen, meta)}
    with atomic_path(out / "samples.png") as tmp:
        save_image(class_grid(gen, tokenizer, params.evaluate.psi).float() / 255, tmp,
                   nrow=GRID_SEEDS, padding=1, format="png")
    tracking.record_metrics(params, out / "metrics.json", metrics, "eval", size=size)
    log_to_mlflow(params, size, metrics, out)
    print(f"{size}: {metrics['metric']} {metrics['fd']:.4g} ({metrics['num_samples']} samples)"
          f", precision {metrics['precision']:.3f}, recall {metrics['recall']:.3f}"
          + (f", class accuracy {metrics['class_accuracy']:.3f}" if "class_accuracy" in metrics
             else "") + f", G {metrics['g_gflops']:.4g} GFLOPs")


if __name__ == "__main__":
    stage_main(__doc__, run, size=True)
