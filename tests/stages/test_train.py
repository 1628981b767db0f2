"""The train stage as DVC runs it: SIGKILLed, the same command resumes, every step logged
once (log.csv and MLflow)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import psutil
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import REPO, dvc_env, synthetic_root, tiny_params, write_params
from tests.lane import lane_test

pytestmark = pytest.mark.slow


@pytest.fixture
def root(tmp_path_factory):
    return synthetic_root(tmp_path_factory.mktemp("root"))


@lane_test()  # subprocesses only: it runs beside the other tests (tests/lane.py)
def test_sigkill_then_same_command_resumes(tmp_path):
    root = synthetic_root(tmp_path / "root")
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = tiny_params(tmp_path, mlflow_uri, workers=1, batch=8, iterations=40,
                         checkpoint_every=10, log_every=5, fd_every=0, loader_workers=0,
                         shuffle_buffer=8, sample_every=0)
    write_params(params, root / "params.yaml")
    # dvc_env: not os.environ as it is now: the lane runs beside tests that set
    # $RAY_ADDRESS (the multi-node cluster) or MLflow's variables for a while
    env = {**dvc_env(), "GAT_ROOT": str(root), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "stages.train", "GAT-T2/4"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    # Wait until Ray has registered a checkpoint (its manager's snapshot names it): a
    # checkpoint_* folder alone may still be in flight, and a kill then rightly restarts.
    registered = "outputs/checkpoints/GAT-T2/4/*/checkpoint_manager_snapshot.json"
    deadline = time.time() + 360  # a bound, not a speed: a loaded machine once took > 180 s
    while time.time() < deadline and not list(root.glob(registered)):
        time.sleep(0.5)
    assert list(root.glob(registered)), "no registered checkpoint within 360 s"
    # SIGKILL the stage and everything it started (Ray's GCS, raylet and train workers).
    family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    for pid in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    out = root / "results" / "train" / "GAT-T2" / "4" / "seed0"
    assert not (out / "metrics.json").exists()
    run_dir = next(root.glob(registered)).parent
    killed_at = pd.read_csv(run_dir / "log.csv")["step"].max()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    log = pd.read_csv(out / "log.csv")
    steps = list(log["step"])
    assert steps == sorted(set(steps)) and steps[-1] == 40  # no step twice, none missing
    assert steps == list(range(5, 45, 5))
    assert killed_at >= 10
    metrics = json.loads((out / "metrics.json").read_text())
    generator = root / "outputs" / "train" / "GAT-T2" / "4" / "seed0" / "generator"
    assert metrics["steps"] == 40 and (generator / "config.json").exists()
    # Resumed, not restarted: the rerun trained only the steps after its checkpoint (the
    # workers' "resumed from checkpoint" line may not reach the driver before it exits).
    resumed_at = 40 - metrics["steps_this_run"]
    assert 10 <= resumed_at <= killed_at
    assert log["loss_d"].notna().all()
    # MLflow holds every logged step exactly once, across the kill and the resume.
    history = MlflowClient(params.tracking.uri).get_metric_history(metrics["mlflow_run_id"],
                                                                   "loss_d")
    assert sorted(m.step for m in history) == list(range(5, 45, 5))
    # The same command once more: the run is complete, so its final checkpoint is published
    # as it was (no Ray workers), and MLflow gets nothing twice.
    (out / "metrics.json").unlink()
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "training nothing" in again.stdout, again.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text()) == metrics
    client = MlflowClient(params.tracking.uri)
    assert len(client.get_metric_history(metrics["mlflow_run_id"], "train_wall_s")) == 1
    assert client.get_run(metrics["mlflow_run_id"]).info.status == "FINISHED"


def test_unreachable_mlflow_store_stops_before_the_first_step(tmp_path):
    """A store that cannot be reached is named, with how to set it, before Ray starts."""
    root = synthetic_root(tmp_path / "root")
    params = tiny_params(tmp_path, "http://127.0.0.1:9")  # nothing listens on port 9
    write_params(params, root / "params.yaml")
    env = {**os.environ, "GAT_ROOT": str(root), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "stages.train", "GAT-T1/4"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "http://127.0.0.1:9" in done.stderr and "cannot be reached" in done.stderr
    assert "tracking.uri" in done.stderr and "MLFLOW_TRACKING_URI" in done.stderr
    assert not list(root.glob("outputs/checkpoints/*/*/*/checkpoint_*"))  # no step trained
