#!/usr/bin/env bash
# Runs the kernels of kernels/*.cu on the CPU (kernels/emu: the threads of a block as fibers, so
# barriers, warp shuffles, shared memory and the last-block-done reduction behave as on a GPU)
# under AddressSanitizer and UBSan, with every 16-byte access checked for alignment. No GPU, no
# CUDA toolkit: a C++17 compiler with _Float16 (g++ >= 12, clang >= 15) is enough. Arguments go
# to the emulator (see kernels/emu/main.cpp: --cases FILE --out DIR, --only engine|cases),
# except that `--out DIR` becomes `--out DIR/sm<arch>.bin` for each arch's run: the cases
# (written by tests/kernels_emulated) run once per device generation (see EMU_ARCHS below), each
# into its own file. Prints "N passed, M failed" over all runs last.
#
# An object is rebuilt only when its sources, this script or the compiler change.
#
# EMU_DEFINES="-DMIX_NT=128 ..." builds the kernel units with those defines (a tuning:
# `KernelTuning::all_defines`, src/cuda/tuning.rs), in folders of their own, so the cases of a
# non-default tuning run the kernels that tuning compiles.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cxx="${CXX:-c++}"
flags=(-std=c++17 -O1 -g1 -ffp-contract=off -fno-fast-math -fsanitize=address,undefined
    -fno-sanitize-recover=undefined -Wall -Wno-unused-function -Wno-unknown-pragmas)
