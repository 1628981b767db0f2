"""MLflow tracking: one run per training configuration, grouped by study, found again by
key across processes; statuses that say what is happening; an unreachable store refused."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.config import Params, TrackingParams
from pipeline.layout import Layout


def _params(uri: str, experiment: str = "t") -> Params:
    return dataclasses.replace(Params(), tracking=TrackingParams(uri=uri, experiment=experiment,
                                                                 study_name="s"))


def test_one_run_per_key_nested_under_its_study(mlflow_uri, tmp_path):
    params = _params(mlflow_uri)
    tr = tracking.tracker(params)
    a = tracking.training_run(tr, params, "GAT-T1/4", "k1-10", "s1", {"train.batch": 8})
    assert tracking.training_run(tr, params, "GAT-T1/4", "k1-10", "s1",
                                 {"train.batch": 8}) == a  # found again, not duplicated
    b = tracking.training_run(tr, params, "GAT-T1/4", "k2-10", "s1", {"train.batch": 16})
    c = tracking.training_run(tr, params, "GAT-T1/4", "k3-10", "s2", {"train.batch": 8})
    assert len({a, b, c}) == 3  # a changed configuration is a new run, never a changed param
    client = MlflowClient(mlflow_uri)
    study = tracking.study_run(tr, params, "s1")
    assert client.get_run(a).data.tags["mlflow.parentRunId"] == study
    assert client.get_run(b).data.tags["mlflow.parentRunId"] == study
    assert client.get_run(c).data.tags["mlflow.parentRunId"] != study
    assert client.get_run(b).data.params["train.batch"] == "16"
    tags = client.get_run(a).data.tags
    assert tags[tracking.RUN_KEY] == "k1-10" and tags[tracking.SIZE] == "GAT-T1/4"
    assert len(tags[tracking.COMMIT_TAG]) == 40  # the checkout's git commit
    # artifacts land beside the sqlite database, not in the current directory
    (tmp_path / "a.txt").write_text("hi")
    tr.log_artifact(a, tmp_path / "a.txt")
    assert str(tmp_path) in client.get_run(a).info.artifact_uri


def test_a_run_records_the_machine_and_the_packages_that_made_it(mlflow_uri):
    """The same code and data give other numbers on another kind of CPU: every run names
    the CPU, the vector ISA torch's kernels use, the GPU and the package versions."""
    from importlib import metadata

    import torch

    params = _params(mlflow_uri)
    tr = tracking.tracker(params)
    run = tracking.training_run(tr, params, "GAT-T1/4", "k-env", "s", {})
    client = MlflowClient(mlflow_uri)
    tags = client.get_run(run).data.tags
    assert tags["gat.machine.isa"] == torch.backends.cpu.get_cpu_capability()
    assert tags["gat.machine.cpus"] == str(os.cpu_count()) and tags["gat.machine.cpu"]
    assert tags["gat.machine.gpu"] == ("none" if not torch.cuda.is_available()
                                       else torch.cuda.get_device_name(0))
    assert tags["gat.version.torch"] == torch.__version__  # with its build: 2.14.1+cu130
    assert tags["gat.version.numpy"] == metadata.version("numpy")
    assert tags["gat.version.mlflow"] == metadata.version("mlflow")
    path = client.download_artifacts(run, tracking.ENVIRONMENT_ARTIFACT)
    listed = dict(line.split("==") for line in Path(path).read_text().splitlines())
    assert listed["torch"] == metadata.version("torch")
    assert listed["pillow"] == metadata.version("pillow")
    assert len(listed) > 50  # the whole environment, not only the tagged packages
    # a run found again (resumed, another process) keeps what its creation recorded
    assert tracking.training_run(tr, params, "GAT-T1/4", "k-env", "s", {}) == run
    assert [a.path for a in client.list_artifacts(run)] == [tracking.ENVIRONMENT_ARTIFACT]


def test_logging_never_flips_the_status(mlflow_uri):
    params = _params(mlflow_uri)
    tr = tracking.tracker(params)
    run = tracking.training_run(tr, params, "GAT-T1/4", "k-1", "s", {})
    tr.set_status(run, "RUNNING")
    tr.log_metrics(run, {"loss": 1.0, "name": "not a number"}, step=3)
    tr.set_tags(run, {"x": 1})
    client = MlflowClient(mlflow_uri)
    assert client.get_run(run).info.status == "RUNNING"
    assert client.get_run(run).data.metrics == {"loss": 1.0}
    assert tr.last_step(run, "loss") == 3 and tr.last_step(run, "other") == -1
    tr.set_status(run, "FINISHED")
    assert client.get_run(run).info.status == "FINISHED"


