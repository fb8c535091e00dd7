#!/usr/bin/env bash
# Runs every kernel of kernels/*.cu on the CPU (kernels/emu: the threads of a block as fibers, so
# barriers, warp shuffles, shared memory and the last-block-done reduction behave as on a GPU)
# under AddressSanitizer and UBSan, with every 16-byte access checked for alignment, against
# independently computed expected results. No GPU, no CUDA toolkit: a C++17 compiler with
# _Float16 (g++ >= 12, clang >= 15) is enough. Arguments go to the emulator (see
# kernels/emu/main.cpp: --queries, --launches FILE, --only engine|mix|ce|naive). Prints
# "N passed, M failed" last.
#
# An object is rebuilt only when its sources, this script or the compiler change.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cxx="${CXX:-c++}"
flags=(-std=c++17 -O1 -g1 -ffp-contract=off -fno-fast-math -fsanitize=address,undefined
    -fno-sanitize-recover=undefined -Wall -Wno-unused-function -Wno-unknown-pragmas)
key="$(printf '%s\n' "$root" "$cxx" "${flags[*]}" "$("$cxx" --version 2>/dev/null | head -1)" | cksum | cut -d' ' -f1)"
dir="${TMPDIR:-/tmp}/mixup-kernels-emulate-$key"
bin="$dir/emulate"
# Each unit with the kernel sources it includes (it is rebuilt when they, a header or this
# script change).
declare -A cu=([test_ce]="mixup_ce.cu" [test_naive]="naive.cu" [test_mix]="mix.cu soft_targets.cu"
    [engine]="" [test_engine]="" [main]="")
units=(test_ce test_naive test_mix engine test_engine main)
mkdir -p "$dir"
# One build at a time (two test processes may run this at once).
if command -v flock >/dev/null; then
    exec 9>"$dir/lock"
    flock 9
fi
stamp="$dir/flags"
[[ -f "$stamp" && "$(cat "$stamp")" == "${flags[*]}" ]] || printf '%s' "${flags[*]}" >"$stamp"

pids=()
relink=0
for u in "${units[@]}"; do
    obj="$dir/$u.o"
    deps=("$root/kernels/emu/$u.cpp" "$root"/kernels/emu/*.h "$root"/kernels/*.cuh "${BASH_SOURCE[0]}" "$stamp")
    for k in ${cu[$u]}; do deps+=("$root/kernels/$k"); done
    stale=0
    [[ -f "$obj" ]] || stale=1
    for f in "${deps[@]}"; do [[ $stale == 1 || "$f" -nt "$obj" ]] && stale=1; done
    [[ $stale == 1 ]] || continue
    relink=1
    # Two compilations at a time.
    "$cxx" "${flags[@]}" -c -o "$obj" "$root/kernels/emu/$u.cpp" &
    pids+=($!)
    if (( ${#pids[@]} >= 2 )); then
        wait "${pids[0]}"
        pids=("${pids[@]:1}")
    fi
done
for p in "${pids[@]}"; do wait "$p"; done
if [[ $relink == 1 || ! -x "$bin" ]]; then
    objs=()
    for u in "${units[@]}"; do objs+=("$dir/$u.o"); done
    "$cxx" "${flags[@]}" -o "$bin.tmp" "${objs[@]}"
    mv "$bin.tmp" "$bin"
fi
# ASan's leak check would only report the fiber stacks' bookkeeping; the buffers are freed.
ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}" exec "$bin" "$@"
