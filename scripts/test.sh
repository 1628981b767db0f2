#!/usr/bin/env bash
# Set up (idempotent), lint, run the test suite; then (without arguments) the docs check:
# every runnable block of README.md and docs/*.md on a tiny study built for it
# (tests/docs_check.py), and that build compared with the suite's own (tests/study_diff.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DVC_NO_ANALYTICS=1 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
.venv/bin/ruff check .
bash scripts/lint_docker.sh
if [ "$#" -gt 0 ]; then
    exec .venv/bin/python -m pytest -q "$@"
fi
# The whole suite, then the docs check on the same study built a second time, and the two
# builds compared (tests/study_diff.py). The paper profile's rehearsal (scripts/rehearse.sh,
# about 10 min on 2 cores) is CI's next step (.ci/run), not part of this command.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
GAT_STUDY_RECORD="$scratch/pytest-study" .venv/bin/python -m pytest -q
# one torch thread, as the suite's build: bitwise identity holds per thread count
OMP_NUM_THREADS=1 .venv/bin/python -m tests.docs_check --build "$scratch/docs"
.venv/bin/python -m tests.study_diff "$scratch/pytest-study" "$scratch/docs/study"
