"""The reference stage: statistics of the eval split through the classifier extractor."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from gat.io import load_generator
from pipeline import fidelity
from pipeline.evaluation import evaluate_trained
from pipeline.layout import Layout
from pipeline.pretrained.tokenizer import load_tokenizer
from tests.eval_helpers import image_folder, save_classifier_dir, stage_params
from tests.helpers import REPO, dvc_env, write_params

pytestmark = pytest.mark.slow


def test_reference_stage_writes_statistics(tmp_path, mlflow_uri):
    image_folder(tmp_path / "images")
    save_classifier_dir(tmp_path / "data" / "classifier")
    write_params(stage_params(tmp_path, mlflow_uri), tmp_path / "params.yaml")
    env = {**dvc_env(), "GAT_ROOT": str(tmp_path), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "stages.reference"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((tmp_path / "data" / "reference" / "info.json").read_text())
    assert info["metric"] == "FD-classifier" and info["images"] == 24 and info["features"] == 32
    stats = fidelity.load_reference(tmp_path / "data" / "reference" / "stats.npz")
    assert stats["mu"].shape == (32,) and stats["sigma"].shape == (32, 32)
    assert stats["features"].shape == (24, 32)


def _reference_stage(root, params) -> subprocess.CompletedProcess:
    write_params(params, root / "params.yaml")
    env = {**dvc_env(), "GAT_ROOT": str(root), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "stages.reference"], cwd=REPO, env=env,
                          capture_output=True, text=True)


def test_precomputed_reference_gives_the_same_evaluation(tmp_path, mlflow_uri, parts):
    """evaluator.reference: an .npz holding the computed reference's own mu and sigma
    (as ADM's file holds Inception's) scores a generator exactly as the computed one; a
    file changed after the reference stage read it is refused before sampling."""
    image_folder(tmp_path / "images")
    shutil.copytree(parts["classifier"], tmp_path / "data" / "classifier")
    params = stage_params(tmp_path, mlflow_uri, num_samples=32, batch=32)
    layout = Layout(tmp_path, tmp_path)
    gen, meta = load_generator(parts["generator"])
    tok = load_tokenizer(str(parts["tokenizer"]), scale_factor=1.0)

    def evaluate() -> dict:
        return evaluate_trained(params, parts["generator"], gen, meta, tok,
                                tmp_path / "grid.png", layout)

    assert _reference_stage(tmp_path, params).returncode == 0
    computed = evaluate()
    stats = fidelity.load_reference(tmp_path / "data" / "reference" / "stats.npz")
    given = tmp_path / "given.npz"
    np.savez(given, mu=stats["mu"], sigma=stats["sigma"])
    params = dataclasses.replace(params, evaluator=dataclasses.replace(
        params.evaluator, reference=str(given)))
    done = _reference_stage(tmp_path, params)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((tmp_path / "data" / "reference" / "info.json").read_text())
    assert info["given"]["path"] == str(given) and len(info["given"]["sha256"]) == 64
    assert info["precision_recall_features"] == "data.eval_path" and info["features"] == 32
    from_file = evaluate()
    for key in ("fd", "precision", "recall", "class_accuracy"):
        assert from_file[key] == computed[key], key
    np.savez(given, mu=stats["mu"] + 1.0, sigma=stats["sigma"])  # edited in place
    with pytest.raises(ValueError, match=r"changed since .* dvc repro -f reference"):
        evaluate()


def test_precomputed_reference_of_another_width_is_refused(tmp_path, mlflow_uri):
    """A 2048-d (Inception, ADM's) reference with the 32-d stand-in classifier: the stage
    fails naming the file, the key and what to do; so do a missing key and file."""
    image_folder(tmp_path / "images")
    classifier = save_classifier_dir(tmp_path / "data" / "classifier")
    adm = tmp_path / "VIRTUAL_imagenet256_labeled.npz"
    np.savez(adm, mu=np.zeros(2048), sigma=np.eye(2048, dtype=np.float32))
    params = stage_params(tmp_path, mlflow_uri)
    params = dataclasses.replace(params, evaluator=dataclasses.replace(
        params.evaluator, reference=str(adm)))
    done = _reference_stage(tmp_path, params)
    assert done.returncode != 0
    assert (f"evaluator.reference: {adm}: mu [2048] and sigma [2048, 2048], but the "
            "evaluator's features are 32-d") in done.stderr
    assert not (tmp_path / "data" / "reference").exists()

    ev = fidelity.evaluator("train", str(classifier))
    np.savez(tmp_path / "no_sigma.npz", mu=np.zeros(32))
    with pytest.raises(ValueError, match=r"no_sigma\.npz has no key 'sigma' \(it holds mu\)"):
        fidelity.precomputed_reference(tmp_path / "no_sigma.npz", fidelity.feature_dim(ev))
    with pytest.raises(FileNotFoundError, match=r"missing\.npz does not exist; set evaluator"):
        fidelity.precomputed_reference(tmp_path / "missing.npz", 32)
