"""FD through torch-fidelity with the classifier stand-in: self ~ 0, shifted > 0."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipeline import fidelity
from pipeline.params import Params
from pipeline.pretrained import Classifier, save_classifier
from tests.helpers import FASHION


@pytest.fixture
def classifier(tmp_path, monkeypatch):
    torch.manual_seed(0)
    save_classifier(Classifier(num_classes=10).eval(), tmp_path / "clf")
    monkeypatch.setattr(fidelity.ClassifierFeatures, "source", str(tmp_path / "clf"))


@pytest.mark.skipif(not FASHION.exists(), reason="needs dataset-fashion-mnist")
def test_fd_self_is_zero_and_shifted_is_positive(classifier, tmp_path):
    from pipeline.data import open_split

    params = dataclasses.replace(Params())
    images = open_split(params.data, "eval").load(np.arange(600))
    reference = fidelity.reference_statistics(params, images)
    fidelity.save_reference(reference, tmp_path / "ref.npz")
    reference = fidelity.load_reference(tmp_path / "ref.npz")
    same = fidelity.frechet_distance(fidelity.extract(params, images)["features"], reference)
    darker = (images.float() * 0.6).to(torch.uint8)
    shifted = fidelity.frechet_distance(fidelity.extract(params, darker)["features"], reference)
    assert abs(same) < 1e-6 * max(1.0, shifted)
    assert shifted > 100 * max(abs(same), 1e-9) and shifted > 0.01
    precision, recall = fidelity.precision_recall(
        fidelity.extract(params, images)["features"], reference)
    assert precision > 0.9 and recall > 0.9
    assert fidelity.metric_name(params) == "FD-classifier"


def test_inception_is_called_fid():
    params = dataclasses.replace(Params(), evaluator=dataclasses.replace(
        Params().evaluator, source="inception"))
    assert fidelity.metric_name(params) == "FID"
