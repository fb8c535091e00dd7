#!/usr/bin/env bash
# Installs nvcc 13.0 and the headers candle-kernels needs from PyPI (no CUDA toolkit) and prints
# the environment that lets `--features candle-cuda` build on a machine without one:
#
#   eval "$(bash scripts/candle-cuda-env.sh)"
#   cargo build --lib --no-default-features --features candle-cuda --target-dir target/candle-cuda
#
# candle's `cuda` feature compiles candle-kernels' .cu files to PTX with nvcc in its build script,
# and cudarc's `cuda-version-from-build-system` may run `nvcc --version`: both find nvcc on PATH.
# CUDA_COMPUTE_CAP (the PTX target of candle-kernels: the GPU's per nvidia-smi, else 90 for
# H100/H200; set it to build for another) replaces the query bindgen_cuda makes otherwise.
# Linking a binary also needs libcuda, libcublas, libcublasLt, libcurand, libnvrtc and libcudart:
# without them, link against scripts/cuda-link-stubs.sh's stand-ins (docs/candle.md).
#
# Idempotent; the folder is $MIXUP_CUDA_TOOLS_DIR, else target/cuda-tools in the repository
# (git-ignored, and not under .gpu/, which travels to the GPU machine).
# Progress goes to stderr; stdout carries only the export lines.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${MIXUP_CUDA_TOOLS_DIR:-$root/target/cuda-tools}"
# The GPU's own compute capability when nvidia-smi is there ("9.0" -> 90), else 90 (H100, H200).
cap="${CUDA_COMPUTE_CAP:-$( (nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null || true) | head -1 | tr -d ' .')}"
cap="${cap:-90}"
python="${PYTHON:-python3}"
top="$dir/nvidia/cu13"

if [[ ! -x "$top/bin/nvcc" || ! -e "$top/nvvm/bin/cicc" || ! -e "$top/include/cuda_fp16.h" ]]; then
    echo "installing nvcc 13.0 and CUDA headers into $dir" >&2
    mkdir -p "$dir"
    "$python" -m pip install --quiet --disable-pip-version-check --no-deps --target "$dir" \
        "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*" \
        "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*" >&2
fi
"$top/bin/nvcc" --version | tail -2 >&2

cat <<EOT
export CUDA_ROOT="$top"
export CUDA_PATH="$top"
export CUDA_HOME="$top"
export PATH="$top/bin:\$PATH"
export CUDA_COMPUTE_CAP="$cap"
EOT
