"""Experiments as DVC users run them, on a copy of the tiny study (real DVC, Ray, MLflow).

- `dvc exp run -S key=value` for any key; the changed configuration is a new MLflow run;
- queued experiments run in DVC's temporary copies and log to the workspace's MLflow store;
- what cannot change a result (runtime and tracking params, plumbing code) retriggers
  nothing, and a rerun DVC asks for that cannot change the result re-emits it unchanged;
- experiments keep their metrics and plots (`dvc exp show`, `dvc plots diff`).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests import lane
from tests.helpers import FASHION, copy_study, dvc_env
from tests.lane import lane_test

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not FASHION.exists(), reason="needs dataset-fashion-mnist")]
SIZE = "GAT-T1/4"
STAGE = f"train@{SIZE}-0"  # DVC names matrix stages by their values: size, seed


def _run(work: Path, *cmd: str, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(list(cmd), cwd=work, env=dvc_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{cmd}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def study(tiny_study, tmp_path_factory) -> Path:
    return _committed_copy(tiny_study, tmp_path_factory.mktemp("experiments") / "study")


def _committed_copy(tiny_study: Path, work: Path) -> Path:
    copy_study(tiny_study, work)
    _run(work, "git", "add", "-A")
    _run(work, "git", "commit", "-q", "-m", "the tiny study")  # dvc.lock and results/
    return work


def _train_runs(work: Path) -> list:
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("gat-tiny")
    return client.search_runs([exp.experiment_id],
                              f"tags.`gat.role` = 'train' and tags.`gat.size` = '{SIZE}'")


def _generator_hash(work: Path, stage: str) -> str:
    outs = yaml.safe_load((work / "dvc.lock").read_text())["stages"][stage]["outs"]
    return next(o["md5"] for o in outs if o["path"].endswith("/generator"))


def test_what_cannot_change_a_result_retriggers_nothing(study):
    try:
        _retriggers_nothing(study)
    finally:  # the other tests of this module share the study: leave it as it was
        _run(study, "git", "checkout", "--", ".")
    assert "up to date" in _run(study, "dvc", "status").stdout


def _retriggers_nothing(study) -> None:
    params = yaml.safe_load((study / "params.yaml").read_text())
    params["runtime"].update(log_every=7, checkpoint_every=5, max_failures=3)
    params["tracking"]["study_name"] = "renamed"
    (study / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for plumbing in ("pipeline/tracking.py", "pipeline/config/schema.py", "pipeline/stage.py"):
        with open(study / plumbing, "a") as f:
            f.write("# edited\n")
    assert "up to date" in _run(study, "dvc", "status").stdout

    # A module train@ imports but its run key does not hash (the FD proxy's evaluation):
    # DVC reruns the stage; the run is finished, so its final checkpoint is published
    # again (no Ray workers): the same generator and the training's own metrics.
    with open(study / "pipeline/evaluation.py", "a") as f:
        f.write("# edited\n")
    assert STAGE in _run(study, "dvc", "status").stdout
    before = _generator_hash(study, STAGE)
    metrics_path = study / "results/train" / SIZE / "seed0/metrics.json"
    trained = json.loads(metrics_path.read_text())
    done = _run(study, "dvc", "repro", "--single-item", STAGE)
    assert "training nothing" in done.stdout
    assert json.loads(metrics_path.read_text()) == trained
    assert _generator_hash(study, STAGE) == before  # the generator, byte for byte


def test_exp_run_with_a_changed_param_is_a_new_mlflow_run(study):
    done = _run(study, "dvc", "exp", "run", "-S", "train.iterations=24", STAGE)
    name = done.stdout.split("Ran experiment(s): ")[1].split()[0]
    runs = {r.data.params["train.iterations"]: r for r in _train_runs(study)}
    assert set(runs) == {"12", "24"}  # one run per configuration, none changed
    new, base = runs["24"], runs["12"]
    assert new.data.tags["dvc.exp_name"] == name and "dvc.exp_name" not in base.data.tags
    assert new.data.tags["gat.continued_from"] == base.data.tags["gat.run_key"]
    metrics = json.loads((study / "results/train" / SIZE / "seed0/metrics.json").read_text())
    assert metrics["mlflow_run_id"] == new.info.run_id
    assert metrics["steps"] == 24 and metrics["steps_this_run"] == 12  # continued, not redone
    history = MlflowClient(f"sqlite:///{study / 'mlflow.db'}").get_metric_history(
        new.info.run_id, "loss_d")
    assert sorted(m.step for m in history) == list(range(3, 25, 3))  # each step once
    # dvc exp show: the experiment and its baseline, each with its own run key
    shown = _run(study, "dvc", "exp", "show", "--json").stdout
    assert name in shown and metrics["run_key"] in shown and base.data.tags["gat.run_key"] in shown


@lane_test(needs_study=True)  # subprocesses only: it runs beside the others (tests/lane.py)
def test_queued_experiments_log_to_the_workspace_store(tmp_path):
    study = _committed_copy(lane.tiny_study(), tmp_path / "study")  # a copy of its own
    for lr in ("0.002", "0.008"):
        _run(study, "dvc", "exp", "run", "--queue", "-S", f"train.lr_base={lr}", STAGE)
    _run(study, "dvc", "queue", "start")
    deadline = time.time() + 600
    while time.time() < deadline:
        status = _run(study, "dvc", "queue", "status").stdout
        if not any(word in status for word in ("Queued", "Running")):
            break
        time.sleep(3)
    assert status.count("Success") == 2, status
    names = [line.split()[1] for line in status.splitlines() if "Success" in line]
    runs = {r.data.params["train.lr_base"]: r for r in _train_runs(study)}
    assert {"0.002", "0.008"} <= set(runs)  # in the workspace's store, not the copies'
    assert {runs[lr].data.tags["dvc.exp_name"] for lr in ("0.002", "0.008")} == set(names)
    assert not list((study / ".dvc" / "tmp").rglob("mlflow.db"))
    keys = {runs[lr].data.tags["gat.run_key"] for lr in ("0.002", "0.008")}
    assert keys <= {p.name for p in (study / "outputs/checkpoints" / SIZE).iterdir()}
    # each experiment's plots are kept: dvc plots diff compares them
    plots = json.loads(_run(study, "dvc", "plots", "diff", *names, "--json").stdout)["data"]
    assert set(plots["fd_vs_gflops"][0]["revisions"]) == set(names)
    log = plots[f"results/train/{SIZE}/seed0/log.csv"][0]
    assert set(log["revisions"]) == set(names)
