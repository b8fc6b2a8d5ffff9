#!/usr/bin/env bash
# The GPU check of the TopK-Dice losses (issues 13 and 23), one script for one GPU, at most 8 minutes:
#   1. environment (GPU, torch, CUDA);
#   2. the CUDA tests of every loss file (tests/test_losses_*.py), the softmax and the region (sigmoid)
#      loss: exactness on CUDA against the CPU reference, fp16/bf16 autocast, torch.compile (inductor),
#      and no device-to-host synchronisation in a loss call (torch.cuda.set_sync_debug_mode);
#   3. benchmarks/bench_loss.py on CUDA: the trainers' softmax losses (goal: at most 1.2x nnU-Net's
#      DC_and_CE_loss), the region loss against DC_and_BCE_loss (--regions), and the scaling table;
#   4. benchmarks/bench_train_step.py on CUDA (goal: train step at most 1.02x nnUNetTrainer).
# Every step has its own timeout (together 455 s, plus 5 s grace each) and the script goes on after a
# failed step; the report (Markdown) lists each step's command, exit status, duration and output. Exit
# status: the number of failed steps. Without CUDA the tests are skipped and the benchmarks fail (exit 2).
#
#   benchmarks/gpu_check.sh [REPORT]      # default: $OUT/gpu_check_report.md, else ./gpu_check_report.md
#   PYTHON=/path/to/python benchmarks/gpu_check.sh
set -u

cd "$(dirname "$0")/.." || exit 1
REPORT=${1:-${OUT:-.}/gpu_check_report.md}
mkdir -p "$(dirname "$REPORT")" || exit 1
PYTHON=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
FAILED=0

trap 'echo "gpu_check: report at $REPORT"' EXIT

{
    echo "# TopK-Dice GPU check"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo
} > "$REPORT"

# step NAME SECONDS COMMAND...: run COMMAND with a timeout, append its output to the report
step() {
    local name=$1 limit=$2 log rc start
    shift 2
    log=$(mktemp)
    start=$(date +%s)
    echo "gpu_check: $name (at most ${limit} s)"
    timeout --kill-after=5 "$limit" "$@" > "$log" 2>&1
    rc=$?
    {
        echo "## $name"
        echo
        echo "\`$*\`: exit $rc after $(( $(date +%s) - start )) s$([ "$rc" -eq 124 ] && echo ' (timed out)')"
        echo
        echo '```'
        tail -n 150 "$log"
        echo '```'
        echo
    } >> "$REPORT"
    rm -f "$log"
    if [ "$rc" -ne 0 ]; then
        FAILED=$((FAILED + 1))
        echo "gpu_check: $name failed (exit $rc), continuing"
    fi
    return 0
}

step "Environment" 30 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \
    $PYTHON -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \
\"available\", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"\")'"

# -rs lists the skipped tests: without CUDA every one of them is skipped, which the report must show
# every loss test file: the softmax loss's and the region loss's (whatever files hold them), CUDA cases only
step "CUDA tests, softmax and region losses (exactness, autocast, compile, host syncs)" 140 \
    "$PYTHON" -m pytest -q -rs -p no:cacheprovider tests/test_losses_*.py -k "cuda"

step "Loss benchmark on CUDA" 100 "$PYTHON" benchmarks/bench_loss.py --device cuda --repeats 10

step "Region loss benchmark on CUDA" 60 "$PYTHON" benchmarks/bench_loss.py --device cuda --regions --repeats 10

step "Loss scaling on CUDA" 75 "$PYTHON" benchmarks/bench_loss.py --device cuda --scaling --repeats 5

step "Train step on CUDA" 50 "$PYTHON" benchmarks/bench_train_step.py --device cuda --repeats 10 --warmup 3

{
    echo "## Summary"
    echo
    echo "$FAILED step(s) failed."
} >> "$REPORT"
echo "gpu_check: $FAILED step(s) failed"
exit "$FAILED"
