"""MLflow tracking shared by every stage.

One *study run* per study name, and one run per model size nested under it. Stages run as
separate processes (DVC), so runs are found again by tags rather than held in memory:
train, evaluate and scaling all log to the same runs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from pipeline.params import REPO_ROOT, Params

STUDY_TAG, SIZE_TAG, ROLE_TAG = "gat.study", "gat.size", "gat.role"


def tracking_uri(params: Params) -> str:
    """params ``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<repo>/mlflow.db``."""
    return (
        params.tracking.uri
        or os.environ.get("MLFLOW_TRACKING_URI", "")
        or f"sqlite:///{REPO_ROOT / 'mlflow.db'}"
    )


def setup(params: Params) -> str:
    """Point MLflow at the study's store and experiment; return the experiment id."""
    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(params.tracking.experiment)
    if exp is not None:
        return exp.experiment_id
    artifacts = None
    if uri.startswith("sqlite:"):
        # MLflow would put artifacts under ./mlruns of whatever cwd created the experiment:
        # pin them beside the database instead.
        artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "mlruns").as_uri()
    return client.create_experiment(params.tracking.experiment, artifact_location=artifacts)


def _find_or_create(client: MlflowClient, exp_id: str, tags: dict[str, str], name: str,
                    parent: str | None = None) -> str:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    found = client.search_runs([exp_id], filter_string=query, max_results=1,
                               order_by=["attributes.start_time DESC"])
    if found:
        return found[0].info.run_id
    all_tags = dict(tags)
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    return client.create_run(exp_id, tags=all_tags, run_name=name).info.run_id


def study_run_id(params: Params) -> str:
    """The run id of this study's parent run (created on first use)."""
    exp_id = setup(params)
    client = MlflowClient(tracking_uri(params))
    tags = {STUDY_TAG: params.study.name, ROLE_TAG: "study"}
    return _find_or_create(client, exp_id, tags, params.study.name)


def size_run_id(params: Params, size: str, role: str = "size") -> str:
    """The run id of one model size's run, nested under the study run."""
    parent = study_run_id(params)
    client = MlflowClient(tracking_uri(params))
    exp_id = client.get_run(parent).info.experiment_id
    tags = {STUDY_TAG: params.study.name, ROLE_TAG: role, SIZE_TAG: size}
    return _find_or_create(client, exp_id, tags, size, parent=parent)


@contextlib.contextmanager
def active_run(params: Params, size: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """Resume the study run (``size=None``) or a size's run as MLflow's active run."""
    run_id = size_run_id(params, size) if size else study_run_id(params)
    with mlflow.start_run(run_id=run_id) as run:
        yield run


def record_metrics(params: Params, path: Path, metrics: dict, prefix: str,
                   size: str | None = None) -> None:
    """Write a stage's metrics JSON (atomically) and log them to the study's or a size's run."""
    from pipeline.files import write_json

    write_json(path, metrics)
    numeric = {f"{prefix}.{k}": float(v) for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    with active_run(params, size):
        mlflow.log_metrics(numeric)
