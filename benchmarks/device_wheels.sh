#!/usr/bin/env bash
# Download into .whl/ the wheels that benchmarks/device_check.sh installs on a GPU machine that reaches no
# registry and has CUDA PyTorch, transformers, peft, accelerate and typer but not lrn's other needs
# (Python 3.12, x86-64 Linux). The versions are this project's tested ones.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl \
    hydra-core==1.3.8 omegaconf==2.3.1 math-verify==0.9.0 latex2sympy2_extended==1.11.0
# omegaconf 2.3 needs antlr4 4.9.3, published as source only: build its (pure Python) wheel here
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls .whl
