"""A trained generator measured: balanced samples decoded to images, their features, the
FD / FID with precision, recall and class accuracy, the class-row grid, G's size and cost.

What :mod:`pipeline.fidelity` does for any images, this module does for a generator: the
``evaluate`` stage and the training-time FD proxy both call it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from gat import flops
from gat.sample import balanced_batches, balanced_labels, sample_latents
from pipeline.fidelity import (
    SOURCES,
    Evaluator,
    class_accuracy,
    evaluator,
    extract,
    frechet_distance,
    load_reference,
    precision_recall,
    reference_path,
)
from pipeline.layout import LAYOUT, Layout

GRID_SEEDS = 10  # columns of the grid
GRID_CLASSES = 16  # rows at most: ImageNet's 1000 classes are shown 16, evenly spaced
GRID_UNCONDITIONAL = 4  # rows of an unconditional generator's grid (seeds continue)


def grid_classes(num_classes: int, rows: int = GRID_CLASSES) -> list[int]:
    """All classes when they fit, else ``rows`` of them spread over the range."""
    if num_classes <= rows:
        return list(range(num_classes))
    return [round(i * (num_classes - 1) / (rows - 1)) for i in range(rows)]


def class_grid(gen, tokenizer, psi: float = 1.0) -> torch.Tensor:
    """uint8 [rows * GRID_SEEDS, 3, H, W]: row r is one class, column s is seed s (an
    unconditional generator: GRID_UNCONDITIONAL rows of consecutive seeds)."""
    if gen.num_classes == 0:
        classes, seeds = [0], list(range(GRID_SEEDS * GRID_UNCONDITIONAL))
    else:
        classes, seeds = grid_classes(gen.num_classes), list(range(GRID_SEEDS))
    latents, _ = sample_latents(gen, classes, seeds, psi=psi)
    return tokenizer.decode(latents)


def model_facts(gen, meta: dict) -> dict[str, float | int]:
    """G's forward GFLOPs (one sample) and the G and D parameter counts of a trained G."""
    return flops.model_facts(meta["name"], gen.channels, gen.size, gen.num_classes,
                             meta.get("teacher_dim", 768))


def sample_images(gen, tokenizer, num: int, batch: int = 250, psi: float = 1.0,
                  seed: int = 0) -> Iterator[torch.Tensor]:
    """uint8 image batches [B, 3, H, W] of ``num`` samples, classes balanced (labels:
    :func:`gat.sample.balanced_labels`), decoded by ``tokenizer`` (pipeline Tokenizer)."""
    for latents, _ in balanced_batches(gen, num, batch, psi=psi, seed=seed):
        yield tokenizer.decode(latents)


def generated_features(ev: Evaluator, gen, tokenizer, num: int, batch: int = 250,
                       psi: float = 1.0, seed: int = 0, desc: str = "samples"
                       ) -> dict[str, torch.Tensor]:
    """:func:`extract` over ``num`` balanced samples of ``gen`` (in eval mode meanwhile)."""
    was_training = gen.training
    gen.eval()
    try:
        return extract(ev, sample_images(gen, tokenizer, num, batch, psi, seed), num, desc)
    finally:
        gen.train(was_training)


def score(ev: Evaluator, out: dict[str, torch.Tensor], labels: torch.Tensor | None,
          reference: dict[str, np.ndarray], seed: int = 0) -> dict[str, float | int | str]:
    """FD/FID, precision, recall and (classifier only) class accuracy of extracted features
    ``out`` (from :func:`extract`) whose images were meant to show ``labels`` [N]; ``None``
    for an unconditional generator (no class accuracy: no classes)."""
    precision, recall = precision_recall(out["features"], reference, seed)
    metrics: dict[str, float | int | str] = {
        "metric": ev.metric, "fd": frechet_distance(out["features"], reference),
        "precision": precision, "recall": recall, "num_samples": len(out["features"])}
    if "logits" in out and labels is not None:
        metrics["class_accuracy"] = class_accuracy(out["logits"], labels)
    return metrics


def evaluate_generator(ev: Evaluator, gen, tokenizer, reference: dict[str, np.ndarray],
                       num: int, batch: int = 250, psi: float = 1.0, seed: int = 0
                       ) -> dict[str, float | int | str]:
    """:func:`score` of ``num`` class-balanced samples of ``gen``, decoded by ``tokenizer``."""
    out = generated_features(ev, gen, tokenizer, num, batch, psi, seed)
    labels = balanced_labels(num, gen.num_classes) if gen.num_classes else None
    return {**score(ev, out, labels, reference, seed), "psi": psi}


def balanced_indices(labels: np.ndarray, num: int, seed: int = 0) -> np.ndarray:
    """``num`` indices of ``labels`` [N], classes balanced (counts differ by at most one),
    drawn without replacement from one seeded stream, in class-interleaved order."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    picked = [per_class[i % len(classes)][i // len(classes)] for i in range(num)]
    return np.asarray(picked, dtype=np.int64)


def floors(ev: Evaluator, dataset, tokenizer, reference: dict[str, np.ndarray], num: int,
           batch: int = 250, seed: int = 0) -> dict[str, dict[str, float | int | str]]:
    """What no generator in this latent space can beat, scored like one: ``num``
    class-balanced real training images (``real``), and the same images encoded and
    decoded by the tokenizer (``reconstructed``: the posterior mean, scaled as the shards
    store it). ``dataset``: a :class:`pipeline.data.Dataset` split."""
    idx = balanced_indices(dataset.labels, num, seed)
    labels = torch.as_tensor(dataset.labels[idx])
    chunks = [idx[i:i + batch] for i in range(0, num, batch)]

    def reconstructed(chunk: np.ndarray) -> torch.Tensor:
        mean, _ = tokenizer.encode(dataset.load(chunk))
        return tokenizer.decode(mean * tokenizer.scale_factor)

    real = extract(ev, (dataset.load(c) for c in chunks), num, "real images")
    recon = extract(ev, (reconstructed(c) for c in chunks), num, "reconstructed")
    return {"real": score(ev, real, labels, reference, seed),
            "reconstructed": score(ev, recon, labels, reference, seed)}


def generator_fd(gen, tokenizer, num: int, layout: Layout = LAYOUT) -> float:
    """FD of ``num`` samples of ``gen`` against data/reference, with the extractor that
    made the reference (FD-classifier or FID): the training-time proxy."""
    reference = load_reference(reference_path(layout))
    source = SOURCES[str(reference["extractor"])]
    ev = evaluator(source, str(layout.classifier) if source == "train" else None)
    feats = generated_features(ev, gen, tokenizer, num, desc="fd proxy")["features"]
    return frechet_distance(feats, reference)
