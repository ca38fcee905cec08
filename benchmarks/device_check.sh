#!/usr/bin/env bash
# The GPU check (benchmarks/device_check.py): real `lrn train` steps on random-weight Qwen2.5-0.5B and
# 1.5B shapes under torchrun (NCCL), bf16, the GPU presets' shapes; prints one table. For a machine with
# one CUDA GPU and CUDA PyTorch, transformers, peft, accelerate and typer, that reaches no registry:
# what lrn needs beyond those travels as wheels in .whl/ (make them with benchmarks/device_wheels.sh on a
# machine with pip access). About 8 minutes on one H200 (estimated; see docs/gpu.md for what has run).
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/lrn-site .whl/*.whl
    export PYTHONPATH="/tmp/lrn-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 benchmarks/device_check.py "$@"
