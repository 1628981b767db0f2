#!/usr/bin/env bash
# Set up (idempotent) and run the whole scaling study with DVC.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DVC_NO_ANALYTICS=1 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
[ -d .dvc ] || .venv/bin/dvc init -q
.venv/bin/dvc repro "$@"
