"""evaluate's and reference's features on a pool of real Ray actors (on CPUs here, one
contiguous share each): the same features, in the same order, as one process; a GPU study
refused on a cluster without GPUs before any work."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from gat.io import load_generator
from pipeline import fidelity
from pipeline.cluster import ClusterError
from pipeline.config import DataParams
from pipeline.evaluation import (
    SampleFeatureWork,
    generated_features,
    sampled_features_on_ray,
    score_samples,
)
from pipeline.layout import Layout
from pipeline.pretrained.tokenizer import load_tokenizer
from pipeline.ray_pool import cluster_pool, map_parts
from stages.reference import EvalImageFeatures
from tests.eval_helpers import checkout_with_parts, image_folder

pytestmark = pytest.mark.slow  # Ray actors that import torch, diffusers, torch-fidelity

SAMPLES = 30  # two shares of 15: batches of 8 cut them differently than one process does


@pytest.fixture(scope="module")
def layout(parts, tmp_path_factory) -> Layout:
    """A checkout with the tokenizer and classifier a generator's evaluation loads."""
    return checkout_with_parts(parts, tmp_path_factory.mktemp("pool-eval"))


def _one_thread(fn):
    """Run ``fn()`` with one torch thread, as each 1-CPU actor has (thread counts change
    fp32 sums in the last bits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


def test_evaluate_on_a_ray_pool_gives_the_one_process_features(parts, layout, ray_cluster):
    assert cluster_pool(False, 1.0, SAMPLES)[1] == 2  # two actors, one share each
    work = SampleFeatureWork(parts["generator"], layout, "train", SAMPLES, batch=8, psi=1.0,
                             seed=3)
    pooled = sampled_features_on_ray(work, use_gpu=False, cpus=1.0)

    gen, meta = load_generator(parts["generator"])
    tokenizer = load_tokenizer(meta["tokenizer"], "cpu", meta["scale_factor"], layout)
    ev = fidelity.evaluator("train", str(layout.classifier), "cpu")
    alone = _one_thread(lambda: generated_features(ev, gen, tokenizer, SAMPLES, 8, 1.0, 3))
    assert pooled.keys() == alone.keys() == {"features", "logits"}
    for key in alone:
        assert pooled[key].shape == alone[key].shape
        torch.testing.assert_close(pooled[key], alone[key], rtol=1e-5, atol=1e-6)
    reference = fidelity.reference_statistics(ev, [torch.randint(0, 256, (40, 3, 32, 32),
                                                                 dtype=torch.uint8)])
    pooled_score = score_samples(ev, pooled, gen.num_classes, reference, 1.0, 3)
    alone_score = score_samples(ev, alone, gen.num_classes, reference, 1.0, 3)
    assert pooled_score["fd"] == pytest.approx(alone_score["fd"], rel=1e-6)
    for key in ("precision", "recall", "class_accuracy", "num_samples"):
        assert pooled_score[key] == alone_score[key], key


def test_reference_on_a_ray_pool_gives_the_one_process_statistics(layout, ray_cluster,
                                                                   tmp_path):
    images = image_folder(tmp_path / "images", per_class=7)  # 28 eval images
    data = DataParams(source="imagefolder", path=str(images), eval_path=str(images))
    work = EvalImageFeatures(data, "train", str(layout.classifier))
    parts = map_parts(lambda n: dataclasses.replace(work, parts=n), 28, False, 1.0, "ref")
    assert len(parts) == 2 and [len(p["features"]) for p in parts] == [14, 14]
    pooled = fidelity.concat(parts)

    ev = fidelity.evaluator("train", str(layout.classifier), "cpu")
    alone = _one_thread(lambda: work("cpu")(0))  # parts=1: the whole split
    torch.testing.assert_close(pooled["features"], alone["features"], rtol=1e-5, atol=1e-6)
    a = fidelity.reference_of_features(ev, pooled["features"])
    b = fidelity.reference_of_features(ev, alone["features"])
    assert int(a["count"]) == int(b["count"]) == 28
    np.testing.assert_allclose(a["mu"], b["mu"], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(a["sigma"], b["sigma"], rtol=1e-5, atol=1e-8)


def test_gpu_evaluation_on_a_cluster_without_gpus_is_refused_before_any_work(
        layout, ray_cluster, tmp_path):
    assert ray_cluster.cluster_resources().get("GPU", 0) == 0  # this machine: CPUs only
    # a generator folder that does not exist: any work started would fail differently
    work = SampleFeatureWork(tmp_path / "missing", layout, "train", SAMPLES, 8, 1.0, 0)
    with pytest.raises(ClusterError, match=r"runtime.use_gpu is true .* no GPU"):
        sampled_features_on_ray(work, use_gpu=True, cpus=1.0)
