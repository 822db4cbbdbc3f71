#!/usr/bin/env bash
# The accelerator check (under 5 minutes on one GPU): the CUDA tests, then one table of
# SFPK loop vs batched particles (ResNet-20 batch 512, ResNet-50 batch 64), a bf16 ResNet-50
# fine-tune epoch on fake ImageNet-shaped data, and peak memory; then the 2:4 semi-structured
# speed-up (dense fp16 vs torch's sparse kernels, benchmarks/semi_structured_speed.py);
# then the LLM scale case: GPT-2 small (124 M, random init) pruned layer-wise by wanda,
# sparsegpt and sfpk with 128 x 512 calibration tokens on CUDA (benchmarks/llm.py scale,
# skipped when transformers is not installed).
#   bash benchmarks/device_check.sh            # from the repository root, venv active or not
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'device_check.sh needs a CUDA GPU')"
"$PY" -m pytest -q -p no:cacheprovider tests/training/test_cuda.py tests/pruners/test_batched_particles.py tests/training/test_precision.py
"$PY" benchmarks/device_check.py "$@"
"$PY" benchmarks/semi_structured_speed.py --repeats 30
if "$PY" -c "import transformers" 2>/dev/null; then
    "$PY" benchmarks/llm.py scale --device cuda --threads 4
else
    echo "device_check.sh: transformers not installed, LLM scale case skipped"
fi
