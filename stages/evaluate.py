"""Evaluate one trained size: FID (Inception) or FD-classifier (offline stand-in), GFLOPs.

    python -m stages.evaluate GAT-T1/4 [--seed 0]

Reads the EMA generator in outputs/train/<SIZE>/seed<N>/generator (training seed N), and
decodes with the tokenizer it was trained on. Draws evaluate.num_samples
samples, classes balanced, in batches of evaluate.batch (truncation evaluate.psi), decodes
them with the tokenizer and measures, through torch-fidelity against the `reference`
statistics: the Frechet distance, precision and recall, and (classifier only) how often
the classifier recognises the conditioning class. Adds G's forward GFLOPs (one sample,
multiply-add = 1) and G/D parameter counts. Writes results/eval/<SIZE>/seed<N>/metrics.json
and outputs/eval/<SIZE>/seed<N>/samples.png (one row per class), and logs both to the MLflow
run of the training configuration that made the generator (metrics as ``eval.*`` and the FD under
its own name, FID or FD-classifier, at the generator's last training step).
"""

from __future__ import annotations

import argparse

from pipeline import evaluation
from pipeline.config import Params
from pipeline.files import write_json
from pipeline.layout import LAYOUT
from pipeline.stage import stage_main


def run(params: Params, args: argparse.Namespace) -> None:
    size, seed = args.size, args.seed
    metrics = evaluation.evaluate_folder(params, LAYOUT.generator(size, seed),
                                         LAYOUT.samples(size, seed))
    write_json(LAYOUT.eval_metrics(size, seed), {"size": size, "seed": seed, **metrics})
    print(f"{size} seed {seed}: {evaluation.describe_metrics(metrics)}")


if __name__ == "__main__":
    stage_main(__doc__, run, size=True)
