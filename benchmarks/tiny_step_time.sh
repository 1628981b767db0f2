#!/usr/bin/env bash
# Whole-process and per-step time of the tiny profile's GAT-T1/4 trained by `python -m
# stages.train` with 2 Ray Train workers (120 iterations, a checkpoint every 20 steps, a
# logged row every 3), at two commits, alternated A B / B A / A B:
#   bash benchmarks/tiny_step_time.sh BEFORE_REV AFTER_REV BUILT_TINY_STUDY
# (a built tiny study: e.g. python -m tests.docs_check --build DIR gives DIR/study).
set -euo pipefail
before_rev=$1 after_rev=$2 study=$(realpath "$3")
repo=$(realpath "$(dirname "$0")/..") work=$(mktemp -d)
export PATH=$repo/.venv/bin:$PATH DVC_NO_ANALYTICS=1 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
for tag in before after; do
  d=$work/$tag
  if [ ! -d $d ]; then
    git clone -q "$repo" $d
    rev=$([ $tag = before ] && echo "$before_rev" || echo "$after_rev")
    git -C $d checkout -q $rev
    cp -r "$study/data" $d/data
    (cd $d && python -m pipeline.cli profile tiny >/dev/null 2>&1 || gat profile tiny >/dev/null)
    python - "$d/params.yaml" <<'PY'
import sys, yaml, re
p = sys.argv[1]; s = open(p).read()
s = re.sub(r"(?m)^  iterations: 12\b", "  iterations: 120", s, count=1)
s = re.sub(r"(?m)^  workers: 1\b", "  workers: 2", s, count=1)
s = re.sub(r"(?m)^  cpus_per_worker: [0-9.]+", "  cpus_per_worker: 1.0", s, count=1)
s = re.sub(r"(?m)^  checkpoint_every: 6\b", "  checkpoint_every: 20", s, count=1)
s = re.sub(r"(?m)^  fd_every: 12\b", "  fd_every: 0", s, count=1)
s = re.sub(r"(?m)^  sample_every: 6\b", "  sample_every: 100000", s, count=1)
open(p, "w").write(s)
y = yaml.safe_load(s); print(sys.argv[1], y["train"]["iterations"], y["runtime"]["workers"], y["runtime"]["cpus_per_worker"], y["runtime"]["checkpoint_every"], y["runtime"]["log_every"], y["runtime"]["sample_every"], y["runtime"]["fd_every"])
PY
  fi
done
for round in 1 2 3; do
  for tag in $([ $((round % 2)) = 1 ] && echo "before after" || echo "after before"); do
    d=$work/$tag; rm -rf $d/outputs $d/mlflow.db $d/results/train
    start=$(date +%s.%N)
    (cd $d && python -m stages.train GAT-T1/4 --seed 0 > $work/$tag-$round.log 2>&1)
    end=$(date +%s.%N)
    med=$(python -c "
import csv, statistics
rows = list(csv.DictReader(open('$d/results/train/GAT-T1/4/seed0/log.csv')))
t = [float(r['step_time_s']) for r in rows if r.get('step_time_s')]
print(f'{statistics.median(t):.3f} s median step_time_s over {len(t)} logged rows')")
    echo "$tag round $round: process $(python -c "print(round($end-$start,1))") s; $med; $(uptime | sed 's/.*load/load/')"
  done
done
