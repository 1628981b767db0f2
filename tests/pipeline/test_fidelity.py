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


def test_adm_protocol_scores_every_sample_and_balanced_equally_many():
    """ADM's precision/recall: all N samples against the n reference features (what
    torch-fidelity computes on the two full sets); balanced: min(N, n) of each. A sample
    set 4x the reference's size covers it better under ADM's protocol (more balls)."""
    from torch_fidelity.metric_prc import prc_features_to_metric

    gen = torch.Generator().manual_seed(0)
    real, fake = torch.randn(100, 8, generator=gen), torch.randn(400, 8, generator=gen)
    reference = {"features": real.numpy()}
    full = prc_features_to_metric(fake, real, save_cpu_ram=True, verbose=False)
    adm = fidelity.precision_recall(fake, reference, protocol="adm")
    assert adm == (pytest.approx(full["precision"]), pytest.approx(full["recall"]))
    balanced = fidelity.precision_recall(fake, reference, protocol="balanced")
    kept = fidelity._subset(fake, 100)
    equal = prc_features_to_metric(kept, real, save_cpu_ram=True, verbose=False)
    assert balanced == (pytest.approx(equal["precision"]), pytest.approx(equal["recall"]))
    assert adm[1] > balanced[1]
    with pytest.raises(ValueError, match=r"evaluate\.prc 'fid'"):
        fidelity.precision_recall(fake, reference, protocol="fid")


def test_inception_score_counts_the_classes_a_confident_model_spreads_over():
    """IS = exp(E KL(p(y|x) || p(y))): confident, balanced over K classes -> K; one class
    for every sample -> 1."""
    confident = torch.eye(5).repeat(20, 1) * 50.0  # [100, 5], 20 of each class in turn
    assert fidelity.inception_score(confident) == pytest.approx(5.0, rel=1e-3)
    assert fidelity.inception_score(torch.zeros(100, 5).index_fill_(1, torch.tensor([2]),
                                                                     50.0)) == pytest.approx(1.0)


def test_inception_evaluator_gives_is_and_no_class_accuracy(tmp_path, monkeypatch):
    """With Inception (random weights, offline: the rehearsal's file) a score has the IS
    from the same pass and no class accuracy (its logits are ImageNet's, not the data's);
    the classifier's has both, its IS named as the stand-in it is."""
    import importlib.util

    from pipeline.evaluation import score
    from tests.helpers import REPO

    spec = importlib.util.spec_from_file_location("rehearse", REPO / "scripts/rehearse.py")
    rehearse = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rehearse)
    weights = tmp_path / "pt_inception-random.pth"
    rehearse.inception_weights(weights)
    monkeypatch.setenv(fidelity.INCEPTION_WEIGHTS_ENV, str(weights))
    fidelity.evaluator.cache_clear()
    ev = fidelity.evaluator("inception", device="cpu")
    images, labels = synthetic_images(24, seed=3)
    out = fidelity.extract(ev, [images])
    assert out["features"].shape == (24, 2048) and out["logits"].shape[0] == 24
    reference = fidelity.reference_of_features(ev, out["features"])
    metrics = score(ev, out, torch.as_tensor(labels), reference, prc="adm")
    assert metrics["is_metric"] == "IS" and metrics["is"] >= 1.0
    assert "class_accuracy" not in metrics and metrics["prc"] == "adm"
    fidelity.evaluator.cache_clear()


def test_classifier_score_names_its_is_a_stand_in(ev):
    from pipeline.evaluation import score

    images, labels = synthetic_images(64, seed=5)
    out = fidelity.extract(ev, [images])
    metrics = score(ev, out, torch.as_tensor(labels), fidelity.reference_of_features(
        ev, out["features"]))
    assert metrics["is_metric"] == "IS-classifier" and metrics["prc"] == "balanced"
    assert 1.0 <= metrics["is"] <= 4.0 + 1e-6 and "class_accuracy" in metrics


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


def test_building_the_extractor_leaves_the_global_rng_as_it_found_it(clf_dir):
    """A training worker builds the extractor at its first FD proxy, mid-run: the draws of
    the network's initial weights must not shift the run's noise (runtime.fd_every would
    change the trained model, and a process with the extractor cached would train apart
    from a fresh one)."""
    fidelity.evaluator.cache_clear()
    torch.manual_seed(0)
    fidelity.evaluator("train", clf_dir)
    after_build = torch.rand(4)
    torch.manual_seed(0)
    assert torch.equal(after_build, torch.rand(4))
    # the draws it would have taken (the check above can fail): the same network, unforked
    torch.manual_seed(0)
    create_feature_extractor(fidelity.CLASSIFIER_EXTRACTOR, ["features"], cuda=False,
                             feature_extractor_weights_path=clf_dir)
    assert not torch.equal(after_build, torch.rand(4))
    fidelity.evaluator.cache_clear()


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
