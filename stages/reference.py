"""Reference statistics for FID (Inception) or FD-classifier (stand-in): computed, or given.

    python -m stages.reference

evaluator.reference empty: features of every eval image (data.eval_limit applies) through
torch-fidelity's extractor, streamed in batches; with runtime.use_gpu on every GPU of the
Ray cluster, one contiguous share each (fp32: FID's Inception is not run in bf16).
evaluator.reference a precomputed .npz (ADM's VIRTUAL_imagenet256_labeled.npz, the
reference of ADM, DiT and the paper's Table 1): its ``mu``/``sigma`` are used as they are,
after checking they have the evaluator's width; precision/recall features come from its
``arr_0`` images when it has them, else from the eval split.
Writes data/reference/stats.npz (mu [F], sigma [F, F], up to 10k features for
precision/recall) and data/reference/info.json (with the given file's path and sha256:
``evaluate`` refuses the reference if the file changed since). Computed once, cached by
DVC: every evaluate@SIZE reuses it.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline import cluster
from pipeline.config import DataParams, Params
from pipeline.data import open_split
from pipeline.fidelity import (
    PRC_MAX,
    REFERENCE_FILE,
    Evaluator,
    concat,
    evaluator,
    extract,
    feature_dim,
    precomputed_reference,
    reference_of_features,
    reference_statistics,
    save_reference,
)
from pipeline.files import atomic_path, file_sha256, write_json
from pipeline.layout import LAYOUT
from pipeline.ray_pool import map_parts
from pipeline.stage import stage_main

BATCH = 250  # images per extractor call; the statistics do not depend on it


def given_statistics(ev: Evaluator, path: Path, params: Params) -> tuple[dict, dict]:
    """(stats, info) of a precomputed reference: its mu/sigma, features for precision/recall
    from its ``arr_0`` images (NHWC uint8) or else from the eval split."""
    ref = precomputed_reference(path, feature_dim(ev))
    if "images" in ref:
        images = ref.pop("images")
        side = params.data.resolution
        if images.ndim != 4 or images.shape[1:] != (side, side, 3):
            raise ValueError(f"evaluator.reference: {path}: arr_0 {list(images.shape)} is not "
                             f"images [N, {side}, {side}, 3] at data.resolution; remove arr_0 "
                             "or use a file made at this resolution")
        picked = images[:PRC_MAX]
        batches: Iterator[torch.Tensor] = (
            torch.from_numpy(np.ascontiguousarray(picked[i:i + BATCH])).permute(0, 3, 1, 2)
            for i in range(0, len(picked), BATCH))
        features_from, count = "arr_0", len(images)
    else:
        split = open_split(params.data, "eval")
        batches = (im for _, im in split.batches(BATCH, np.arange(min(PRC_MAX, len(split)))))
        features_from, count = "data.eval_path", 0
    feats = extract(ev, batches, desc="reference (precision/recall)")["features"]
    stats = {**ref, "features": feats.float().numpy(), "count": np.array(count),
             "metric": np.array(ev.metric), "extractor": np.array(ev.name)}
    info = {"given": {"path": str(path.resolve()), "sha256": file_sha256(path)},
            "precision_recall_features": features_from}
    return stats, info


@dataclass(frozen=True)
class EvalImageFeatures:
    """A Ray actor's share of the reference: the eval split opened and the extractor loaded
    once on the actor's device; task ``part`` of ``parts`` -> :func:`extract` of that
    contiguous share of the images (in order: the shares concatenate to the whole)."""

    data: DataParams
    source: str  # evaluator.source
    classifier: str | None
    parts: int = 1

    def __call__(self, device: str) -> Callable[[int], dict[str, torch.Tensor]]:
        split = open_split(self.data, "eval")
        ev = evaluator(self.source, self.classifier, device)

        def work(part: int) -> dict[str, torch.Tensor]:
            idx = np.array_split(np.arange(len(split)), self.parts)[part]
            return extract(ev, (im for _, im in split.batches(BATCH, idx)), len(idx),
                           f"reference {part + 1}/{self.parts}")

        return work


def computed_statistics(ev: Evaluator, params: Params) -> dict:
    """The reference of every eval image: on every GPU of the Ray cluster with
    runtime.use_gpu (refused on a cluster without one, before any image is read), else in
    this process."""
    split = open_split(params.data, "eval")
    if not params.runtime.on_pool:
        batches = (images for _, images in split.batches(BATCH))
        return reference_statistics(ev, batches, total=len(split))
    source = params.evaluator.source
    work = EvalImageFeatures(params.data, source,
                             str(LAYOUT.classifier) if source == "train" else None)
    parts = map_parts(lambda n: dataclasses.replace(work, parts=n), len(split),
                      params.runtime.use_gpu, params.runtime.cpus_per_worker, "reference")
    return reference_of_features(ev, concat(parts)["features"])


def run(params: Params, args: argparse.Namespace) -> None:
    on_ray = params.runtime.on_pool and not params.evaluator.reference
    if not on_ray:
        cluster.device(params.runtime.use_gpu)  # a GPU study refuses a CPU-only machine
    # On Ray the driver's extractor only names the metric and checks widths: on the CPU.
    ev = evaluator(params.evaluator.source, device="cpu" if on_ray else None)
    extra: dict = {}
    if params.evaluator.reference:
        stats, extra = given_statistics(ev, Path(params.evaluator.reference), params)
    else:
        stats = computed_statistics(ev, params)
    info = {"metric": ev.metric, "extractor": ev.name, "images": int(stats["count"]),
            "features": int(stats["mu"].shape[0]), "data": params.data.source,
            "resolution": params.data.resolution, **extra}
    # The folder appears whole: a killed run never leaves stats without their info.
    with atomic_path(LAYOUT.reference) as tmp:
        save_reference(stats, tmp / REFERENCE_FILE)
        write_json(tmp / "info.json", info)
    origin = (f"given ({params.evaluator.reference})" if params.evaluator.reference
              else f"of {info['images']} eval images")
    print(f"reference: {ev.metric} statistics {origin} ({info['features']} features, "
          f"extractor {ev.name}) -> {LAYOUT.reference}")


if __name__ == "__main__":
    stage_main(__doc__, run)
