"""Teacher model: train the offline Dinov2Model stand-in, or check the real one loads.

teacher.source `train`: a small Dinov2Model trained on the train split's labels, saved with
save_pretrained to data/teacher_model/. A hub id or path (facebook/dinov2-base): loaded
(offline with HF_HUB_OFFLINE=1); data/teacher_model/ then only records the source.
Metrics (results/data/teacher.json + MLflow): the stand-in's test accuracy (its training
head on [cls] and mean patch token), training time, token shape.
"""

from __future__ import annotations

import argparse
import time

import torch

from pipeline.config import Params
from pipeline.data import open_split
from pipeline.files import atomic_path, digest
from pipeline.layout import LAYOUT
from pipeline.pretrained.common import accuracy, dataset_sampler, write_source
from pipeline.pretrained.teacher import Teacher, load_teacher, train_teacher
from pipeline.stage import stage_main
from pipeline.tracking import record_stage


def train_stand_in(params: Params) -> dict:
    """Train, save to data/teacher_model; return accuracy and seconds."""
    start = time.perf_counter()
    train, evaluation = open_split(params.data, "train"), open_split(params.data, "eval")
    model, head = train_teacher(
        params.teacher, params.data.resolution, len(train.classes),
        dataset_sampler(train, params.study.seed), params.study.seed)
    seconds = time.perf_counter() - start
    teacher = Teacher(model, "train", params.teacher.input_size)

    def predict(images: torch.Tensor) -> torch.Tensor:
        tokens = teacher.tokens(images)
        return head(torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], dim=1))

    test_accuracy = accuracy(predict, evaluation)
    with atomic_path(LAYOUT.teacher_model) as tmp:
        model.save_pretrained(tmp)
    return {"test_accuracy": test_accuracy, "train_seconds": seconds}


def run(params: Params, args: argparse.Namespace) -> None:
    metrics: dict = {"source": params.teacher.source, "revision": params.teacher.revision}
    if params.teacher.source == "train":
        metrics.update(train_stand_in(params))
    else:
        with atomic_path(LAYOUT.teacher_model) as tmp:
            tmp.mkdir()
            write_source(tmp, params.teacher.source, params.teacher.revision)
    teacher = load_teacher(params.teacher.source, input_size=params.teacher.input_size,
                           revision=params.teacher.revision)
    metrics.update(dim=teacher.dim, tokens=teacher.num_tokens, grid=teacher.grid)
    record_stage(params, "teacher", metrics, digest([LAYOUT.teacher_model]))
    print(f"teacher: {metrics}")


if __name__ == "__main__":
    stage_main(__doc__, run)
