"""Teacher model: train the offline Dinov2Model stand-in, or check the real one loads.

teacher.source `train`: a small Dinov2Model trained on the train split's labels, saved with
save_pretrained to data/teacher_model/. A hub id or path (facebook/dinov2-base): loaded.
Metrics (data/metrics/teacher.json + MLflow): linear-head test accuracy of the stand-in.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from pipeline import pretrained
from pipeline.data import open_split
from pipeline.files import atomic_path
from pipeline.params import REPO_ROOT, Params
from pipeline.stage import stage_main
from pipeline.tracking import record_metrics

METRICS = REPO_ROOT / "data" / "metrics" / "teacher.json"


def run(params: Params, args: argparse.Namespace) -> None:
    metrics: dict = {"source": params.teacher.source}
    if params.teacher.source == "train":
        train, evaluation = open_split(params.data, "train"), open_split(params.data, "eval")
        model, head = pretrained.train_teacher(
            params.teacher, params.data.resolution, len(train.classes),
            pretrained.dataset_sampler(train, params.study.seed), params.study.seed)
        teacher = pretrained.Teacher(model, "train")

        def predict(images: torch.Tensor) -> torch.Tensor:
            tokens = teacher.tokens(images)
            return head(torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], dim=1))

        idx = np.arange(min(5000, len(evaluation)))
        with torch.no_grad():
            metrics["test_accuracy"] = pretrained.accuracy(
                predict, evaluation.load(idx), torch.as_tensor(evaluation.labels[idx]))
        with atomic_path(pretrained.TEACHER_DIR) as tmp:
            model.save_pretrained(tmp)
    else:
        pretrained.TEACHER_DIR.mkdir(parents=True, exist_ok=True)
        (pretrained.TEACHER_DIR / "source.txt").write_text(params.teacher.source + "\n")
    teacher = pretrained.load_teacher(params.teacher.source)
    metrics.update(dim=teacher.dim, tokens=(teacher.image_size // teacher.patch) ** 2 + 1)
    record_metrics(params, METRICS, metrics, "teacher")
    print(f"teacher: {metrics}")


if __name__ == "__main__":
    stage_main(__doc__, run)
