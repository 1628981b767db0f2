"""Shared fixtures: one real Ray cluster per test session, real MLflow sqlite stores."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ray_cluster():
    """A local 2-CPU Ray cluster bound to 127.0.0.1, shared by the whole session."""
    import ray

    from pipeline.ray_utils import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture
def mlflow_uri(tmp_path) -> str:
    """A fresh MLflow sqlite store for one test."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """A copy of the repo where `dvc repro` of profiles/tiny.yaml has run (once a session)."""
    import shutil
    import subprocess

    from tests.helpers import FASHION, copy_repo, dvc_env

    if not FASHION.exists():
        pytest.skip("needs dataset-fashion-mnist (bash scripts/setup.sh installs it)")
    work = tmp_path_factory.mktemp("study")
    copy_repo(work)
    shutil.copy(work / "profiles" / "tiny.yaml", work / "params.yaml")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q", "-f"], ["dvc", "repro"]):
        result = subprocess.run(cmd, cwd=work, env=dvc_env(), capture_output=True, text=True)
        assert result.returncode == 0, f"{cmd}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
    return work
