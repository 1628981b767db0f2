#!/usr/bin/env bash
# Set up (idempotent), then rehearse the paper profile's whole pipeline on CPU with its real
# architectures at random init (scripts/rehearse.py --help). Arguments go to rehearse.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DVC_NO_ANALYTICS=1 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
exec .venv/bin/python scripts/rehearse.py "$@"
