#!/usr/bin/env bash
# Every GPU figure the README's benchmark section asks for, in one run (about 15 minutes on one H100).
#
#   bash bench/gpu_suite.sh OUT_DIR          # needs microact installed (or PYTHONPATH=src) and a CUDA GPU
#
# Writes OUT_DIR/<name>.txt (the printed table) and OUT_DIR/<name>.json (the figures) per measurement. A failing
# measurement (an out-of-memory batch, a missing optional package) is reported and the suite goes on.
set -uo pipefail
out=${1:?usage: bash bench/gpu_suite.sh OUT_DIR}
mkdir -p "$out"
py=${PYTHON:-python}
failed=()

run() {  # run NAME ARGS...: one `microact` measurement, table to NAME.txt, figures to NAME.json
    local name=$1
    shift
    echo "=== $name: microact $*"
    if ! "$py" -m microact.cli "$@" --json "$out/$name.json" 2>&1 | tee "$out/$name.txt"; then
        failed+=("$name")
    fi
}

"$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name())" \
    || exit 1
best=videomae_b_k710_frame_coarse_tsn
run backbone bench backbone --batch 1 4 32 --precision fp32 bf16 --repeats 10 --device cuda
run train_b_bf16 bench train --preset $best --precision bf16 --batch 24 --steps 20 --device cuda
run train_b_bf16_b48 bench train --preset $best --precision bf16 --batch 48 --steps 20 --device cuda
run train_b_bf16_compile bench train --preset $best --precision bf16 --batch 24 --steps 20 --compile --device cuda
run train_b_fp16 bench train --preset $best --precision fp16 --batch 24 --steps 20 --device cuda
run train_l_bf16 bench train --preset videomae_l_k700_timesformer --precision bf16 --batch 10 --steps 10 --device cuda
run train_h_bf16 bench train --preset videomae_h_timesformer --precision bf16 --batch 6 --steps 10 --device cuda
run train_h_bf16_ckpt bench train --preset videomae_h_timesformer --precision bf16 --batch 24 --steps 5 \
    --grad-checkpointing --device cuda
run memory bench memory --gpu-mem-gib 80
run data bench data --workers 0 4 8 16 --clips 64
run e2e bench e2e --preset $best --workers 16 --batch 24 --steps 20 --device cuda
if ((${#failed[@]})); then
    echo "failed: ${failed[*]}"
    exit 1
fi
