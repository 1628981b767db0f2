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

import pytest
import torch
from mlflow.tracking import MlflowClient

from gat.sample import balanced_labels, parse_classes, parse_seeds, sample_latents
from pipeline.cli import main as gat_main
from tests.eval_helpers import (
    CLASSES,
    SIZE,
    check_grid_shape,
    image_folder,
    save_classifier_dir,
    save_generator_dir,
    save_tokenizer_dir,
    stage_params,
)
from tests.helpers import REPO, dvc_env, write_params


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict[str, Path]:
    """Generator (2 training steps), tokenizer and classifier directories, built once."""
    root = tmp_path_factory.mktemp("parts")
    return {"generator": save_generator_dir(root / "generator"),
            "tokenizer": save_tokenizer_dir(root / "tokenizer"),
            "classifier": save_classifier_dir(root / "classifier")}


def _stage(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**dvc_env(), "GAT_ROOT": str(root), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env,
                          capture_output=True, text=True)


def _study_root(root: Path, parts: dict[str, Path], mlflow_uri: str) -> None:
    """What the upstream stages leave: data/{tokenizer,classifier}, the trained size."""
    image_folder(root / "images")
    shutil.copytree(parts["tokenizer"], root / "data" / "tokenizer")
    shutil.copytree(parts["classifier"], root / "data" / "classifier")
    shutil.copytree(parts["generator"], root / "outputs" / "train" / SIZE / "generator")
    write_params(stage_params(root, mlflow_uri, num_samples=64, batch=32),
                 root / "params.yaml")


def test_evaluate_stage_writes_grid_metrics_and_mlflow(tmp_path, parts, mlflow_uri):
    _study_root(tmp_path, parts, mlflow_uri)
    for stage in (["stages.reference"], ["stages.evaluate", SIZE]):
        done = _stage(tmp_path, *stage)
        assert done.returncode == 0, f"{stage}: {done.stderr[-3000:]}"
    out = tmp_path / "outputs" / "eval" / SIZE
    metrics = json.loads((tmp_path / "results" / "eval" / SIZE / "metrics.json").read_text())
    assert metrics["metric"] == "FD-classifier" and metrics["num_samples"] == 64
    assert metrics["fd"] > 0 and 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1
    assert 0 <= metrics["class_accuracy"] <= 1
    assert 0 < metrics["g_gflops"] < 1 and metrics["g_params"] > 0 and metrics["d_params"] > 0
    check_grid_shape(out / "samples.png", rows=CLASSES, cols=10)  # one row per class

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
    assert logged == {"eval/samples.png"}


def test_balanced_labels_and_seeded_latents(parts):
    from gat.io import load_generator

    counts = torch.bincount(balanced_labels(10, 4), minlength=4)
    assert counts.tolist() == [3, 3, 2, 2]
    gen, _ = load_generator(parts["generator"])
    a, pairs = sample_latents(gen, [0, 3], [5, 6])
    b, _ = sample_latents(gen, [3], [6], psi=1.0)
    assert pairs == [(0, 5), (0, 6), (3, 5), (3, 6)] and a.shape == (4, 4, 16, 16)
    torch.testing.assert_close(a[3:], b)  # a seed's sample does not depend on the batch
    assert parse_seeds("0-2,7") == [0, 1, 2, 7] and parse_classes("all", 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="out of range"):
        parse_classes("0,9", 4)
    with pytest.raises(ValueError, match="backwards"):
        parse_seeds("5-1")


def test_gat_sample_writes_files_and_grid(tmp_path, parts, capsys):
    base = ["sample", "--generator", str(parts["generator"]), "--decoder",
            str(parts["tokenizer"]), "--cpu"]
    assert gat_main([*base, "--classes", "0,3", "--seeds", "1-3", "--out",
                     str(tmp_path / "one")]) == 0
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == [f"class{c:04d}_seed{s:06d}.png" for c in (0, 3) for s in (1, 2, 3)]
    assert gat_main([*base, "--seeds", "0-4", "--psi", "0.7", "--guidance", "1.5",
                     "--out", str(tmp_path / "grid.png")]) == 0
    check_grid_shape(tmp_path / "grid.png", rows=CLASSES, cols=5)  # all classes x 5 seeds
    assert gat_main([*base, "--classes", "7", "--out", str(tmp_path / "x.png")]) == 2
    assert "out of range" in capsys.readouterr().err


def test_gat_sample_from_an_mlflow_run(tmp_path, parts, mlflow_uri):
    client = MlflowClient(mlflow_uri)
    exp = client.create_experiment("sample-test", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp).info.run_id
    client.log_artifacts(run_id, str(parts["generator"]), "generator")  # as training logs it
    assert gat_main(["sample", "--generator", f"runs:/{run_id}", "--tracking-uri", mlflow_uri,
                     "--decoder", str(parts["tokenizer"]), "--classes", "1", "--seeds", "0",
                     "--cpu", "--out", str(tmp_path / "from_run")]) == 0
    assert [p.name for p in (tmp_path / "from_run").iterdir()] == ["class0001_seed000000.png"]
