#!/usr/bin/env bash
# Idempotent setup on a fresh Debian/Ubuntu machine with Python 3.11: the Fashion-MNIST
# package, a virtualenv with the pinned stack, and this project installed into it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# -P: `gat` must import from the installed (editable) project, not from the current folder
if ! .venv/bin/python -P -c "import gat, ray, dvc, mlflow, diffusers, torch_fidelity" \
     2>/dev/null || ! cmp -s requirements.txt .venv/.requirements.installed; then
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
  cp requirements.txt .venv/.requirements.installed
fi
