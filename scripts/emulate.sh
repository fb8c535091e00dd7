#!/usr/bin/env bash
# Runs the mix and soft-target kernels on the CPU (kernels/emu/emulate.cpp): every thread of
# every block in turn, under AddressSanitizer and UBSan, with every 16-byte access checked for
# alignment, against independently written expected results. No GPU, no CUDA toolkit: a C++17
# compiler with _Float16 (g++ >= 12, clang >= 15) is enough. Prints "N passed, M failed".
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${TMPDIR:-/tmp}/mixup-kernels-emulate"
"${CXX:-c++}" -std=c++17 -O1 -g -ffp-contract=off -fno-fast-math -fsanitize=address,undefined \
    -fno-sanitize-recover=undefined -Wno-unused-function -Wno-unknown-pragmas \
    -o "$out" "$root/kernels/emu/emulate.cpp"
"$out"
