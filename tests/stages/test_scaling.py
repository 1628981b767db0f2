"""The scaling stage: its refusals (missing sizes, mixed metrics, mixed configurations) and
its outputs (table, fit, plot, the study run in MLflow)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline.config import Params, StudyParams
from tests.helpers import REPO, dvc_env, write_params

pytestmark = pytest.mark.slow


def _write_results(root: Path, size: str, gflops: float, fd: float,
                   metric: str = "FD-classifier", study: str = "s1", seed: int = 0) -> None:
    run = {"run_key": f"{size}-{seed}-k", "study_key": study}
    for stage, data in (("train", {"images_per_s": 10.0, **run}),
                        ("eval", {"fd": fd, "g_gflops": gflops, "g_params": 1, "d_params": 2,
                                  "metric": metric, "precision": 0.5, "recall": 0.4, **run})):
        out = root / "results" / stage / size / f"seed{seed}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(data))


def _run_scaling(root: Path, sizes: list[str], uri: str, seeds: tuple[int, ...] = (0,)
                 ) -> subprocess.CompletedProcess:
    params = dataclasses.replace(
        Params(), study=StudyParams(sizes=sizes, train_seeds=list(seeds)),
        tracking=dataclasses.replace(Params().tracking, uri=uri, experiment="scaling-test",
                                     study_name="s"),
        scaling=dataclasses.replace(Params().scaling, bootstrap=100))
    write_params(params, root / "params.yaml")
    env = {**dvc_env(), "GAT_ROOT": str(root), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "stages.scaling"], cwd=REPO, env=env,
                          capture_output=True, text=True)


def test_scaling_names_missing_size_and_refuses_fewer_than_three(tmp_path, mlflow_uri):
    _write_results(tmp_path, "GAT-T1/4", 0.001, 30.0)
    _write_results(tmp_path, "GAT-T2/4", 0.002, 20.0)
    done = _run_scaling(tmp_path, ["GAT-T1/4", "GAT-T2/4", "GAT-T3/4"], mlflow_uri)
    assert done.returncode == 1
    assert "at least 3 sizes" in done.stderr and "have 2 (GAT-T1/4, GAT-T2/4)" in done.stderr
    assert "GAT-T3/4 seed 0 (no " in done.stderr  # named, with the file it lacks
    assert not (tmp_path / "results" / "scaling").exists()


def test_scaling_fits_the_rest_and_logs_to_the_study_run(tmp_path, mlflow_uri):
    for i, size in enumerate(["GAT-T1/4", "GAT-T2/4", "GAT-T3/4"]):
        _write_results(tmp_path, size, 0.001 * 2**i, 30.0 * 2 ** (-0.5 * i))
    _write_results(tmp_path, "GAT-T1/2", 0.01, float("nan"))  # a diverged size
    sizes = ["GAT-T1/4", "GAT-T2/4", "GAT-T3/4", "GAT-T4/4", "GAT-T1/2"]
    done = _run_scaling(tmp_path, sizes, mlflow_uri)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "left out GAT-T4/4 seed 0 (no " in done.stderr
    assert "left out GAT-T1/2 seed 0 (" in done.stderr

    out = tmp_path / "results" / "scaling"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["b"] == pytest.approx(-0.5, rel=1e-6) and metrics["sizes"] == 3
    assert metrics["a"] == pytest.approx(30.0 * 1000**-0.5, rel=1e-6)
    assert metrics["pearson_r"] < 0 and metrics["metric"] == "FD-classifier"
    assert [m.split()[0] for m in metrics["missing"]] == ["GAT-T4/4", "GAT-T1/2"]
    table = pd.read_csv(out / "scaling.csv")
    assert table["size"].tolist() == ["GAT-T1/4", "GAT-T2/4", "GAT-T3/4"]
    assert {"g_params", "d_params", "g_gflops", "fd", "train_images_per_s"} <= set(table)
    np.testing.assert_allclose(table["fd_fit"], table["fd"], rtol=1e-6)
    assert (out / "scaling.png").stat().st_size > 1000

    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("scaling-test")
    (run,) = client.search_runs([exp.experiment_id], "tags.`gat.role` = 'study'")
    assert run.data.tags["gat.study_key"] == "s1" and run.info.status == "FINISHED"
    assert run.data.metrics["scaling.b"] == pytest.approx(-0.5, rel=1e-6)
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "scaling")}
    assert logged == {"scaling/scaling.csv", "scaling/runs.csv", "scaling/scaling.png",
                      "scaling/metrics.json", "scaling/trajectories.csv", "scaling/compute.png"}
    assert metrics["compute_law"].startswith("not recorded")  # no FD proxy was logged


def test_scaling_refuses_to_fit_fid_and_fd_classifier_together(tmp_path, mlflow_uri):
    for i, size in enumerate(["GAT-T1/4", "GAT-T2/4", "GAT-T3/4"]):
        _write_results(tmp_path, size, 0.001 * 2**i, 30.0 - i, "FID" if i else "FD-classifier")
    done = _run_scaling(tmp_path, ["GAT-T1/4", "GAT-T2/4", "GAT-T3/4"], mlflow_uri)
    assert done.returncode == 1 and "different metrics" in done.stderr


def test_scaling_refuses_sizes_trained_under_different_configurations(tmp_path, mlflow_uri):
    """A partial experiment (`dvc exp run ... train@ONE_SIZE`) leaves sizes of two study
    configurations side by side: fitting them together would be wrong."""
    for i, size in enumerate(["GAT-T1/4", "GAT-T2/4", "GAT-T3/4"]):
        _write_results(tmp_path, size, 0.001 * 2**i, 30.0 - i, study="s2" if i else "s1")
    done = _run_scaling(tmp_path, ["GAT-T1/4", "GAT-T2/4", "GAT-T3/4"], mlflow_uri)
    assert done.returncode == 1 and "different configurations" in done.stderr
    assert "s1" in done.stderr and "s2" in done.stderr and "dvc repro" in done.stderr


def test_scaling_over_seeds_reports_their_spread_and_widens_the_interval(tmp_path,
                                                                        mlflow_uri):
    """Three seeds per size: the table gives each size's mean and range, the fit runs on
    the means, and its bootstrap interval holds the seeds' spread."""
    sizes = ["GAT-T1/4", "GAT-T2/4", "GAT-T3/4"]
    for i, size in enumerate(sizes):
        for seed, noise in zip((0, 1, 2), (0.8, 1.0, 1.25)):
            _write_results(tmp_path, size, 0.001 * 2**i, 30.0 * 2 ** (-0.5 * i) * noise,
                           seed=seed)
    done = _run_scaling(tmp_path, sizes, mlflow_uri, seeds=(0, 1, 2))
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "results" / "scaling"
    table = pd.read_csv(out / "scaling.csv")
    assert table["seeds"].tolist() == [3, 3, 3]
    expected = 30.0 * 2 ** (-0.5 * np.arange(3)) * (0.8 + 1.0 + 1.25) / 3
    np.testing.assert_allclose(table["fd"], expected, rtol=1e-9)
    np.testing.assert_allclose(table["fd_max"] / table["fd_min"], 1.25 / 0.8, rtol=1e-9)
    assert len(pd.read_csv(out / "runs.csv")) == 9
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["b"] == pytest.approx(-0.5, rel=1e-6) and metrics["seeds"] == 3
    # the means lie exactly on a law, yet the seeds' spread widens the interval
    assert metrics["b_ci_high"] - metrics["b_ci_low"] > 0.05
