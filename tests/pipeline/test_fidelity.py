"""FD through torch-fidelity with a classifier extractor: self ~ 0, shifted clearly > 0.

The reference statistics and the tested sets go through the same functions the
`reference` and `evaluate` stages use (extract -> statistics -> torch-fidelity's Frechet
distance), with a small calibrated CNN saved as the classifier stage saves it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor

from pipeline import fidelity
from tests.eval_helpers import save_classifier_dir, synthetic_images


@pytest.fixture(scope="module")
def clf_dir(tmp_path_factory) -> str:
    return str(save_classifier_dir(tmp_path_factory.mktemp("clf") / "classifier"))


@pytest.fixture(scope="module")
def ev(clf_dir) -> fidelity.Evaluator:
    return fidelity.evaluator("train", clf_dir)


def _features(ev: fidelity.Evaluator, images: torch.Tensor) -> torch.Tensor:
    return fidelity.extract(ev, images.split(128), len(images))["features"]


def test_fd_of_reference_to_itself_is_zero_and_to_a_shifted_set_is_not(ev, tmp_path):
    real, _ = synthetic_images(512, seed=1)
    stats = fidelity.reference_statistics(ev, real.split(128), len(real))
    fidelity.save_reference(stats, tmp_path / "stats.npz")
    reference = fidelity.load_reference(tmp_path / "stats.npz", metric="FD-classifier")
    scale = float(np.trace(reference["sigma"]))  # FD's natural unit in this feature space

    same = fidelity.frechet_distance(_features(ev, real), reference)
    fresh = fidelity.frechet_distance(_features(ev, synthetic_images(512, seed=2)[0]), reference)
    darker = (real.float() * 0.6).to(torch.uint8)
    shifted = fidelity.frechet_distance(_features(ev, darker), reference)

    assert abs(same) < 1e-8 * scale
    assert shifted > 0.5 * scale  # a global change of brightness is far away...
    assert shifted > 50 * fresh  # ...compared with a new draw of the same distribution
    assert int(reference["count"]) == 512 and str(reference["extractor"]) == "gat-classifier"


def test_precision_and_recall(ev):
    real, _ = synthetic_images(256, seed=1)
    reference = fidelity.reference_statistics(ev, [real])
    p_same, r_same = fidelity.precision_recall(_features(ev, real), reference)
    assert p_same == pytest.approx(1.0) and r_same == pytest.approx(1.0)
    noise = torch.randint(0, 256, real.shape, dtype=torch.uint8)
    p_noise, _ = fidelity.precision_recall(_features(ev, noise), reference)
    assert p_noise < 0.5


def test_class_accuracy_counts_matches():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])
    assert fidelity.class_accuracy(logits, torch.tensor([0, 1, 1, 1])) == 0.75


def test_extractor_is_registered_with_torch_fidelity(clf_dir):
    assert fidelity.CLASSIFIER_EXTRACTOR in FEATURE_EXTRACTORS_REGISTRY
    ext = create_feature_extractor(fidelity.CLASSIFIER_EXTRACTOR, ["logits"], cuda=False,
                                   feature_extractor_weights_path=clf_dir)
    (logits,) = ext(synthetic_images(3)[0])
    assert logits.shape == (3, 4)
    with pytest.raises(ValueError, match="uint8"):
        ext(torch.zeros(1, 3, 32, 32))


def test_names_fid_and_fd_classifier_apart():
    assert fidelity.metric_name("inception") == "FID"
    assert fidelity.metric_name("train") == "FD-classifier"
    with pytest.raises(ValueError, match=r"evaluator\.source 'vgg'"):
        fidelity.evaluator("vgg")


def test_reference_refuses_missing_or_foreign_statistics(tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc repro reference"):
        fidelity.load_reference(tmp_path / "none.npz")
    fidelity.save_reference({"mu": np.zeros(2), "sigma": np.eye(2), "metric": np.array("FID")},
                            tmp_path / "fid.npz")
    with pytest.raises(ValueError, match=r"statistics for FID.*FD-classifier"):
        fidelity.load_reference(tmp_path / "fid.npz", metric="FD-classifier")




def test_summed_moments_of_shares_give_the_whole_sets_statistics(ev):
    """What sharded workers all-reduce: moments of uneven shares, summed, are the mean and
    covariance of the whole set, and its FD."""
    feats = _features(ev, synthetic_images(300, seed=4)[0])
    shift = feats[:50].mean(0) + 3.0  # any shift: the result must not depend on it
    total = sum(fidelity.moments(part, shift) for part in feats.split([100, 37, 163]))
    got, want = fidelity.moments_statistics(total, shift), fidelity.statistics(feats)
    np.testing.assert_allclose(got["mu"], want["mu"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got["sigma"], want["sigma"], rtol=1e-8, atol=1e-10)
    reference = fidelity.reference_statistics(ev, [synthetic_images(256, seed=5)[0]])
    assert fidelity.statistics_distance(got, reference) == pytest.approx(
        fidelity.frechet_distance(feats, reference), rel=1e-8)
    with pytest.raises(ValueError, match="at least 2 samples"):
        fidelity.moments_statistics(fidelity.moments(feats[:1], shift), shift)
