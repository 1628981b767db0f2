"""Evaluate one trained size: FD-classifier (offline stand-in) or FID, GFLOPs, sample grid.

    python -m stages.evaluate GAT-T1/4

evaluate.num_samples samples of the EMA generator, balanced over classes, decoded by the
tokenizer; Frechet distance against the `reference` statistics through torch-fidelity,
precision and recall, the classifier's accuracy on the conditioning class (stand-in only),
G's GFLOPs; a PNG grid with one row per class. Outputs in outputs/eval/<SIZE>/, logged to
the size's MLflow run.
"""

from __future__ import annotations

import argparse

import mlflow
import torch
from torchvision.utils import save_image

from gat.flops import generator_gflops
from gat.io import load_generator
from gat.models import build_models, count_params
from pipeline import fidelity, tracking
from pipeline.files import atomic_path
from pipeline.params import Params, size_dir
from pipeline.pretrained import load_tokenizer
from pipeline.stage import stage_main

GRID_PER_CLASS = 10


def out_dir(size: str):
    return size_dir("eval", size)


def class_grid(gen, tokenizer, per_class: int = GRID_PER_CLASS, seed: int = 0) -> torch.Tensor:
    """uint8 [classes*per_class, 3, H, W]: row k holds class k (at most 20 classes)."""
    classes = min(gen.num_classes, 20)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(classes * per_class, 64, generator=g)
    c = torch.arange(classes).repeat_interleave(per_class)
    return tokenizer.decode(gen.sample(z, c).float())


def run(params: Params, args: argparse.Namespace) -> None:
    size = args.size
    gen, meta = load_generator(size_dir("train", size) / "generator")
    tokenizer = load_tokenizer(params.tokenizer.source, scale_factor=meta["scale_factor"])
    reference = fidelity.load_reference()
    images, labels = fidelity.sample_images(gen, tokenizer, params.evaluate.num_samples,
                                            params.evaluate.batch, params.evaluate.psi,
                                            seed=params.study.seed + 1)
    feats = fidelity.extract(params, images)
    name = fidelity.metric_name(params)
    precision, recall = fidelity.precision_recall(feats["features"], reference)
    with torch.device("meta"):
        meta_g, meta_d = build_models(size, gen.channels, gen.size, gen.num_classes,
                                      meta.get("teacher_dim", 768))
    metrics = {
        "size": size, "metric": name, "fd": fidelity.frechet_distance(feats["features"], reference),
        "precision": precision, "recall": recall, "num_samples": len(images),
        "g_gflops": generator_gflops(meta_g), "g_params": count_params(meta_g),
        "d_params": count_params(meta_d),
    }
    if params.evaluator.source == "train":
        metrics["class_accuracy"] = (feats["logits"].argmax(1) == labels).float().mean().item()
    out = out_dir(size)
    with atomic_path(out / "samples.png") as tmp:
        save_image(class_grid(gen, tokenizer).float() / 255, tmp, nrow=GRID_PER_CLASS,
                   padding=1, format="png")
    tracking.record_metrics(params, out / "metrics.json", metrics, "eval", size=size)
    with tracking.active_run(params, size):
        mlflow.log_metric(name, metrics["fd"])
        mlflow.log_artifact(str(out / "samples.png"), "eval")
    print(f"{size}: {name} {metrics['fd']:.3f} ({len(images)} samples), precision "
          f"{precision:.3f}, recall {recall:.3f}, {metrics['g_gflops']:.4f} GFLOPs")


if __name__ == "__main__":
    stage_main(__doc__, run, size=True)
