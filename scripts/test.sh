#!/usr/bin/env bash
# Set up (idempotent), lint, run the test suite, then the docs check: every runnable block
# of README.md and docs/*.md, on a tiny study built for it (tests/docs_check.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DVC_NO_ANALYTICS=1 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
.venv/bin/ruff check .
bash scripts/lint_docker.sh
.venv/bin/python -m pytest -q "$@"
if [ "$#" -eq 0 ]; then  # the whole suite: then the docs (not after a pytest selection)
    docs_study="$(mktemp -d)"
    trap 'rm -rf "$docs_study"' EXIT
    .venv/bin/python -m tests.docs_check --build "$docs_study"
fi