def test_queued_rows_are_stored_by_flush_and_nothing_touches_the_cwd(mlflow_uri, tmp_path,
                                                                      monkeypatch):
    """Rows logged without waiting are all stored once flush() returns; flushing opens no
    other store (MLflow's default, ``sqlite:///mlflow.db``, in the working directory)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    params = _params(mlflow_uri)
    tr = tracking.tracker(params)
    run = tracking.training_run(tr, params, "GAT-T1/4", "k-1", "s", {})
    for step in range(1, 41):
        tr.log_metrics(run, {"loss": 1.0 / step, "fd": float(step)}, step=step, wait=False)
    tr.flush()
    client = MlflowClient(mlflow_uri)
    assert [m.step for m in client.get_metric_history(run, "loss")] == list(range(1, 41))
    assert [m.value for m in client.get_metric_history(run, "fd")] == list(range(1, 41))
    assert list(cwd.iterdir()) == []
    tr.flush()  # nothing queued: returns at once


def test_two_studies_in_one_experiment_overwrite_nothing(mlflow_uri):
    a, b = _params(mlflow_uri, "shared"), dataclasses.replace(
        _params(mlflow_uri, "shared"),
        tracking=TrackingParams(uri=mlflow_uri, experiment="shared", study_name="other"))
    tr = tracking.tracker(a)
    run_a = tracking.training_run(tr, a, "GAT-T1/4", "ka-5", "sa", {"train.lr_base": 1e-3})
    run_b = tracking.training_run(tr, b, "GAT-T1/4", "kb-5", "sb", {"train.lr_base": 2e-3})
    client = MlflowClient(mlflow_uri)
    assert client.get_run(run_a).data.params["train.lr_base"] == "0.001"
    assert client.get_run(run_b).data.params["train.lr_base"] == "0.002"
    studies = client.search_runs([tr.experiment_id()], "tags.`gat.role` = 'study'")
    assert {r.data.tags["mlflow.runName"] for r in studies} == {"s sa", "other sb"}


def test_dvc_experiment_name_is_tagged(mlflow_uri, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "tiny-pine")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    params = _params(mlflow_uri)
    tr = tracking.tracker(params)
    run = tracking.training_run(tr, params, "GAT-T1/4", "k-2", "s", {})
    tags = MlflowClient(mlflow_uri).get_run(run).data.tags
    assert tags[tracking.DVC_EXP_TAG] == "tiny-pine"
    assert tags[tracking.COMMIT_TAG] == "a" * 40


@pytest.mark.parametrize("uri, fragment", [
    ("http://127.0.0.1:9", "cannot be reached"),
    ("sqlite:////nonexistent-dir/sub/mlflow.db", "missing or not writable"),
])
def test_unreachable_store_is_refused_with_the_uri(uri, fragment):
    with pytest.raises(tracking.TrackingError) as err:
        tracking.tracker(_params(uri)).check()
    assert uri in str(err.value) and fragment in str(err.value)
    assert "tracking.uri" in str(err.value) and "MLFLOW_TRACKING_URI" in str(err.value)


def test_tracking_uri_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    layout = Layout(tmp_path / "copy", tmp_path / "workspace")
    assert tracking.tracking_uri(Params(), layout) == f"sqlite:///{tmp_path}/workspace/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri(Params(), layout) == "http://127.0.0.1:5000"
    assert tracking.tracking_uri(_params("sqlite:///x.db"), layout) == "sqlite:///x.db"


def test_a_queued_experiment_copy_uses_the_workspace(monkeypatch, tmp_path):
    """DVC runs a queued experiment in a copy and points $DVC_ROOT at the workspace."""
    from pipeline import layout as layout_module

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    found = Layout.from_env()
    assert found.root == layout_module.REPO_ROOT.resolve() and found.workspace == tmp_path
    assert found.mlflow_db == tmp_path / "mlflow.db"
    assert found.checkpoints("GAT-T1/4") == tmp_path / "outputs/checkpoints/GAT-T1/4"


def test_a_study_run_finishes_with_its_last_training_run(mlflow_uri):
    """A DVC target short of `scaling` (`dvc exp run ... evaluate@SIZE-SEED`) never ends
    the study run itself: it is RUNNING while a training run is, FINISHED after the last."""
    params = _params(mlflow_uri, "study-status")
    tr = tracking.tracker(params)
    client = MlflowClient(mlflow_uri)
    a = tracking.training_run(tr, params, "GAT-T1/4", "k1-10", "s1", {})
    b = tracking.training_run(tr, params, "GAT-T2/4", "k2-10", "s1", {})
    study = tracking.study_run(tr, params, "s1")

    def status(run_id: str) -> str:
        return client.get_run(run_id).info.status

    tr.set_status(a, "RUNNING")
    tr.set_status(b, "RUNNING")
    assert status(study) == "RUNNING"
    tr.set_status(a, "FINISHED")
    assert status(study) == "RUNNING"  # b still trains
    tr.set_status(b, "FAILED")
    assert status(study) == "FINISHED" and status(b) == "FAILED"
    tr.set_status(a, "RUNNING")  # a continuation reopens its study
    assert status(study) == "RUNNING"


def test_process_uris_put_back_unset(tmp_path):
    """What Ray Tune's MLflow callback sets process-wide (tracking and registry URIs, their
    variables) is undone: unset stays unset, so a later MLFLOW_TRACKING_URI still decides
    both (a registry left pinned to the sweep's store hid every later registered model)."""
    import mlflow

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {k: os.environ.pop(k, None) for k in names}

    def clean() -> None:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        for k in names:
            os.environ.pop(k, None)

    try:
        clean()
        sweep = f"sqlite:///{tmp_path}/sweep.db"
        with tracking.process_uris_kept():
            mlflow.set_tracking_uri(sweep)  # as MLflowLoggerCallback's setup does
            mlflow.set_registry_uri(sweep)
        assert not any(k in os.environ for k in names)
        later = f"sqlite:///{tmp_path}/later.db"
        os.environ["MLFLOW_TRACKING_URI"] = later
        assert mlflow.get_tracking_uri() == later and mlflow.get_registry_uri() == later
        with tracking.process_uris_kept():  # set by the variable: still the variable's after
            mlflow.set_tracking_uri(sweep)
        os.environ["MLFLOW_TRACKING_URI"] = other = f"sqlite:///{tmp_path}/other.db"
        assert mlflow.get_tracking_uri() == other
        explicit = f"sqlite:///{tmp_path}/registry.db"
        mlflow.set_registry_uri(explicit)
        with tracking.process_uris_kept():
            mlflow.set_registry_uri(sweep)
        assert mlflow.get_registry_uri() == explicit  # a registry set on purpose stays set
    finally:
        clean()
        os.environ.update({k: v for k, v in saved.items() if v is not None})
