"""The reference stage: statistics of the eval split through the classifier extractor."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline import fidelity
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
