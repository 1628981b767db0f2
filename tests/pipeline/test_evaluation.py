"""A generator's measurements and the floors: balanced draws, real images scored against
their own reference, tokenizer reconstructions scored the same way."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import evaluation, fidelity
from pipeline.pretrained.tokenizer import load_tokenizer
from tests.eval_helpers import CLASSES, synthetic_images


class _Split:
    """What evaluation.floors reads of a pipeline.data.Dataset: labels and load(idx)."""

    def __init__(self, n: int, seed: int):
        self.images, labels = synthetic_images(n, seed=seed)
        self.labels = labels.numpy()

    def load(self, idx: np.ndarray) -> torch.Tensor:
        return self.images[torch.as_tensor(idx)]


def test_balanced_indices_are_balanced_distinct_and_seeded():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    idx = evaluation.balanced_indices(labels, 22, seed=3)
    assert len(set(idx)) == 22 and sorted(np.bincount(labels[idx])) == [5, 5, 6, 6]
    assert list(labels[idx[:4]]) == [0, 1, 2, 3]  # class-interleaved
    assert (idx == evaluation.balanced_indices(labels, 22, seed=3)).all()
    assert not (idx == evaluation.balanced_indices(labels, 22, seed=4)).all()


def test_floors_real_images_sit_on_the_reference_and_reconstructions_above(parts):
    split = _Split(256, seed=1)
    ev = fidelity.evaluator("train", str(parts["classifier"]))
    reference = fidelity.reference_statistics(ev, split.images.split(64), len(split.images))
    tokenizer = load_tokenizer(str(parts["tokenizer"]))  # untrained: a poor reconstruction
    found = evaluation.floors(ev, split, tokenizer, reference, num=256, batch=64, seed=0)
    real, recon = found["real"], found["reconstructed"]
    scale = float(np.trace(reference["sigma"]))
    assert abs(real["fd"]) < 1e-6 * scale and real["recall"] == pytest.approx(1.0)
    assert recon["fd"] > 0.1 * scale and recon["num_samples"] == real["num_samples"] == 256
    assert 0 <= recon["class_accuracy"] <= 1 and real["metric"] == "FD-classifier"
    assert CLASSES == len(np.unique(split.labels))


def test_an_unconditional_generator_is_measured_without_class_accuracy(parts):
    from gat.models import build_models

    torch.manual_seed(0)
    gen, _ = build_models("GAT-T1/4", 4, 16, 0, 8)
    ev = fidelity.evaluator("train", str(parts["classifier"]))
    images = synthetic_images(64, seed=1)[0]
    reference = fidelity.reference_statistics(ev, images.split(32), len(images))
    tokenizer = load_tokenizer(str(parts["tokenizer"]))
    metrics = evaluation.evaluate_generator(ev, gen.eval(), tokenizer, reference, num=32,
                                            batch=16)
    assert "class_accuracy" not in metrics and metrics["num_samples"] == 32
    assert metrics["fd"] > 0
    grid = evaluation.class_grid(gen, tokenizer, 1.0, 3)  # rows of seeds, no class rows
    assert grid.shape == (3 * evaluation.GRID_UNCONDITIONAL, 3, 32, 32)
