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


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


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


def test_references_resolve():
    compose = _compose()
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
    used = set(VAR.findall((DOCKER / "docker-compose.yml").read_text()))
    example = (DOCKER / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z0-9_]+)=", example, flags=re.M))
    missing = used - documented - {"MLFLOW_IMAGE", "MLFLOW_ALLOWED_HOSTS"}
    assert not missing, f"add to docker/.env.example: {sorted(missing)}"
    # The password has no default: compose refuses to start until it is set.
    assert re.search(r"^POSTGRES_PASSWORD=$", example, flags=re.M)
    assert ".env" in (DOCKER / ".gitignore").read_text().split()


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
