"""docker/: lint (hadolint, compose-spec schema) and the properties the README promises.

No Docker engine is needed: the lint runs scripts/lint_docker.sh when its tools are
installed, and the structural checks read the files.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
VENV_BIN = REPO / ".venv" / "bin"
VAR = re.compile(r"(?<!\$)\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")


def _tool(name: str) -> bool:
    return (VENV_BIN / name).exists() or shutil.which(name) is not None


COMPOSE_FILES = ("docker-compose.yml", "docker-compose.multihost.yml")


def _compose(name: str = "docker-compose.yml") -> dict[str, Any]:
    return yaml.safe_load((DOCKER / name).read_text())


def _defaults(text: str) -> str:
    """Interpolate ``${VAR:-default}`` with its default, ``${VAR:?msg}`` with ``VAR``."""
    text = re.sub(r"\$\{([A-Z0-9_]+):-([^}]*)\}", r"\2", text)
    return re.sub(r"\$\{([A-Z0-9_]+):\?[^}]*\}", r"\1", text)


@pytest.mark.skipif(not (_tool("hadolint") and _tool("check-jsonschema")),
                    reason="lint tools missing: bash scripts/lint_docker.sh installs them")
def test_lint_docker_passes():
    result = subprocess.run(["bash", "scripts/lint_docker.sh"], cwd=REPO, capture_output=True,
                            text=True, timeout=300,
                            env={**os.environ, "LINT_DOCKER_NO_INSTALL": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok -- validation done" in result.stdout


def test_published_ports_are_loopback_by_default():
    services = _compose()["services"]
    published = [(name, port) for name, svc in services.items() for port in svc.get("ports", [])]
    assert {name for name, _ in published} == {"mlflow", "ray-head"}
    for name, port in published:
        assert _defaults(str(port)).startswith("127.0.0.1:"), (name, port)
    assert "postgres" not in {name for name, _ in published}  # the database stays internal


def test_mlflow_server_uses_postgres_and_serves_artifacts_from_a_volume():
    compose = _compose()
    mlflow = compose["services"]["mlflow"]
    command = " ".join(mlflow["command"])
    assert "--serve-artifacts" in command and "--artifacts-destination /mlartifacts" in command
    assert _defaults(mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"]).startswith(
        "postgresql://")
    assert "mlflow-artifacts:/mlartifacts" in mlflow["volumes"]
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert {"mlflow-db", "mlflow-artifacts"} <= set(compose["volumes"])
    # The Ray nodes reach it by service name, which the Host-header guard must accept.
    assert "mlflow:*" in _defaults(mlflow["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"])


def test_ray_head_and_gpu_workers():
    services = _compose()["services"]
    head, worker = services["ray-head"], services["ray-worker"]
    assert "--head" in head["command"] and "--num-gpus=0" in head["command"]
    assert "--address=ray-head:6379" in worker["command"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    for node in (head, worker):
        assert node["environment"]["RAY_ADDRESS"] == "ray-head:6379"
        assert node["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert "..:/workspace" in node["volumes"]  # same checkout path on every node


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_references_resolve(name):
    compose = _compose(name)
    services = compose["services"]
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for env_file in svc.get("env_file", []):
            assert (DOCKER / env_file).is_file(), env_file
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/", "$")):
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
        build = svc.get("build")
        if build:
            context = (DOCKER / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file()


def test_env_example_documents_every_variable():
    used = {v for name in COMPOSE_FILES for v in VAR.findall((DOCKER / name).read_text())}
    example = (DOCKER / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z0-9_]+)=", example, flags=re.M))
    missing = used - documented - {"MLFLOW_IMAGE", "MLFLOW_ALLOWED_HOSTS"}
    assert not missing, f"add to docker/.env.example: {sorted(missing)}"
    # The password has no default: compose refuses to start until it is set.
    assert re.search(r"^POSTGRES_PASSWORD=$", example, flags=re.M)
    assert ".env" in (DOCKER / ".gitignore").read_text().split()


def test_multihost_addresses_reach_across_hosts():
    """Several hosts: nothing on loopback or a compose-only name, a GPU-less head, one
    worker container per host with its GPUs, Ray's token auth on."""
    services = _compose("docker-compose.multihost.yml")["services"]
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("${HEAD_IP:?"), (name, port)  # required, no default
    head, worker = services["ray-head"], services["ray-worker"]
    assert services["mlflow"]["profiles"] == ["head"] and worker["profiles"] == ["worker"]
    assert "--num-gpus=0" in head["command"]
    assert any(a.startswith("--address=${HEAD_IP:?") for a in worker["command"])
    for node in (head, worker):
        env = node["environment"]
        assert env["RAY_ADDRESS"].startswith("${HEAD_IP:?")
        assert env["MLFLOW_TRACKING_URI"].startswith("http://${HEAD_IP:?")
        assert env["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN:?" in env["RAY_AUTH_TOKEN"]
        assert node["network_mode"] == "host"
        assert any(a.startswith("--node-ip-address=${") for a in node["command"])
        assert node["volumes"][0].startswith("${GAT_CHECKOUT:?")  # a shared path, required
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["count"] == "all" and "replicas" not in worker["deploy"]


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_the_driver_runs_on_a_gpu_node(name):
    """The documented `dvc repro` runs in a worker container: the head has no GPU."""
    text = (DOCKER / name).read_text()
    assert re.search(r"exec ray-worker dvc repro", text) and "exec ray-head" not in text
    readme = (DOCKER / "README.md").read_text()
    assert "exec ray-worker dvc repro" in readme and "exec ray-head dvc" not in readme


def test_dockerfile_cuda_python311_pinned_stack_non_root():
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+", text, flags=re.M)
    assert "python3.11" in text
    assert "pip install -r /src/requirements.txt" in text
    users = re.findall(r"^USER (\S+)", text, flags=re.M)
    assert users and users[-1] not in ("root", "0", "0:0")
    for line in re.findall(r"^COPY (?!--from)(?:--\S+ )*(.+)$", text, flags=re.M):
        *sources, _dest = line.split()
        for source in sources:
            assert (REPO / source).exists(), f"COPY source {source} missing from the context"
    ignored = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", "data", "outputs", "mlflow.db"} <= set(ignored)
