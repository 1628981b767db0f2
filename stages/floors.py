"""Floors: what no generator in this latent space can beat, scored like the generators.

    python -m stages.floors

evaluate.num_samples class-balanced training images (drawn with study.seed) go through
the evaluator twice, against the same `reference` statistics the sizes are measured with:
as they are (``real``), and encoded then decoded by the tokenizer (``reconstructed``: the
floor of every generator of this study, which only ever produces latents). Writes
results/data/floors.json (FD, precision, recall, class accuracy of each); the scaling
table and plot show both beside the sizes.
"""

from __future__ import annotations

import argparse

from pipeline import cluster, evaluation, fidelity
from pipeline.config import Params
from pipeline.data import open_split
from pipeline.files import digest
from pipeline.layout import LAYOUT
from pipeline.pretrained.tokenizer import load_tokenizer
from pipeline.stage import stage_main
from pipeline.tracking import record_stage


def run(params: Params, args: argparse.Namespace) -> None:
    device = cluster.device(params.runtime.use_gpu)  # refuses a GPU study without one
    ev = fidelity.evaluator(params.evaluator.source)
    reference = fidelity.load_reference(fidelity.reference_path(), metric=ev.metric)
    tokenizer = load_tokenizer(params.tokenizer.source, device, params.tokenizer.scale_factor,
                               revision=params.tokenizer.revision)
    found = evaluation.floors(ev, open_split(params.data, "train"), tokenizer, reference,
                              params.evaluate.num_samples, params.evaluate.batch,
                              seed=params.study.seed, prc=params.evaluate.prc)
    flat = {f"{row}_{k}": v for row, m in found.items() for k, v in m.items()}
    record_stage(params, "floors", {**flat, "metric": ev.metric},
                 digest([LAYOUT.tokenizer, LAYOUT.reference]))
    for row, m in found.items():
        print(f"floor {row}: {m['metric']} {m['fd']:.4g}, precision {m['precision']:.3f}, "
              f"recall {m['recall']:.3f}"
              + (f", class accuracy {m['class_accuracy']:.3f}" if "class_accuracy" in m
                 else "") + f" ({m['num_samples']} images)")


if __name__ == "__main__":
    stage_main(__doc__, run)
