"""Reference statistics of the eval split, for FID (Inception) or FD-classifier (stand-in).

    python -m stages.reference

Features of every eval image (data.eval_limit applies) through torch-fidelity's extractor,
streamed in batches; writes data/reference/stats.npz (mu [F], sigma [F, F], up to 10k
features for precision/recall) and data/reference/info.json. Computed once, cached by DVC:
every evaluate@SIZE reuses it.
"""

from __future__ import annotations

import argparse

from pipeline import cluster
from pipeline.config import Params
from pipeline.data import open_split
from pipeline.fidelity import REFERENCE_FILE, evaluator, reference_statistics, save_reference
from pipeline.files import atomic_path, write_json
from pipeline.layout import LAYOUT
from pipeline.stage import stage_main

BATCH = 250  # images per extractor call; the statistics do not depend on it


def run(params: Params, args: argparse.Namespace) -> None:
    cluster.device(params.runtime.use_gpu)  # a GPU study refuses a CPU-only machine
    split = open_split(params.data, "eval")
    ev = evaluator(params.evaluator.source)
    batches = (images for _, images in split.batches(BATCH))
    stats = reference_statistics(ev, batches, total=len(split))
    info = {"metric": ev.metric, "extractor": ev.name, "images": int(stats["count"]),
            "features": int(stats["mu"].shape[0]), "data": params.data.source,
            "resolution": params.data.resolution}
    # The folder appears whole: a killed run never leaves stats without their info.
    with atomic_path(LAYOUT.reference) as tmp:
        save_reference(stats, tmp / REFERENCE_FILE)
        write_json(tmp / "info.json", info)
    print(f"reference: {ev.metric} statistics of {info['images']} eval images "
          f"({info['features']} features, extractor {ev.name}) -> {LAYOUT.reference}")


if __name__ == "__main__":
    stage_main(__doc__, run)
