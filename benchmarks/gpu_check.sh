#!/usr/bin/env bash
# GPU check: the shipped suites and the suites benchmark on CUDA, in under 5 minutes.
#
#   benchmarks/gpu_check.sh                  # tiny base, bf16 on cuda
#   BASE=mistral-7b ADAPTERS=dir/ benchmarks/gpu_check.sh   # also a 7B base, 4-bit, your adapters
#
# 1. shows the GPU and what torch sees; 2. runs the shipped suites on the demo adapters with
# --device cuda (bf16), cold then warm; 3. with BASE and ADAPTERS set, runs them on that base
# with --quantize 4bit (batch sizes come from torch.cuda.mem_get_info); 4. prints the
# benchmark table (bench_suites.py --quick --device cuda: 1 and 4 adapters, 4 samples per
# check, so the one-row-at-a-time reference fits the budget). Everything runs offline.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 NO_COLOR=1 CI=1
BUDGET=${BUDGET:-290}
start=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - start) )); }

nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true
python - <<'EOF'
import torch
assert torch.cuda.is_available(), "torch sees no CUDA device"
free, total = torch.cuda.mem_get_info()
print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}: {free / 2**30:.1f} of "
      f"{total / 2**30:.1f} GiB free, bf16 {torch.cuda.is_bf16_supported()}")
EOF

home=$(mktemp -d)
export SCENELORA_HOME=${SCENELORA_HOME:-$home}
adapters=$(mktemp -d)
python -c "from pytest_scenelora.training import train_demo_library as t; t('$adapters')" >/dev/null
for run in cold warm; do
  t0=$(date +%s.%N)
  timeout "$(left)" python -m pytest suites --adapter "$adapters" --device cuda -p no:cacheprovider -q \
    | tail -3 || true
  echo "suites on cuda ($run): $(python -c "print(f'{$(date +%s.%N) - $t0:.1f}')") s"
done

if [[ -n "${BASE:-}" && -n "${ADAPTERS:-}" ]]; then
  timeout "$(left)" python -m pytest suites --base-model "$BASE" --adapter "$ADAPTERS" --device cuda \
    --quantize 4bit -p no:cacheprovider -q | tail -3 || true
fi

timeout "$(left)" python benchmarks/bench_suites.py --quick --device cuda
echo "gpu_check: $(( $(date +%s) - start )) s"
