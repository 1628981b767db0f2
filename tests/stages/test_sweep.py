"""Ray Tune sweep of lr_base on the tiny study: ASHA, MLflow per trial, best lr written,
the transfer check, and restore after SIGKILL. The tiny study's `dvc repro` ran the sweep
(its profile enables it); these tests check what it left and rerun it."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from gat.models import model_config
from pipeline.config import load_params
from tests import lane
from tests.helpers import FASHION, REPO, dvc_env, write_params
from tests.lane import lane_test

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not FASHION.exists(), reason="needs dataset-fashion-mnist")
def test_sweep_three_trials_asha_mlflow_and_transfer(tiny_study):
    root, params = tiny_study, load_params(tiny_study / "params.yaml")
    out = root / "results" / "sweep"
    best = json.loads((out / "best.json").read_text())
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == params.sweep.num_trials == best["trials"] == 3
    assert trials["stopped_early"].sum() >= 1, trials
    assert best["best_lr_base"] in set(trials["lr_base"])
    assert best["metric"] == f"FD-classifier-{params.runtime.fd_samples}"
    assert (out / "lr_vs_fd.png").stat().st_size > 1000
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name(params.tracking.experiment)
    sweep_runs = {r.data.tags["gat.run_key"]: r for r in client.search_runs(
        [exp.experiment_id], "tags.`gat.role` = 'sweep' and tags.`gat.size` = 'GAT-T1/4'")}
    sweep_run = next(r for r in sweep_runs.values() if "best_lr_base" in r.data.metrics)
    assert sweep_run.info.run_name.startswith("lr-sweep GAT-T1/4")  # named apart from sizes
    assert sweep_run.data.metrics["best_lr_base"] == pytest.approx(best["best_lr_base"])
    runs = client.search_runs([exp.experiment_id], "tags.`gat.role` = 'trial' and "
                              f"tags.`mlflow.parentRunId` = '{sweep_run.info.run_id}'")
    assert sorted(float(r.data.params["lr_base"]) for r in runs) == pytest.approx(
        sorted(trials["lr_base"]))
    assert all("fd" in r.data.metrics for r in runs)
    transfer_runs = client.search_runs([exp.experiment_id], "tags.`gat.role` = 'trial' and "
                                       f"tags.`gat.size` = '{params.sweep.transfer_size}'")
    assert len(transfer_runs) == 3 + 2  # its own sweep; the rule's lr and the small one's

    # Fig. 5b both ways: the large size with the rule, at the small size's lr, with its own
    # sweep's best; the small size with its own best and at the large size's lr.
    small, large = params.sweep.size, params.sweep.transfer_size
    transfer = pd.read_csv(out / "transfer.csv").set_index(["size", "how"])
    assert list(transfer.index) == [
        (large, "width-aware rule"), (large, f"at {small}'s lr"), (large, "own sweep's best"),
        (small, "own sweep's best"), (small, f"at {large}'s lr")]
    lr = transfer["lr"]
    assert lr[(large, "width-aware rule")] == pytest.approx(
        best["best_lr_base"] * params.train.c_base / model_config(large).width)
    assert lr[(large, f"at {small}'s lr")] == pytest.approx(lr[(small, "own sweep's best")])
    assert lr[(small, f"at {large}'s lr")] == pytest.approx(lr[(large, "width-aware rule")])
    assert transfer["fd"].notna().all(), transfer
    assert (out / "transfer.png").stat().st_size > 1000
    # Tune's experiments live in the workspace's state, not in results/ (git) or DVC's cache.
    assert len(list((root / "outputs" / "tune").glob("lr_sweep-*"))) == 4
    # ASHA stopped trials at a report (above): the checkpoint folder such a report leaves
    # behind is the trial's own, and the sweep removed it (Tune keeps its copy).
    assert not list((root / "outputs" / "tune").glob("*/trials/*/report-checkpoint"))

    # The same command again restores the finished Tune experiments: no trial reruns.
    again = subprocess.run([sys.executable, "-m", "stages.sweep"], cwd=root, env=dvc_env(),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "restoring the Tune experiment" in again.stdout
    assert json.loads((out / "best.json").read_text()) == best
    assert len(client.search_runs([exp.experiment_id], "tags.`gat.role` = 'trial'")) == 9


def _sweep_root(tiny_study: Path, root: Path):
    """A root with the tiny study's data and a params.yaml for its sweep, without transfer."""
    shutil.copytree(tiny_study / "data", root / "data")
    params = load_params(tiny_study / "params.yaml")
    params = dataclasses.replace(
        params,
        tracking=dataclasses.replace(params.tracking, uri=f"sqlite:///{root / 'mlflow.db'}"),
        sweep=dataclasses.replace(params.sweep, transfer=False))
    write_params(params, root / "params.yaml")
    env = {**dvc_env(), "GAT_ROOT": str(root), "PYTHONPATH": str(REPO)}
    return params, env


@pytest.mark.skipif(not FASHION.exists(), reason="needs dataset-fashion-mnist")
@lane_test(needs_study=True)  # subprocesses only: it runs beside the others (tests/lane.py)
def test_sweep_killed_then_same_command_restores(tmp_path):
    """SIGKILL the sweep while its second trial trains; the same command restores the Tune
    experiment and every trial ends (in MLflow and trials.csv). Trials that ASHA ends at a
    report (stopped, or at its max_t) leave no checkpoint folder behind (before: one in
    the temp dir per such report)."""
    root = tmp_path / "root"
    params, env = _sweep_root(lane.tiny_study(), root)
    # a temp dir of this test's own (short: Ray's sockets live under it too)
    env["TMPDIR"] = tempfile.mkdtemp(prefix="gs", dir="/tmp")
    try:
        _kill_then_restore(root, params, env)
    finally:  # also when an assertion fails on the way
        shutil.rmtree(env["TMPDIR"], ignore_errors=True)


def _kill_then_restore(root: Path, params, env: dict[str, str]) -> None:
    cmd = [sys.executable, "-m", "stages.sweep"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    trials = root / "outputs" / "tune"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(trials.glob("*/trials/*/log.csv"))) < 2:
        time.sleep(0.5)
    assert len(list(trials.glob("*/trials/*/log.csv"))) >= 2, "the second trial never started"
    os.killpg(proc.pid, signal.SIGKILL)  # the stage, Ray's processes and the trial actors
    proc.wait()
    assert not (root / "results" / "sweep" / "best.json").exists()
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "restoring the Tune experiment" in again.stdout
    table = pd.read_csv(root / "results" / "sweep" / "trials.csv")
    assert len(table) == 3 and (table["error"].isna() | (table["error"] == "")).all()
    best = json.loads((root / "results" / "sweep" / "best.json").read_text())
    assert best["best_lr_base"] in set(table["lr_base"])
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name(params.tracking.experiment)
    finished = {float(r.data.params["lr_base"]) for r in client.search_runs(
        [exp.experiment_id], "tags.`gat.role` = 'trial' and attributes.status = 'FINISHED'")}
    assert finished == set(table["lr_base"])
    left = [p.name for p in Path(env["TMPDIR"]).glob("gat-*")]
    left += [str(p) for p in (root / "outputs" / "tune").glob("*/trials/*/report-checkpoint")]
    assert not left, f"checkpoint folders left behind by stopped trials: {left}"
