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
