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
# Ray rewrites 127.0.0.1 (in `_node_ip_address`, in a cluster address) to the machine's
# outward address unless this is 0 when it is imported: then 127.0.0.1 is this machine's
# address, so local Ray really listens on loopback only, and a driver can join the
# loopback-bound multi-node cluster of tests/multinode.py.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


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
    """A copy of the repo where the README's first command, ``bash scripts/repro.sh``, ran
    the tiny profile (once a session), sweep included, with the params keys every stage
    read traced into ``params_trace(work)``.

    The copy's ``.venv`` links to the venv running the tests (set up by scripts/setup.sh, so
    the script's setup step finds it complete), and the venv is not on PATH: the script
    itself must make ``python`` in dvc.yaml's commands the venv's.
    """
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from pipeline.config.trace import TRACE_ENV
    from tests.helpers import FASHION, copy_repo, dvc_env, params_trace

    if not FASHION.exists():
        pytest.skip("needs dataset-fashion-mnist (bash scripts/setup.sh installs it)")
    work = tmp_path_factory.mktemp("study")
    copy_repo(work)
    shutil.copy(work / "profiles" / "tiny.yaml", work / "params.yaml")
    env, venv = dvc_env(), Path(sys.executable).parent
    # Every params key each stage's processes read (tests/stages/test_dvc_declarations.py).
    env[TRACE_ENV] = str(params_trace(work))
    params_trace(work).mkdir()
    marker = venv.parent / ".requirements.installed"
    if marker.exists() and marker.read_text() != (work / "requirements.txt").read_text():
        # setup.sh in the copy would reinstall into this venv, pointing it at the copy
        pytest.fail(f"{venv.parent} was set up for other requirements: run "
                    "`bash scripts/setup.sh`, then the tests again")
    if marker.exists():  # a venv made by setup.sh
        (work / ".venv").symlink_to(venv.parent)
        env["PATH"] = ":".join(d for d in env["PATH"].split(":") if Path(d) != venv)
        commands = [["git", "init", "-q"], ["bash", "scripts/repro.sh"]]
    else:
        commands = [["git", "init", "-q"], ["dvc", "init", "-q", "-f"], ["dvc", "repro"]]
    for cmd in commands:
        result = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"{cmd}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
    return work


@pytest.fixture(scope="session")
def parts(tmp_path_factory):
    """A generator (2 real training steps), a tokenizer and a classifier directory, tiny,
    saved as their stages save them (tests/eval_helpers.py), built once a session."""
    from tests.eval_helpers import save_classifier_dir, save_generator_dir, save_tokenizer_dir

    root = tmp_path_factory.mktemp("parts")
    return {"generator": save_generator_dir(root / "generator"),
            "tokenizer": save_tokenizer_dir(root / "tokenizer"),
            "classifier": save_classifier_dir(root / "classifier")}
