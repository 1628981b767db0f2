"""Every claim of the paper as a DVC target, and the report, on the tiny study: each claim
trains its variants through the train stage's code, evaluates them, judges, and plots."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline import claims as cl
from pipeline.config import load_params
from pipeline.config.trace import read_traces
from tests import declarations as decl
from tests import lane
from tests.helpers import FASHION, copy_study, dvc_env
from tests.lane import lane_test

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not FASHION.exists(), reason="needs dataset-fashion-mnist")]
VERDICTS = {cl.HOLDS, cl.REVERSED, cl.OVERLAP, cl.HOLDS_ZERO, cl.ONE_SEED}


@pytest.fixture(scope="module")
def study(claims_study):
    """The tiny study with every claim switched on, `dvc repro report` run, params traced
    (built in the background: tests/conftest.py)."""
    return claims_study


def test_every_claim_trains_evaluates_and_judges(study):
    work, _, _ = study
    params = load_params(work / "params.yaml")
    for name, claim in cl.claims(params).items():
        out = work / "results" / "claims" / name
        summary = json.loads((out / "summary.json").read_text())
        runs = pd.read_csv(out / "runs.csv")
        assert len(runs) == len(claim.variants) * len(params.claims.seeds)
        assert summary["metric"] == "FD-classifier"
        assert [v["variant"] for v in summary["variants"]] == [v.name for v in claim.variants]
        for comparison in summary["comparisons"]:
            assert comparison["verdict"] in VERDICTS
        assert summary["verdict"] in VERDICTS | {cl.CONTRADICTED} or summary[
            "verdict"].startswith(("contradicted (", "inconclusive ("))
        assert (out / f"{name}.png").stat().st_size > 1000
    mng = pd.read_csv(work / "results/claims/mng/runs.csv")
    assert (mng["fd"] > 0).all() and mng["run_key"].nunique() == 4


def test_identical_configurations_train_once(study):
    """The claims' shared baseline (and the ladder's own run at that size) is one run."""
    work, _, _ = study
    keys = pd.concat([pd.read_csv(p) for p in (work / "results/claims").glob("*/runs.csv")])
    base = keys[(keys["claim"] == "mng") & (keys["variant"] == "exp")]["run_key"].iloc[0]
    shared = keys[keys["run_key"] == base]
    assert set(shared["claim"]) == {"mng", "repa", "lr_transfer", "g_vs_d", "patch"}
    ladder = json.loads((work / "results/train/GAT-T1/4/seed0/metrics.json").read_text())
    assert ladder["run_key"] == base  # claims.iterations = train.iterations in the tiny study
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("gat-tiny").experiment_id],
                              f"tags.`gat.run_key` = '{base}'")
    assert len(runs) == 1 and "FD-classifier" in runs[0].data.metrics


def test_d_and_g_sizes_differ_where_the_claim_says(study):
    work, _, _ = study
    runs = pd.read_csv(work / "results/claims/g_vs_d/runs.csv").set_index("variant")
    assert tuple(runs.loc["bigger_d", ["size", "d_size"]]) == ("GAT-T1/4", "GAT-T2/4")
    assert tuple(runs.loc["bigger_g", ["size", "d_size"]]) == ("GAT-T2/4", "GAT-T1/4")


def test_report_holds_every_claim(study):
    work, _, _ = study
    report = (work / "results/report/report.md").read_text()
    for figure in ("Fig. 3c", "Fig. 21", "Fig. 5a", "Fig. 5b", "Fig. 5c", "Fig. 7a", "Fig. 3b"):
        assert figure in report
    assert "not FID" in report and "56.72" in report  # the paper's Tab. 4 number, beside ours
    assert (work / "results/report/mng.png").exists()
    # the verdicts as a DVC metric (dvc.yaml's top level): what each summary.json says
    verdicts = json.loads((work / "results/report/verdicts.json").read_text())
    for name in cl.claims(load_params(work / "params.yaml")):
        summary = json.loads((work / "results/claims" / name / "summary.json").read_text())
        assert verdicts[name]["verdict"] == summary["verdict"]
        assert {f"{c['better']} < {c['worse']}" for c in summary["comparisons"]} == (
            set(verdicts[name]) - {"verdict"})


def test_claim_stages_declare_what_they_read(study):
    work, trace, _ = study
    params = yaml.safe_load((work / "params.yaml").read_text())
    stages = decl.stages(work / "dvc.yaml", params)
    reads = read_traces(trace)
    claims = [f"claim@{c}" for c in cl.CLAIMS]
    for name in [*claims, "report"]:
        assert not decl.undeclared_keys(stages[name], reads[name], params), name
        assert not decl.undeclared_code(stages[name]) and not decl.unused_code_deps(stages[name])
    # One declaration serves every claim@ (a foreach): exact for what they read together
    # (only mng reads the teacher, for its block analyses).
    together = set().union(*(reads[name] for name in claims))
    assert not decl.unread_keys(stages["claim@mng"], together, params)
    assert not decl.unread_keys(stages["report"], reads["report"], params)
    assert (work / "results/claims/mng/analysis/contributions.png").exists()


@lane_test(needs_claims=True)  # subprocesses only: it runs in the lane (tests/lane.py)
def test_runs_side_by_side_train_once_and_as_alone(tmp_path):
    """The tiny profile trains a claim's runs two at a time (runtime.concurrent_runs: 2):
    they overlap in time. Four variants that coincide (lr transfer with small = large) and
    whose run is gone train once, and give the row the ladder's run gave."""
    work, _, _ = lane.claims_study()
    mng = pd.read_csv(work / "results/claims/mng/runs.csv").set_index("variant")
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    lin, none = (client.get_run(mng.loc[v, "mlflow_run_id"]).info for v in ("lin", "none"))
    assert max(lin.start_time, none.start_time) < min(lin.end_time, none.end_time)

    copy = tmp_path / "study"
    copy_study(work, copy)
    base = mng.loc["exp"]
    shutil.rmtree(copy / "outputs/checkpoints" / base["size"] / base["run_key"])
    params = yaml.safe_load((copy / "params.yaml").read_text())
    assert params["runtime"]["concurrent_runs"] == 2
    params["claims"]["large"] = params["claims"]["small"] = base["size"]
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    done = subprocess.run([sys.executable, "-m", "stages.claim", "lr_transfer"], cwd=copy,
                          env=dvc_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(f"training {base['size']} seed 0") == 1, done.stdout
    rows = pd.read_csv(copy / "results/claims/lr_transfer/runs.csv")
    assert (rows["run_key"] == base["run_key"]).all() and len(rows) == 4
    for column in ("fd", "precision", "recall", "class_accuracy", "mlflow_run_id"):
        assert (rows[column] == base[column]).all(), column  # to the bit