key="$(printf '%s\n' "$root" "$cxx" "${flags[*]}" "$("$cxx" --version 2>/dev/null | head -1)" | cksum | cut -d' ' -f1)"
dir="${TMPDIR:-/tmp}/mixup-kernels-emulate-$key"
# The units that include kernel sources are built once per __CUDA_ARCH__ (EMU_ARCHS, default
# "750 800 900": the T4 path, the A100 path, the H100/H200 path), so the emulation runs the
# branches each device runs (sm_80+: cp.async, the bf16 and packed conversions); the others
# (the engine, its tests, main) once. An arch whose kernel units preprocess to the same text as
# an earlier arch's (today sm_90 = sm_80: no branch tells them apart) would build the same
# binary: it is not built or run again, and the output says so.
archs=(${EMU_ARCHS:-750 800 900})
defines=(${EMU_DEFINES:-})
tag=""
((${#defines[@]} == 0)) || tag="-t$(printf '%s\n' "${defines[@]}" | cksum | cut -d' ' -f1)"
declare -A cu=([k_ce]="mixup_ce.cu" [k_bce]="mixup_bce.cu" [k_mix]="mix.cu soft_targets.cu" [k_mix_normalize]="mix_normalize.cu")
kunits=(k_ce k_bce k_mix k_mix_normalize)
units=(engine test_engine main)
mkdir -p "$dir"
# One build at a time (two test processes may run this at once).
if command -v flock >/dev/null; then
    exec 9>"$dir/lock"
    flock 9
fi
stamp="$dir/flags"
[[ -f "$stamp" && "$(cat "$stamp")" == "${flags[*]}" ]] || printf '%s' "${flags[*]}" >"$stamp"

# deps UNIT: the files an object of UNIT is built from.
deps() {
    local d=("$root/kernels/emu/$1.cpp" "$root"/kernels/emu/*.h "$root"/kernels/*.cuh "${BASH_SOURCE[0]}" "$stamp")
    for k in ${cu[$1]:-}; do d+=("$root/kernels/$k"); done
    printf '%s\n' "${d[@]}"
}
# stale OUT UNIT: whether OUT is missing or older than one of UNIT's sources.
stale() {
    [[ -f "$1" ]] || return 0
    local f
    while read -r f; do [[ "$f" -nt "$1" ]] && return 0; done < <(deps "$2")
    return 1
}

# Which arch each arch's run is (itself, or an earlier arch with the same preprocessed kernels).
declare -A same=()
declare -A sig_of=()
for a in "${archs[@]}"; do
    mkdir -p "$dir/sm$a$tag"
    sig="$dir/sm$a$tag/signature"
    s=0
    for u in "${kunits[@]}"; do stale "$sig" "$u" && s=1; done
    if [[ $s == 1 ]]; then
        for u in "${kunits[@]}"; do "$cxx" -std=c++17 -E -P -D__CUDA_ARCH__="$a" "${defines[@]}" "$root/kernels/emu/$u.cpp"; done |
            cksum >"$sig.tmp"
        mv "$sig.tmp" "$sig"
    fi
    sig_of[$a]="$(cat "$sig")"
    same[$a]=$a
    for b in "${archs[@]}"; do
        [[ $b == "$a" ]] && break
        if [[ "${same[$b]}" == "$b" && "${sig_of[$b]}" == "${sig_of[$a]}" ]]; then same[$a]=$b; break; fi
    done
done

# Objects to build: "OBJ UNIT ARCH" (ARCH empty for the shared units).
jobs=()
for u in "${units[@]}"; do stale "$dir/$u.o" "$u" && jobs+=("$dir/$u.o $u -"); done
for a in "${archs[@]}"; do
    [[ "${same[$a]}" == "$a" ]] || continue
    for u in "${kunits[@]}"; do stale "$dir/sm$a$tag/$u.o" "$u" && jobs+=("$dir/sm$a$tag/$u.o $u $a"); done
done
pids=()
for j in "${jobs[@]}"; do
    read -r obj u a <<<"$j"
    def=()
    [[ $a == - ]] || def=(-D__CUDA_ARCH__="$a" "${defines[@]}")
    # Two compilations at a time.
    "$cxx" "${flags[@]}" "${def[@]}" -c -o "$obj" "$root/kernels/emu/$u.cpp" &
    pids+=($!)
    if (( ${#pids[@]} >= 2 )); then
        wait "${pids[0]}"
        pids=("${pids[@]:1}")
    fi
done
for p in "${pids[@]}"; do wait "$p"; done
run=()
for a in "${archs[@]}"; do
    [[ "${same[$a]}" == "$a" ]] || continue
    bin="$dir/sm$a$tag/emulate"
    objs=()
    for u in "${units[@]}"; do objs+=("$dir/$u.o"); done
    for u in "${kunits[@]}"; do objs+=("$dir/sm$a$tag/$u.o"); done
    relink=0
    [[ -x "$bin" ]] || relink=1
    for o in "${objs[@]}"; do [[ "$o" -nt "$bin" ]] && relink=1; done
    if [[ $relink == 1 ]]; then
        "$cxx" "${flags[@]}" -o "$bin.tmp" "${objs[@]}"
        mv "$bin.tmp" "$bin"
    fi
    run+=("$a")
done

# ASan's leak check would only report the fiber stacks' bookkeeping; the buffers are freed.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}"
# `--out DIR`: each arch's run writes DIR/sm<arch>.bin.
args=("$@")
out_dir=""
for ((i = 0; i + 1 < ${#args[@]}; ++i)); do [[ "${args[i]}" == --out ]] && out_dir="${args[i + 1]}"; done
args_for() {
    local a=("${args[@]}") i
    ((${#a[@]} > 0)) || return 0
    for ((i = 0; i + 1 < ${#a[@]}; ++i)); do [[ "${a[i]}" == --out ]] && a[i + 1]="$out_dir/sm$1.bin"; done
    printf '%s\0' "${a[@]}"
}
# The arches run side by side (EMU_SERIAL=1: one after another), each into its own log; the
# logs are printed in order, then the sum over all of them.
for a in "${run[@]}"; do
    mapfile -d '' -t arch_args < <(args_for "$a")
    if [[ -n "${EMU_SERIAL:-}" ]]; then
        "$dir/sm$a$tag/emulate" "${arch_args[@]}" >"$dir/sm$a$tag/log" 2>&1 && echo 0 >"$dir/sm$a$tag/rc" || echo $? >"$dir/sm$a$tag/rc"
    else
        ( "$dir/sm$a$tag/emulate" "${arch_args[@]}" >"$dir/sm$a$tag/log" 2>&1 && echo 0 >"$dir/sm$a$tag/rc" || echo $? >"$dir/sm$a$tag/rc" ) &
    fi
done
wait
rc=0 passed=0 failed=0
for a in "${archs[@]}"; do
    if [[ "${same[$a]}" != "$a" ]]; then
        echo "== sm_${a%0}: the kernels preprocess to the same text as for sm_${same[$a]%0}: its run covers sm_${a%0}"
        continue
    fi
    echo "== sm_${a%0} (__CUDA_ARCH__ $a)"
    cat "$dir/sm$a$tag/log"
    r="$(cat "$dir/sm$a$tag/rc")"
    [[ $r == 0 ]] || rc=$r
    line="$(tail -n 1 "$dir/sm$a$tag/log")"
    if [[ "$line" =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
        passed=$((passed + BASH_REMATCH[1]))
        failed=$((failed + BASH_REMATCH[2]))
    else
        echo "sm_${a%0}: the emulator stopped early (exit $r)"
        failed=$((failed + 1))
        [[ $r == 0 ]] && rc=1
    fi
done
echo "total over __CUDA_ARCH__ ${run[*]}"
echo "$passed passed, $failed failed"
exit "$rc"
