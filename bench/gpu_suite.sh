#!/usr/bin/env bash
# Every GPU figure docs/BENCHMARKS.md asks for, plus the CUDA correctness checks, in one run.
#
#   bash bench/gpu_suite.sh OUT_DIR [BUDGET_S]   # needs microact installed (or PYTHONPATH=src) and a CUDA GPU
#
# Writes OUT_DIR/<name>.txt (the printed output) and OUT_DIR/<name>.json (the figures) per measurement. Each
# measurement has its own time limit and the whole suite a budget (default 900 s; on one H200 on 2026-11-30
# everything ran in about 9 minutes, before the profile and e2e_cache_jpeg steps were added). A step that fails or
# runs out of memory or time is reported and the suite goes on; steps that no longer fit the budget are skipped and
# named. Most important first.
set -uo pipefail
out=${1:?usage: bash bench/gpu_suite.sh OUT_DIR [BUDGET_S]}
budget=${2:-900}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
failed=()
skipped=()
end=$((SECONDS + budget))

step() {  # step NAME LIMIT_S COMMAND...: output to NAME.txt, within min(LIMIT_S, what is left of the budget)
    local name=$1 limit=$2
    shift 2
    local left=$((end - SECONDS))
    ((left < limit)) && limit=$left
    if ((left < 20)); then
        skipped+=("$name")
        return
    fi
    echo "=== $name (limit ${limit} s): $*"
    local t0=$SECONDS
    if ! timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$out/$name.txt"; then
        failed+=("$name")
    fi
    echo "=== $name took $((SECONDS - t0)) s"
}

bench() {  # bench NAME LIMIT_S ARGS...: one `microact bench` measurement, figures to NAME.json
    local name=$1 limit=$2
    shift 2
    step "$name" "$limit" "$py" -m microact.cli bench "$@" --json "$out/$name.json"
}

"$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name(), torch.__version__)" \
    || exit 1
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv 2>&1 | tee "$out/nvidia_smi.txt"
here=$(dirname "$0")
best=videomae_b_k710_frame_coarse_tsn
step checks 150 "$py" "$here/gpu_checks.py"
# The questions still open first (docs/BENCHMARKS.md, "What the GPU figures leave open"): is training still data-bound with
# the loader's remedies, and where the step's time goes; then the figures a run on 2026-11-30 already has.
bench e2e 90 e2e --preset $best --workers 15 --batch 24 --steps 60 --device cuda
bench e2e_jitter_on_device 90 e2e --preset $best --workers 15 --batch 24 --steps 60 --device cuda --jitter-on-device
bench train_b_bf16 60 train --preset $best --precision bf16 --batch 24 --steps 20 --device cuda
bench train_b_bf16_profile 60 train --preset $best --precision bf16 --batch 24 --steps 3 --no-peer --device cuda \
    --profile "$out/profile_b_bf16"
# Which fused attention kernel makes the step fastest (bench/gpu_checks.py times the kernels alone)
bench train_b_bf16_flash 60 train --preset $best --precision bf16 --batch 24 --steps 20 --no-peer --device cuda \
    --sdpa-kernel flash
bench train_b_bf16_cudnn 60 train --preset $best --precision bf16 --batch 24 --steps 20 --no-peer --device cuda \
    --sdpa-kernel cudnn
bench data 150 data --workers 0 8 15 --clips 32
bench backbone 120 backbone --batch 1 4 --precision fp32 bf16 --repeats 10 --device cuda
bench train_b_bf16_b64 60 train --preset $best --precision bf16 --batch 64 --steps 10 --device cuda
bench train_b_fp16 60 train --preset $best --precision fp16 --batch 24 --steps 10 --device cuda
bench train_l_bf16 60 train --preset videomae_l_k700_timesformer --precision bf16 --batch 10 --steps 10 --device cuda
bench train_h_bf16 60 train --preset videomae_h_timesformer --precision bf16 --batch 6 --steps 10 --device cuda
bench train_h_bf16_ckpt 60 train --preset videomae_h_timesformer --precision bf16 --batch 24 --steps 5 \
    --grad-checkpointing --device cuda
frame_cache=$(mktemp -d)  # not under OUT_DIR: the results folder stays small
bench e2e_cache_jpeg 120 e2e --preset $best --workers 15 --batch 24 --steps 60 --device cuda \
    --cache-dir "$frame_cache" --cache-format jpeg
rm -rf "$frame_cache"
bench train_b_bf16_compile 240 train --preset $best --precision bf16 --batch 24 --steps 20 --compile --device cuda
((${#skipped[@]})) && echo "skipped (budget): ${skipped[*]}"
if ((${#failed[@]})); then
    echo "failed: ${failed[*]}"
    exit 1
fi
echo "all measurements done"
