#!/usr/bin/env bash
# One GPU check of cslrobust, run from the repository root on a CUDA machine without internet:
#   1. installs the carried wheels (.whl/: kornia, pydantic, pyautoattack, ... that the image lacks)
#      into /tmp/site and puts it and src/ on PYTHONPATH;
#   2. prints nvidia-smi and the torch/CUDA versions;
#   3. (a) pytest -m gpu tests (per-test timeout);
#      (b) benchmarks/throughput.py --mode gpu-epoch: s/epoch of SimCLR ResNet-18 w64 on CIFAR-10,
#          fp32 / bf16+channels_last with kornia or simclr_fast views / + torch.compile;
#      (c) end to end through the CLI on the real data: train 2 epochs (SimCLR, width 64, batch 512,
#          bf16, simclr_fast views) -> probe -> evaluate --suite quick --n-images 500, all on cuda.
# Every step runs under `timeout`, capped by what is left of TOTAL_BUDGET_S, and one failing step
# does not stop the others. Everything printed goes to $OUT/gpu_check.log; the run's JSON records
# are copied to $OUT. Usage (device tool: carry .whl and data_carry):
#   bash benchmarks/gpu_check.sh
# Variables (all optional): DATA_ARCHIVE (default data_carry/cifar10-jpeg.tar.gz; random images
# for the benchmark and no end-to-end run when missing), OUT, WHEELS, TOTAL_BUDGET_S (default 420),
# SKIP_WHEELS=1, E2E_SETS (extra `-s key=value` overrides for `cslrobust train`).
set -uo pipefail

DATA_ARCHIVE=${DATA_ARCHIVE:-data_carry/cifar10-jpeg.tar.gz}
OUT=${OUT:-/tmp/gpu_check_out}
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/site}
TOTAL_BUDGET_S=${TOTAL_BUDGET_S:-420}
RUNS=${RUNS:-/tmp/cslrobust-gpu-runs}
E2E_SETS=${E2E_SETS:--s model.width=64 -s model.channels_last=true -s train.batch_size=512 -s train.precision=bf16 -s augment.kind=simclr_fast}
LOG=$OUT/gpu_check.log

export PYTHONUNBUFFERED=1
export CSLROBUST_DATA=${CSLROBUST_DATA:-/tmp/cslrobust-data}  # decoded-image cache, shared by all steps
export MPLBACKEND=Agg

SUMMARY=()
START=$SECONDS

# step NAME LIMIT_S CMD...: run CMD under timeout (LIMIT_S, or what is left of the budget).
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((TOTAL_BUDGET_S - (SECONDS - START)))
    if ((left < 20)); then
        echo "=== [$name] skipped: ${left} s of the ${TOTAL_BUDGET_S} s budget left"
        SUMMARY+=("$name: skipped (budget)")
        return 0
    fi
    ((limit > left)) && limit=$left
    echo
    echo "=== [$name] (timeout ${limit} s) $*"
    local t0=$SECONDS rc
    timeout -k 10 "$limit" "$@"
    rc=$?
    local verdict="rc=$rc"
    ((rc == 124 || rc == 137)) && verdict="TIMED OUT after ${limit} s"
    echo "=== [$name] $verdict, $((SECONDS - t0)) s"
    SUMMARY+=("$name: $verdict, $((SECONDS - t0)) s")
    return 0
}

main() {
    echo "gpu_check: $(date -u +%FT%TZ), $(git rev-parse --short HEAD 2>/dev/null || echo no-git)," \
        "budget ${TOTAL_BUDGET_S} s, data ${DATA_ARCHIVE}"
    if [[ ${SKIP_WHEELS:-0} != 1 ]]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" "$WHEELS"/*.whl || { echo "wheel install failed"; return 1; }
        export PYTHONPATH=$SITE:$PWD/src
    else
        export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv || true
    python3 - <<'EOF' || { echo "imports failed"; return 1; }
import importlib.metadata as md
import torch
import cslrobust
versions = {n: md.version(n) for n in ("kornia", "pydantic", "pyautoattack", "numpy")}
print(f"python torch {torch.__version__} CUDA {torch.version.cuda} cuDNN {torch.backends.cudnn.version()}; "
      f"cuda available {torch.cuda.is_available()}; {versions}")
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
EOF

    # (a) CUDA-marked tests (skipped by conftest where CUDA is absent).
    local per_test=()
    python3 -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout=90)
    step "pytest -m gpu" 120 python3 -m pytest -q -m gpu -p no:cacheprovider \
        --continue-on-collection-errors "${per_test[@]}" tests

    # (b) seconds per epoch on the real data (random images when the archive is missing).
    local source=()
    [[ -f $DATA_ARCHIVE ]] && source=(--data-source "$DATA_ARCHIVE")
    step "gpu-epoch benchmark" 270 python3 benchmarks/throughput.py --mode gpu-epoch \
        "${source[@]}" --budget-s 200

    # (c) end to end through the CLI on the real data.
    if [[ -f $DATA_ARCHIVE ]]; then
        local run=$RUNS/gpu-e2e
        rm -rf "$run"
        # shellcheck disable=SC2086  # E2E_SETS is a list of words
        step "cli train" 120 python3 -m cslrobust train --name gpu-e2e --output-dir "$RUNS" \
            --objective simclr --epochs 2 --device cuda --data-source "$DATA_ARCHIVE" \
            --no-progress $E2E_SETS
        step "cli probe" 90 python3 -m cslrobust probe "$run" --device cuda --no-progress
        step "cli evaluate" 150 python3 -m cslrobust evaluate "$run" --suite quick --n-images 500 \
            --device cuda --no-progress
        for f in train.json probe.json evaluation.json; do
            [[ -f $run/$f ]] && cp "$run/$f" "$OUT/e2e-$f"
        done
    else
        SUMMARY+=("cli e2e: skipped (no $DATA_ARCHIVE)")
    fi

    echo
    echo "=== summary ($((SECONDS - START)) s in all)"
    printf '  %s\n' "${SUMMARY[@]}"
}

mkdir -p "$OUT"
main 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
