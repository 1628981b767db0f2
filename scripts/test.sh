#!/usr/bin/env bash
# Set up (idempotent), lint, and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DVC_NO_ANALYTICS=1 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
.venv/bin/ruff check .
bash scripts/lint_docker.sh
.venv/bin/python -m pytest -q "$@"
