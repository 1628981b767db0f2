"""The whole study end to end: `bash scripts/repro.sh` (the README's first command, which
runs `dvc repro`) in a temporary copy of the repo, tiny profile.

Real DVC, real Ray, real MLflow: the same command a user runs, at a size that fits CI.
The finished copy is shared (session fixture) by the evaluate, sample and sweep tests.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import FASHION, dvc_env

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not FASHION.exists(), reason="needs dataset-fashion-mnist")]


def test_dvc_repro_tiny_profile(tiny_study):
    work = tiny_study
    table = pd.read_csv(work / "results" / "scaling" / "scaling.csv")
    assert len(table) == 3
    assert (table["g_gflops"] > 0).all() and table["g_gflops"].is_monotonic_increasing
    assert (table["fd"] > 0).all() and (table["metric"] == "FD-classifier").all()
    metrics = json.loads((work / "results" / "scaling" / "metrics.json").read_text())
    assert -1.0 <= metrics["pearson_r"] <= 1.0 and metrics["sizes"] == 3
    assert (work / "results" / "scaling" / "scaling.png").stat().st_size > 1000
    for stand_in in ("tokenizer", "teacher", "classifier", "encode", "floors"):
        assert (work / "results" / "data" / f"{stand_in}.json").exists()
    floors = json.loads((work / "results" / "data" / "floors.json").read_text())
    assert floors["real_fd"] < floors["reconstructed_fd"]  # the tiny tokenizer is poor
    assert metrics["floor_real_fd"] == floors["real_fd"]
    # results/ is what git keeps per experiment: nothing in it is ignored
    ignored = subprocess.run(["git", "check-ignore", "-q", "results/scaling/metrics.json"],
                             cwd=work)
    assert ignored.returncode == 1


def test_evaluate_outputs_and_mlflow(tiny_study):
    work = tiny_study
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("gat-tiny")
    runs = client.search_runs([exp.experiment_id], "tags.`gat.role` = 'train'")
    assert {r.data.tags["gat.size"] for r in runs} == {"GAT-T1/4", "GAT-T2/4", "GAT-T3/4"}
    (study,) = client.search_runs([exp.experiment_id], "tags.`gat.role` = 'study'")
    assert study.info.status == "FINISHED" and "scaling.b" in study.data.metrics
    assert "tokenizer.psnr_db" in study.data.metrics  # the stand-ins' quality beside the fit
    for run in runs:
        size = run.data.tags["gat.size"]
        assert run.data.tags["mlflow.parentRunId"] == study.info.run_id
        assert run.info.status == "FINISHED"
        ev = json.loads((work / "results/eval" / size / "seed0/metrics.json").read_text())
        train = json.loads((work / "results/train" / size / "seed0/metrics.json").read_text())
        assert ev["mlflow_run_id"] == train["mlflow_run_id"] == run.info.run_id
        assert run.data.metrics["FD-classifier"] == pytest.approx(ev["fd"])
        assert {"eval.precision", "eval.recall", "eval.class_accuracy"} <= set(run.data.metrics)
        assert "loss_d" in run.data.metrics  # training logged to the same run
        assert sorted(a.path for a in client.list_artifacts(run.info.run_id, "eval")) == [
            "eval/interpolation.png", "eval/samples.png"]
        assert (work / "outputs/eval" / size / "seed0/samples.png").stat().st_size > 500
        # the size as a diffusers pipeline (a DVC out) and as a registered MLflow model
        assert (work / "outputs/pipeline" / size / "seed0/model_index.json").is_file()
        name = f"gat-tiny-e2e-{size.replace('/', '_')}"
        assert ev["mlflow_model"] == f"models:/{name}/1"
        (version,) = client.search_model_versions(f"name = '{name}'")
        assert version.run_id == run.info.run_id


def test_gat_sample_writes_requested_images(tiny_study, tmp_path):
    work = tiny_study
    gen = work / "outputs" / "train" / "GAT-T1" / "4" / "seed0" / "generator"
    base = [sys.executable, "-m", "pipeline.cli", "sample", "--generator", str(gen),
            "--decoder", str(work / "data" / "tokenizer"), "--cpu"]
    one = [*base, "--classes", "0,3", "--seeds", "1-3", "--out", str(tmp_path / "one")]
    out = subprocess.run(one, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == [f"class{c:04d}_seed{s:06d}.png" for c in (0, 3) for s in (1, 2, 3)]
    many = [*base, "--seeds", "0-4", "--psi", "0.7", "--guidance", "1.5",
            "--out", str(tmp_path / "grid.png")]
    grid = subprocess.run(many, capture_output=True, text=True)
    assert grid.returncode == 0, grid.stderr
    from PIL import Image

    with Image.open(tmp_path / "grid.png") as img:  # 10 classes x 5 seeds of 32 px
        assert img.size == (5 * 33 + 1, 10 * 33 + 1)


def _dvc_json(work, *args: str) -> dict:
    out = subprocess.run(["dvc", *args, "--json"], cwd=work, env=dvc_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_dvc_shows_the_sweep_verdicts_and_trajectories(tiny_study):
    """dvc.yaml's top-level metrics and plots: `dvc metrics show` has the sweep's best lr and
    the claims' verdicts (none in the tiny ladder), `dvc plots show` the FD-vs-compute
    trajectories and the sweep's trials, row for row what the stages wrote."""
    work = tiny_study
    (workspace,) = _dvc_json(work, "metrics", "show").values()  # one revision: the workspace
    metrics = workspace["data"]
    best = json.loads((work / "results/sweep/best.json").read_text())
    assert metrics["results/sweep/best.json"]["data"]["best_lr_base"] == best["best_lr_base"]
    assert "results/report/verdicts.json" in metrics
    assert json.loads((work / "results/report/verdicts.json").read_text()) == {}
    plots = _dvc_json(work, "plots", "show")
    assert not plots.get("errors"), plots.get("errors")
    rows = {name: plots["data"][name][0]["content"]["data"]["values"]
            for name in ("fd_vs_compute", "sweep_fd_vs_lr")}
    trajectories = pd.read_csv(work / "results/scaling/trajectories.csv")
    assert len(trajectories) >= 3 and len(rows["fd_vs_compute"]) == len(trajectories)
    assert sorted(float(r["fd"]) for r in rows["fd_vs_compute"]) == pytest.approx(
        sorted(trajectories["fd"]))
    assert len(rows["sweep_fd_vs_lr"]) == len(pd.read_csv(work / "results/sweep/trials.csv"))


def test_second_repro_is_a_noop(tiny_study):
    """The README's command can be run twice: the second run finds everything up to date."""
    cmd = ["bash", "scripts/repro.sh"] if (tiny_study / ".venv").exists() else ["dvc", "repro"]
    again = subprocess.run(cmd, cwd=tiny_study, env=dvc_env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Running stage" not in again.stdout
