#!/usr/bin/env bash
# Installs NVRTC 13.0 from PyPI into a cache folder (no CUDA toolkit needed) and prints the folder
# that holds libnvrtc.so.13, for LD_LIBRARY_PATH:
#
#   export LD_LIBRARY_PATH="$(bash scripts/nvrtc.sh)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
#
# Idempotent: a second call finds the library and prints the folder without touching the network.
# The cache folder is $MIXUP_NVRTC_DIR, else target/nvrtc in the repository. Progress goes to
# stderr; stdout carries only the folder, so the call can be used inside $(...).
#
# With --tools it also installs ptxas (nvidia-cuda-nvcc 13.0), cuobjdump and nvdisasm
# (nvidia-cuda-cuobjdump / -nvdisasm: PyPI has them from 13.2 only; a newer disassembler reads
# 13.0 cubins), for
# reading register and spill counts and SASS (docs/perf-notes.md); their bin folder is printed
# on a second line.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${MIXUP_NVRTC_DIR:-$root/target/nvrtc}"
version="${MIXUP_NVRTC_VERSION:-13.0.*}"
tools=0
[[ "${1:-}" == "--tools" ]] && tools=1

lib="$dir/nvidia/cu13/lib"
python="${PYTHON:-python3}"

if ! compgen -G "$lib/libnvrtc.so.13*" >/dev/null; then
    echo "installing nvidia-cuda-nvrtc==$version into $dir" >&2
    mkdir -p "$dir"
    "$python" -m pip install --quiet --disable-pip-version-check --no-deps \
        --target "$dir" "nvidia-cuda-nvrtc==$version" >&2
fi
if ! compgen -G "$lib/libnvrtc.so.13*" >/dev/null; then
    echo "error: libnvrtc.so.13 not found under $lib after installing nvidia-cuda-nvrtc" >&2
    exit 1
fi
echo "$lib"

if [[ $tools == 1 ]]; then
    tdir="$dir-tools"
    bin="$tdir/nvidia/cu13/bin"
    if [[ ! -x "$bin/ptxas" || ! -x "$bin/cuobjdump" || ! -x "$bin/nvdisasm" ]]; then
        echo "installing nvidia-cuda-nvcc==$version, cuobjdump and nvdisasm into $tdir" >&2
        mkdir -p "$tdir"
        "$python" -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
            --target "$tdir" "nvidia-cuda-nvcc==$version" "nvidia-cuda-cuobjdump==13.*" \
            "nvidia-cuda-nvdisasm==13.*" >&2
    fi
    echo "$bin"
fi
