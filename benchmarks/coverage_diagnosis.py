"""Why is recall low? A trained generator's coverage, class by class, measured.

    python benchmarks/coverage_diagnosis.py outputs/train/GAT-T4/4/seed0/generator
    python benchmarks/coverage_diagnosis.py GEN_DIR --per-class 200 --psi 0.7

Run in a built study (data/classifier, data/tokenizer; the eval split of params.yaml). For
every class, ``--per-class`` samples of that class (z from a fixed seed) against as many of
the eval split's images of that class, in the evaluator's feature space (the stand-in
classifier's: these are FD-classifier features, not Inception's):

- precision and recall of the class alone (k=3, equal counts, torch-fidelity);
- spread: the samples' within-class feature spread over the real images' (square root of
  the trace of each set's covariance): 1 is the data's variety, near 0 one image per class;
- the class accuracy of the samples;
- radius: the median k-NN radius (k=3, recall's ball) of the samples over the real
  images'; gap: the median distance from a real image to its nearest sample over that to
  its nearest other real image (1: samples as close as the data's own neighbours);
- real_recall, the ruler: the recall of the class's next ``--per-class`` eval images
  scored the same way (what a generator as varied as the data would get).

A generator whose samples are good (high precision, accuracy) but whose spread is a small
fraction of the data's has collapsed within classes: low recall comes from z's effect on
the image, not from missing classes. Prints one row per class and their mean.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from gat.models import Z_DIM
from pipeline.config import load_params
from pipeline.data import open_split
from pipeline.evaluation import load_trained
from pipeline.fidelity import class_accuracy, evaluator, extract, precision_recall


def knn_radius(features: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Each point's distance to its k-th nearest other point [N] (recall's ball radius)."""
    return torch.cdist(features, features).kthvalue(k + 1, dim=1).values


def spread(features: torch.Tensor) -> float:
    """sqrt(trace of the covariance) of features [N, F]: their typical distance from their
    mean."""
    return float(features.double().var(0, unbiased=True).sum().sqrt())


@torch.no_grad()
def class_samples(gen, tokenizer, cls: int, num: int, psi: float, seed: int) -> torch.Tensor:
    """uint8 images [num, 3, H, W] of class ``cls``, z drawn from ``seed``."""
    z = torch.randn(num, Z_DIM, generator=torch.Generator().manual_seed(seed + cls))
    labels = torch.full((num,), cls, dtype=torch.long)
    return tokenizer.decode(gen.sample(z.to(next(gen.parameters()).device), labels, psi))


def diagnose(generator_dir: str, per_class: int, psi: float, seed: int) -> list[dict]:
    """One row per class (see the module docstring)."""
    params = load_params()
    gen, _, tokenizer = load_trained(generator_dir, "cpu")
    ev = evaluator(params.evaluator.source)
    real_split = open_split(params.data, "eval")
    rows = []
    for cls in range(gen.num_classes):
        of_class = np.flatnonzero(real_split.labels == cls)
        idx, other = of_class[:per_class], of_class[per_class:2 * per_class]
        real = extract(ev, [real_split.load(idx)], len(idx), f"real {cls}")
        # the ruler: other real images of the class, scored the same way
        ruler = extract(ev, [real_split.load(other)], len(other), f"other real {cls}")
        fake = extract(ev, [class_samples(gen, tokenizer, cls, len(idx), psi, seed)],
                       len(idx), f"samples {cls}")
        precision, recall = precision_recall(fake["features"],
                                             {"features": real["features"].float().numpy()})
        _, real_recall = precision_recall(ruler["features"],
                                          {"features": real["features"].float().numpy()})
        f, r = fake["features"].float(), real["features"].float()
        rows.append({"class": cls, "precision": precision, "recall": recall,
                     "real_recall": real_recall,
                     # the samples' k-NN balls against the data's, and how far a real image
                     # is from its nearest sample against from its nearest other real image
                     "radius": float(knn_radius(f).median() / knn_radius(r).median()),
                     "gap": float(torch.cdist(r, f).min(1).values.median()
                                  / torch.cdist(r, r).fill_diagonal_(float("inf"))
                                  .min(1).values.median()),
                     "spread": spread(fake["features"]) / spread(real["features"]),
                     "class_accuracy": class_accuracy(fake["logits"],
                                                      torch.full((len(idx),), cls))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("generator", help="a generator folder (gat.io), e.g. "
                        "outputs/train/GAT-T4/4/seed0/generator")
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--psi", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = diagnose(args.generator, args.per_class, args.psi, args.seed)
    keys = ("precision", "recall", "real_recall", "spread", "radius", "gap",
            "class_accuracy")
    print(f"{args.generator}: {args.per_class} samples per class vs as many eval images of "
          "the class (stand-in classifier features, not Inception)")
    print("| class | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for row in rows:
        print(f"| {row['class']} | " + " | ".join(f"{row[k]:.3f}" for k in keys) + " |")
    print("| mean | " + " | ".join(f"{np.mean([r[k] for r in rows]):.3f}" for k in keys)
          + " |")


if __name__ == "__main__":
    main()
