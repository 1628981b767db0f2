"""Reference statistics of the eval split for FID (Inception) or FD-classifier (stand-in).

Computed once through torch-fidelity and cached by DVC in data/reference/stats.npz.
"""

from __future__ import annotations

import argparse

import numpy as np

from pipeline.data import open_split
from pipeline.fidelity import REFERENCE, metric_name, reference_statistics, save_reference
from pipeline.params import Params
from pipeline.stage import stage_main


def run(params: Params, args: argparse.Namespace) -> None:
    evaluation = open_split(params.data, "eval")
    images = evaluation.load(np.arange(len(evaluation)))
    stats = reference_statistics(params, images)
    save_reference(stats)
    print(f"reference: {metric_name(params)} statistics of {len(images)} eval images, "
          f"{stats['mu'].shape[0]} features -> {REFERENCE}")


if __name__ == "__main__":
    stage_main(__doc__, run)
