"""Classifier: train the offline FD feature network (evaluator.source: train).

A small CNN trained on the train split's labels, saved to data/classifier/. Its penultimate
features give "FD-classifier", a Frechet distance that is NOT FID (FID needs Inception
weights, which cannot be downloaded here). Test accuracy -> data/metrics/classifier.json.
With evaluator.source `inception` there is nothing to train.
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

METRICS = REPO_ROOT / "data" / "metrics" / "classifier.json"


def run(params: Params, args: argparse.Namespace) -> None:
    if params.evaluator.source != "train":
        pretrained.CLASSIFIER_DIR.mkdir(parents=True, exist_ok=True)
        (pretrained.CLASSIFIER_DIR / "source.txt").write_text(params.evaluator.source + "\n")
        record_metrics(params, METRICS, {"source": params.evaluator.source}, "classifier")
        return
    train, evaluation = open_split(params.data, "train"), open_split(params.data, "eval")
    model = pretrained.train_classifier(params.evaluator, len(train.classes),
                                        pretrained.dataset_sampler(train, params.study.seed + 1),
                                        params.study.seed)
    idx = np.arange(len(evaluation))
    acc = pretrained.accuracy(lambda x: model(x)[1], evaluation.load(idx),
                              torch.as_tensor(evaluation.labels))
    with atomic_path(pretrained.CLASSIFIER_DIR) as tmp:
        pretrained.save_classifier(model, tmp)
    record_metrics(params, METRICS, {"source": "train", "test_accuracy": acc}, "classifier")
    print(f"classifier: test accuracy {acc:.4f}")


if __name__ == "__main__":
    stage_main(__doc__, run)
