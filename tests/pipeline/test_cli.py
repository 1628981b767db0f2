"""The gat command: info (model facts), sample (files, grids, MLflow references)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli import main as gat_main
from pipeline.cli import model_info
from tests.eval_helpers import CLASSES, check_grid_shape


def test_gat_info_json_cli():
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "info", "GAT-S/2", "--json"],
                         capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    assert {"g_params", "d_params", "g_gflops", "lr"} <= set(info)
    assert info["lr"] == pytest.approx(4e-4)
    assert info["g_gflops"] == pytest.approx(6.06, rel=0.02)
    assert info["g_params"] == model_info("GAT-S/2")["g_params"]


def test_gat_info_rejects_unknown_model():
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "info", "GAT-Q/2"],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "GAT-S/2" in out.stderr


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


def test_gat_info_with_a_different_d():
    info = model_info("GAT-T2/4", 4, 16, 10, 8, d_name="GAT-T3/4")
    same = model_info("GAT-T2/4", 4, 16, 10, 8)
    assert info["g_params"] == same["g_params"] and info["d_params"] > same["d_params"]
    assert info["d_lr"] < info["lr"] and "d_name" not in same
