"""Classifier: train the offline FD feature network (evaluator.source: train).

A small CNN trained on the train split's labels, saved to data/classifier/. Its penultimate
features give "FD-classifier", a Frechet distance that is NOT FID (FID needs Inception
weights, which cannot be downloaded here). Test accuracy and training time ->
data/metrics/classifier.json + MLflow. With evaluator.source `inception` nothing is trained.
"""

from __future__ import annotations

import argparse
import time

from pipeline import pretrained
from pipeline.data import open_split
from pipeline.files import atomic_path
from pipeline.params import REPO_ROOT, Params
from pipeline.stage import stage_main
from pipeline.tracking import record_metrics

METRICS = REPO_ROOT / "data" / "metrics" / "classifier.json"


def run(params: Params, args: argparse.Namespace) -> None:
    if params.evaluator.source != "train":
        with atomic_path(pretrained.CLASSIFIER_DIR) as tmp:
            tmp.mkdir()
            (tmp / "source.txt").write_text(params.evaluator.source + "\n")
        record_metrics(params, METRICS, {"source": params.evaluator.source}, "classifier")
        return
    start = time.perf_counter()
    train, evaluation = open_split(params.data, "train"), open_split(params.data, "eval")
    # seed + 1: a different sample stream from the teacher's, so the two see other batches
    model = pretrained.train_classifier(params.evaluator, len(train.classes),
                                        pretrained.dataset_sampler(train, params.study.seed + 1),
                                        params.study.seed)
    seconds = time.perf_counter() - start
    accuracy = pretrained.accuracy(lambda x: model(x)[1], evaluation)
    with atomic_path(pretrained.CLASSIFIER_DIR) as tmp:
        pretrained.save_classifier(model, tmp)
    record_metrics(params, METRICS, {"source": "train", "test_accuracy": accuracy,
                                     "train_seconds": seconds}, "classifier")
    print(f"classifier: test accuracy {accuracy:.4f} ({seconds:.0f} s training)")


if __name__ == "__main__":
    stage_main(__doc__, run)
