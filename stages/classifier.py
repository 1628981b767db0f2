"""Classifier: train the offline FD feature network (evaluator.source: train).

A small CNN trained on the train split's labels, saved to data/classifier/. Its penultimate
features give "FD-classifier", a Frechet distance that is NOT FID (FID needs Inception
weights, which cannot be downloaded here). Test accuracy and training time ->
results/data/classifier.json + MLflow. With evaluator.source `inception` nothing is trained.
"""

from __future__ import annotations

import argparse
import time

from pipeline.config import Params
from pipeline.data import open_split
from pipeline.files import atomic_path, digest
from pipeline.layout import LAYOUT
from pipeline.pretrained.classifier import save_classifier, train_classifier
from pipeline.pretrained.common import SOURCE_FILE, accuracy, dataset_sampler
from pipeline.stage import stage_main
from pipeline.tracking import record_stage


def run(params: Params, args: argparse.Namespace) -> None:
    if params.evaluator.source != "train":
        with atomic_path(LAYOUT.classifier) as tmp:
            tmp.mkdir()
            (tmp / SOURCE_FILE).write_text(params.evaluator.source + "\n")
        record_stage(params, "classifier", {"source": params.evaluator.source},
                     digest([LAYOUT.classifier]))
        return
    start = time.perf_counter()
    train, evaluation = open_split(params.data, "train"), open_split(params.data, "eval")
    # seed + 1: a different sample stream from the teacher's, so the two see other batches
    model = train_classifier(params.evaluator, len(train.classes),
                                        dataset_sampler(train, params.study.seed + 1),
                                        params.study.seed)
    seconds = time.perf_counter() - start
    test_accuracy = accuracy(lambda x: model(x)[1], evaluation)
    with atomic_path(LAYOUT.classifier) as tmp:
        save_classifier(model, tmp)
    record_stage(params, "classifier", {"source": "train", "test_accuracy": test_accuracy,
                                        "train_seconds": seconds}, digest([LAYOUT.classifier]))
    print(f"classifier: test accuracy {test_accuracy:.4f} ({seconds:.0f} s training)")


if __name__ == "__main__":
    stage_main(__doc__, run)
