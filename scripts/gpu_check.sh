#!/usr/bin/env bash
# The first thing to run on a machine with a GPU (docs/GPU_PATHS.md): the paper profile's
# rehearsal on the GPUs, then the figures the GPU paths have never had. Aimed at under
# 10 min on one H100; not yet run on one (no GPU has been lent to this project).
#
#   bash scripts/gpu_check.sh [WORK_DIR]        # default /tmp/gat-gpu-check; rerun resumes
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DVC_NO_ANALYTICS=1 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
py=.venv/bin/python
work="${1:-/tmp/gat-gpu-check}"
gpus=$($py -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -lt 1 ]; then
  echo "gpu_check: no CUDA GPU visible (torch.cuda.device_count() = 0); on a CPU machine" \
       "run the rehearsal instead: bash scripts/rehearse.sh" >&2
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
echo "== 1. the paper profile's rehearsal on $gpus GPU(s): every stage, bf16, pooled stages"
$py scripts/rehearse.py --gpus "$gpus" --work "$work"
echo "== 2. forward+backward of G and D, bf16, batch 64: ms per step and MFU"
$py benchmarks/model_speed.py --models GAT-S/2 GAT-B/2 --batch 64 --bf16
echo "== 3. the whole GAT step (D and G steps, aGP, MNG, REPA, EMA), bf16, batch 64"
$py benchmarks/train_throughput.py --params profiles/paper.yaml --models GAT-S/2 GAT-B/2 \
  --batch 64 --device cuda --latent 4,32 --tokens 257,768 --classes 1000
echo "== 4. flat vs bucketed (overlapped) all-reduce, NCCL"
if [ "$gpus" -ge 2 ]; then
  $py benchmarks/allreduce_overlap.py --device cuda --model GAT-B/2 --batch 32 \
    --latent 4,32 --teacher-dim 768
else
  echo "skipped: needs 2 GPUs (NCCL runs one worker per GPU); $gpus visible"
fi
echo "gpu_check done: paste the tables above into docs/GPU_PATHS.md with the GPU's name"
