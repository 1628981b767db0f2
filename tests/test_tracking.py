"""MLflow tracking: one study run, size runs nested under it, found again across processes."""

from __future__ import annotations

import dataclasses

import mlflow
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.params import Params, TrackingParams


def _params(uri: str) -> Params:
    return dataclasses.replace(Params(), tracking=TrackingParams(uri=uri, experiment="t"))


def test_size_runs_nest_under_one_study_run(mlflow_uri, tmp_path):
    params = _params(mlflow_uri)
    study = tracking.study_run_id(params)
    a = tracking.size_run_id(params, "GAT-T1/4")
    assert tracking.study_run_id(params) == study  # found again, not duplicated
    assert tracking.size_run_id(params, "GAT-T1/4") == a
    b = tracking.size_run_id(params, "GAT-T2/4")
    client = MlflowClient(mlflow_uri)
    for run_id in (a, b):
        assert client.get_run(run_id).data.tags["mlflow.parentRunId"] == study
    with tracking.active_run(params, "GAT-T1/4") as run:
        mlflow.log_metric("x", 1.0)
        (tmp_path / "a.txt").write_text("hi")
        mlflow.log_artifact(str(tmp_path / "a.txt"))
    assert run.info.run_id == a
    assert client.get_run(a).data.metrics["x"] == 1.0
    # artifacts land beside the sqlite database, not in the current directory
    artifact_uri = client.get_run(a).info.artifact_uri
    assert str(tmp_path) in artifact_uri


def test_tracking_uri_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(Params()).endswith("/mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri(Params()) == "http://127.0.0.1:5000"
    assert tracking.tracking_uri(_params("sqlite:///x.db")) == "sqlite:///x.db"
