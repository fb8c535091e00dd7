#!/usr/bin/env bash
# Link-time stand-ins for the CUDA libraries that candle's cudarc links dynamically (`candle-cuda`:
# libcuda, libcublas, libcublasLt, libcurand, libnvrtc), so a candle-cuda test or demo binary can be
# LINKED on a machine without a driver or those libraries, and run on the GPU machine, where the
# real ones are found by their SONAMEs (the driver's libcuda.so.1; libcublas.so.13,
# libcublasLt.so.13, libcurand.so.10 and libnvrtc.so.13 from the python wheels there:
# scripts/gpu/run.sh puts their folders on LD_LIBRARY_PATH).
#
#   bash scripts/cuda-link-stubs.sh DIR     # writes DIR/lib{cuda,cublas,cublasLt,curand,nvrtc}.so
#   RUSTFLAGS="-L native=DIR" cargo build --release --no-default-features --features candle-cuda ...
#
# Each stub exports every function that cudarc 0.19 declares for its library (read from cudarc's
# own bindings in cargo's registry, `pub unsafe fn NAME(` in src/<lib>/sys/mod.rs) under the real
# library's SONAME. The binary records only SONAMEs and symbol names; no stub code travels. Each
# stand-in returns 100 (the driver's CUDA_ERROR_NO_DEVICE; an error status for the others), so a
# binary run here with them on LD_LIBRARY_PATH (as libcuda.so.1, ...) finds no GPU: candle's
# `Device::new_cuda` fails cleanly and the tests' CUDA half says SKIPPED. Needs gcc.
#
# candle-kernels also links libcudart (its MoE kernels are a static library calling the CUDA
# runtime, with registration functions cudarc does not declare): that one is linked for real,
# from the nvidia-cuda-runtime wheel scripts/candle-cuda-env.sh installs (`$CUDA_ROOT/lib`).
set -euo pipefail

dir=${1:?usage: $0 DIR}
mkdir -p "$dir"
# cudarc's version in Cargo.lock (one cudarc in the tree: `cargo tree -d`).
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version=$(awk '/^name = "cudarc"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$root/Cargo.lock")
src=$(compgen -G "${CARGO_HOME:-$HOME/.cargo}/registry/src/*/cudarc-$version/src" | head -1)
[[ -d "$src" ]] || { echo "error: cudarc $version's source not in cargo's registry (run cargo fetch)" >&2; exit 1; }

# stub LIB SONAME MODULE...: DIR/libLIB.so exporting every `pub unsafe fn` of cudarc's MODULEs.
stub() {
    local lib=$1 soname=$2
    shift 2
    local c="$dir/lib$lib.c" n
    {
        for m in "$@"; do
            grep -oP '^pub unsafe fn \K[A-Za-z_][A-Za-z0-9_]*' "$src/$m/sys/mod.rs"
        done | sort -u | sed 's/.*/int &(void) { return 100; }/'
    } >"$c"
    n=$(wc -l <"$c")
    ((n > 0)) || { echo "error: no functions found for $lib in $src" >&2; exit 1; }
    gcc -shared -fPIC -O0 -w -Wl,-soname,"$soname" -o "$dir/lib$lib.so" "$c"
    echo "stub $dir/lib$lib.so ($soname): $n functions" >&2
}
stub cuda libcuda.so.1 driver
stub cublas libcublas.so.13 cublas
stub cublasLt libcublasLt.so.13 cublaslt
stub curand libcurand.so.10 curand
stub nvrtc libnvrtc.so.13 nvrtc
cudart="${CUDA_ROOT:-${MIXUP_CUDA_TOOLS_DIR:-$root/target/cuda-tools}/nvidia/cu13}/lib/libcudart.so.13"
if [[ ! -e "$cudart" ]]; then
    echo "error: $cudart missing: run scripts/candle-cuda-env.sh first (candle-kernels links -lcudart)" >&2
    exit 1
fi
ln -sf "$cudart" "$dir/libcudart.so"
echo "link $dir/libcudart.so -> $cudart" >&2
