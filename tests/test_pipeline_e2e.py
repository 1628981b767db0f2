"""The whole study end to end: `dvc repro` in a temporary copy of the repo, tiny profile.

Real DVC, real Ray, real MLflow: the same commands a user runs, at a size that fits CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")


def _copy_repo(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.exists(), reason="needs dataset-fashion-mnist (scripts/setup.sh)")
def test_dvc_repro_tiny_profile(tmp_path):
    work = tmp_path / "repo"
    _copy_repo(work)
    shutil.copy(work / "profiles" / "tiny.yaml", work / "params.yaml")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "MLFLOW_TRACKING_URI": "",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)

    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q", "-f"]):
        assert run(*cmd).returncode == 0
    result = run("dvc", "repro")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    table = pd.read_csv(work / "outputs" / "scaling" / "scaling.csv")
    assert len(table) >= 3
    assert (table["g_gflops"] > 0).all() and table["g_gflops"].is_monotonic_increasing
    metrics = json.loads((work / "outputs" / "scaling" / "metrics.json").read_text())
    assert -1.0 <= metrics["pearson_r"] <= 1.0
    assert (work / "outputs" / "scaling" / "scaling.png").stat().st_size > 1000
    assert (work / "mlflow.db").exists()

    # Nothing changed: a second repro runs no stage.
    again = run("dvc", "repro")
    assert again.returncode == 0 and "Running stage" not in again.stdout
