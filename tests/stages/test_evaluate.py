"""The evaluate stage and `gat sample` on a tiny generator trained for a few real steps.

The stages run as DVC runs them (`python -m stages.NAME` in a root of their own), with a
real MLflow sqlite store; the generator, tokenizer and classifier are tiny real models.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.eval_helpers import (
    CLASSES,
    SIZE,
    check_grid_shape,
    image_folder,
    stage_params,
)
from tests.helpers import REPO, dvc_env, write_params

pytestmark = pytest.mark.slow


def _stage(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**dvc_env(), "GAT_ROOT": str(root), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env,
                          capture_output=True, text=True)


def _study_root(root: Path, parts: dict[str, Path], mlflow_uri: str) -> None:
    """What the upstream stages leave: data/{tokenizer,classifier}, the trained size."""
    image_folder(root / "images")
    shutil.copytree(parts["tokenizer"], root / "data" / "tokenizer")
    shutil.copytree(parts["classifier"], root / "data" / "classifier")
    shutil.copytree(parts["generator"], root / "outputs/train" / SIZE / "seed0/generator")
    write_params(stage_params(root, mlflow_uri, num_samples=64, batch=32),
                 root / "params.yaml")


def test_evaluate_stage_writes_grid_metrics_and_mlflow(tmp_path, parts, mlflow_uri,
                                                      monkeypatch):
    _study_root(tmp_path, parts, mlflow_uri)
    for stage in (["stages.reference"], ["stages.evaluate", SIZE]):
        done = _stage(tmp_path, *stage)
        assert done.returncode == 0, f"{stage}: {done.stderr[-3000:]}"
    out = tmp_path / "outputs" / "eval" / SIZE / "seed0"
    metrics = json.loads((tmp_path / "results/eval" / SIZE / "seed0/metrics.json").read_text())
    assert metrics["metric"] == "FD-classifier" and metrics["num_samples"] == 64
    assert metrics["fd"] > 0 and 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1
    assert 0 <= metrics["class_accuracy"] <= 1
    assert 0 < metrics["g_gflops"] < 1 and metrics["g_params"] > 0 and metrics["d_params"] > 0
    check_grid_shape(out / "samples.png", rows=CLASSES, cols=10)  # one row per class
    check_grid_shape(out / "interpolation.png", rows=3, cols=8)  # z, w, class to class

    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("eval-test")
    (run,) = client.search_runs([exp.experiment_id], f"tags.`gat.size` = '{SIZE}'")
    assert run.data.metrics["FD-classifier"] == pytest.approx(metrics["fd"])
    assert run.data.metrics["eval.class_accuracy"] == pytest.approx(metrics["class_accuracy"])
    assert {"eval.precision", "eval.recall", "eval.g_gflops"} <= set(run.data.metrics)
    assert run.data.tags["eval.metric"] == "FD-classifier"
    assert run.data.tags["mlflow.parentRunId"]  # nested under the study run
    assert run.data.tags["gat.run_key"] == metrics["run_key"] == "test-2"  # the generator's
    assert run.info.run_id == metrics["mlflow_run_id"]
    assert run.data.metrics["FD-classifier"] == pytest.approx(metrics["fd"])
    history = client.get_metric_history(run.info.run_id, "FD-classifier")
    assert [m.step for m in history] == [2]  # at the generator's last training step
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    assert logged == {"eval/samples.png", "eval/interpolation.png"}

    # the pipeline folder (a DVC out) and the registered MLflow model sample alike
    import mlflow

    from pipeline.serving.diffusers_pipeline import GATPipeline, uint8_pixels

    pipe = GATPipeline.from_pretrained(tmp_path / "outputs/pipeline" / SIZE / "seed0")
    seeds = [torch.Generator().manual_seed(s) for s in (0, 1)]
    expected = uint8_pixels(pipe(class_labels=[2, 2], generator=seeds, output_type="np").images)
    assert metrics["mlflow_model"] == "models:/gat-eval-test-GAT-T1_4/1"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    model = mlflow.pyfunc.load_model(metrics["mlflow_model"])
    images = model.predict(pd.DataFrame({"class_id": [2, 2], "seed": [0, 1]}))
    assert np.array_equal(images, expected)


