#!/usr/bin/env bash
# Set up (idempotent) and run the whole scaling study with DVC.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DVC_NO_ANALYTICS=1 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
# dvc.yaml runs every stage as `python -m stages.NAME`: that python must be the venv's.
# shellcheck disable=SC1091
source .venv/bin/activate
[ -d .dvc ] || dvc init -q
dvc repro "$@"
