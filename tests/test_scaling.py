"""Power-law fit and the scaling stage's refusals."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from pipeline.params import Params, StudyParams
from pipeline.scaling import fit_power_law
from tests.helpers import REPO, dvc_env, write_params


def test_fit_recovers_a_and_b_and_correlation():
    rng = np.random.default_rng(0)
    gflops = np.array([6.06, 23.0, 80.7, 118.6, 1.41, 5.56])
    fd = 30.0 * gflops**-0.35 * np.exp(rng.normal(0, 0.003, len(gflops)))
    law = fit_power_law(gflops, fd, bootstrap=200)
    assert law.a == pytest.approx(30.0, rel=0.02)
    assert law.b == pytest.approx(-0.35, rel=0.02)
    assert law.b_ci[0] <= law.b <= law.b_ci[1]
    # FD falls with compute; r is Pearson's on the raw values, as the paper's -0.95
    expected = np.corrcoef(gflops, 30.0 * gflops**-0.35)[0, 1]
    assert law.pearson_r < 0 and law.pearson_r == pytest.approx(expected, abs=0.01)


def test_fit_needs_three_points():
    with pytest.raises(ValueError, match="at least 3 sizes"):
        fit_power_law([1.0, 2.0], [3.0, 2.0])


def _write_results(root, size: str, gflops: float, fd: float) -> None:
    for stage, data in (("train", {"images_per_s": 10.0}),
                        ("eval", {"fd": fd, "g_gflops": gflops, "g_params": 1, "d_params": 1,
                                  "metric": "FD-classifier"})):
        out = root / "outputs" / stage / size
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(data))


def _run_scaling(root, sizes: list[str]) -> subprocess.CompletedProcess:
    params = dataclasses.replace(
        Params(), study=StudyParams(name="s", sizes=sizes),
        tracking=dataclasses.replace(Params().tracking, uri=f"sqlite:///{root / 'm.db'}"))
    write_params(params, root / "params.yaml")
    env = {**dvc_env(), "GAT_ROOT": str(root), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "stages.scaling"], cwd=REPO, env=env,
                          capture_output=True, text=True)


def test_scaling_names_missing_size_and_refuses_fewer_than_three(tmp_path):
    _write_results(tmp_path, "GAT-T1/4", 0.001, 30.0)
    _write_results(tmp_path, "GAT-T2/4", 0.002, 20.0)
    done = _run_scaling(tmp_path, ["GAT-T1/4", "GAT-T2/4", "GAT-T3/4"])
    assert done.returncode != 0
    assert "at least 3 sizes" in done.stderr and "GAT-T3/4" in done.stderr
    assert not (tmp_path / "outputs" / "scaling" / "metrics.json").exists()


def test_scaling_fits_the_rest_when_one_size_is_missing(tmp_path):
    for i, size in enumerate(["GAT-T1/4", "GAT-T2/4", "GAT-T3/4"]):
        _write_results(tmp_path, size, 0.001 * 2**i, 30.0 * 2 ** (-0.5 * i))
    done = _run_scaling(tmp_path, ["GAT-T1/4", "GAT-T2/4", "GAT-T3/4", "GAT-T4/4"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "left out GAT-T4/4" in done.stderr
    metrics = json.loads((tmp_path / "outputs" / "scaling" / "metrics.json").read_text())
    assert metrics["b"] == pytest.approx(-0.5, rel=1e-6) and metrics["sizes"] == 3
    assert metrics["pearson_r"] < 0 and "GAT-T4/4" in metrics["missing"][0]
    assert (tmp_path / "outputs" / "scaling" / "scaling.png").stat().st_size > 1000
