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
pip=(.venv/bin/pip install -q --disable-pip-version-check)
# --relock: install requirements.txt without the lock (a changed pin brings what it needs;
# the rest stays), then write every installed version to requirements.lock (header kept).
if [ "${1:-}" = "--relock" ]; then
  "${pip[@]}" -r requirements.txt
  { sed -n '/^#/p' requirements.lock
    .venv/bin/pip freeze --exclude-editable --disable-pip-version-check; } > requirements.lock.tmp
  mv requirements.lock.tmp requirements.lock
fi
# The direct pins (requirements.txt) installed under the whole stack's (requirements.lock).
# Installed already when the stamp (written only after both installs succeeded) matches and
# every package is found; -P: `gat` from the installed (editable) project, not the current
# folder. find_spec, not import: importing them all took ~6 CPU-s, on every repro.sh.
if ! .venv/bin/python -P -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is \
     None for m in ('gat', 'ray', 'dvc', 'mlflow', 'diffusers', 'torch_fidelity')))" \
     2>/dev/null || ! cat requirements.txt requirements.lock \
     | cmp -s - .venv/.requirements.installed; then
  "${pip[@]}" -r requirements.txt -c requirements.lock
  "${pip[@]}" --no-deps -e .
  cat requirements.txt requirements.lock > .venv/.requirements.installed
fi
