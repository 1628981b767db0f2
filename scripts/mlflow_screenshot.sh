#!/usr/bin/env bash
# Screenshot of the MLflow UI comparing the sizes of the study (for the README).
# Needs Debian's chromium (apt-get install chromium). Usage:
#   bash scripts/mlflow_screenshot.sh [OUT.png] [PAGE]   PAGE defaults to the experiment's run table
#   GAT_SHOT_SIZE=W,H sets the window (a tall one shows the compare page's metrics table)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/img/mlflow_sizes.png}
port=5077
db="sqlite:///$PWD/mlflow.db"
.venv/bin/mlflow ui --backend-store-uri "$db" --host 127.0.0.1 --port $port --workers 1 \
  >/tmp/mlflow_ui.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 1; done
exp_id=$(.venv/bin/python - <<PY
from mlflow.tracking import MlflowClient
from pipeline.config import load_params
c = MlflowClient("$db")
print(c.get_experiment_by_name(load_params().tracking.experiment).experiment_id)
PY
)
page=${2:-"#/experiments/$exp_id"}
mkdir -p "$(dirname "$out")"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$(mktemp -d)" --window-size=${GAT_SHOT_SIZE:-1600,1000} --virtual-time-budget=15000 \
  --screenshot="$out" "http://127.0.0.1:$port/$page" 2>/dev/null
echo "wrote $out"
