#!/usr/bin/env bash
# The GPU session in two prepared calls, run on the GPU machine from the repository root with the
# binaries that scripts/gpu-bundle.sh put in .gpu/ (carried: the device tool's carry=[".gpu"]).
#
#   bash scripts/gpu/run.sh A   # environment, GPU tests, burn and candle on CUDA, benchmark, sweep
#                               # (step limits 410 s: the call's own limit is 420), then the
#                               # CPU mix_normalize rows if 34 s of that are left
#   bash scripts/gpu/run.sh B   # CPU vector levels, PyTorch/Liger baseline, probes, sanitizer x4
#                               # (step limits 410 s)
#
# Every step runs under its own `timeout`; each writes one log under $OUT (what comes back from
# the GPU machine: at most 8 files) and the summary (also printed last) says rc, seconds and the
# last result line of each. A step that cannot run here says SKIPPED and the next one starts.
# Tunables: MIXUP_BENCH_ARGS (default "--quick"), MIXUP_TORCH_ARGS (default "--quick"),
# MIXUP_SWEEP_ARGS (default "--quick": every family; e.g. "--quick ce"; "off" skips the sweep),
# MIXUP_GPU_BIN (default .gpu).
set -uo pipefail

mode=${1:-}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
bin="${MIXUP_GPU_BIN:-$root/.gpu}"
out="${OUT:-$root/.gpu/out}"
mkdir -p "$out"
rm -f "$out"/*.log # a rerun here starts clean ($OUT on the GPU machine always does)
summary="$out/summary.txt"
: >"$summary"
start=$SECONDS
failed=0

note() { echo "$*" | tee -a "$summary"; }

# step NAME LIMIT_S FUNCTION [ARGS...]: runs a function of this script in a fresh bash under
# `timeout LIMIT_S` (its whole process group is killed at the limit), output to $out/NAME.log.
step() {
    local name=$1 limit=$2
    shift 2
    local log="$out/$name.log" t0=$SECONDS rc
    echo "== $name (limit ${limit}s): $*" >>"$log"
    timeout --kill-after=5 "$limit" bash -c '"$@"' _ "$@" >>"$log" 2>&1
    rc=$?
    local last
    last=$(grep -E '^test result|ERROR SUMMARY|SKIPPED|Device not supported|^FAILED|^error|^sweep: |^result: |^-- .*: rc=[1-9]' "$log" | tail -1)
    [[ $rc == 124 || $rc == 137 ]] && last="TIMED OUT after ${limit}s; $last"
    [[ $rc != 0 ]] && failed=1
    note "$(printf '%-28s rc=%-3s %4ss  %s' "$name" "$rc" "$((SECONDS - t0))" "$last")"
    return $rc
}

# Inside a step: one bounded piece of it, in the step's log.
sub() { # LABEL LIMIT_S COMMAND...: one bounded piece of a step
    local label=$1 limit=$2
    shift 2
    echo "-- $label (limit ${limit}s)"
    timeout --kill-after=5 "$limit" "$@"
    local rc=$?
    echo "-- $label: rc=$rc"
    return $rc
}

# libnvrtc.so.13: the pip wheel of the machine's python (13.0 preferred), the CUDA toolkit's, a
# carried copy (.gpu/nvrtc, from `gpu-bundle.sh --with-nvrtc`), in that order. No search of /.
find_nvrtc() {
    local wheel toolkit
    wheel=$(python3 - <<'EOF' 2>/dev/null
import importlib.metadata as md, os
try:
    files = md.files("nvidia-cuda-nvrtc") or []
    v = md.version("nvidia-cuda-nvrtc")
except md.PackageNotFoundError:
    files, v = [], ""
for f in files:
    if f.name.startswith("libnvrtc.so.13"):
        print(v, os.path.dirname(f.locate()))
        break
EOF
)
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
        "$(dirname "$(command -v nvcc 2>/dev/null || echo /nonexistent/bin/nvcc)")/../lib64"; do
        if compgen -G "$d/libnvrtc.so.13*" >/dev/null; then toolkit=$d; break; fi
    done
    echo "nvrtc wheel: ${wheel:-none}; toolkit: ${toolkit:-none}" >&2
    if [[ -n "$wheel" && "$wheel" == 13.0.* ]]; then
        echo "${wheel#* }"
    elif [[ -n "${toolkit:-}" ]]; then
        echo "$toolkit"
    elif [[ -n "$wheel" ]]; then
        echo "${wheel#* }"
    elif compgen -G "$bin/nvrtc/libnvrtc.so.13*.xz" >/dev/null; then
        mkdir -p /tmp/mixup-nvrtc
        for f in "$bin"/nvrtc/*.xz; do
            python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
                "$f" "/tmp/mixup-nvrtc/$(basename "${f%.xz}")"
        done
        echo /tmp/mixup-nvrtc
    fi
}

env_check() {
    echo "date: $(date -u +%FT%TZ)  commit: $(cat "$bin/COMMIT" 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv \
        || echo "SKIPPED: nvidia-smi failed (no GPU?)"
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    ls -la "$bin" || echo "error: $bin missing: run scripts/gpu-bundle.sh and carry .gpu"
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())' \
        || echo "torch: not importable"
    for t in compute-sanitizer ncu nvcc; do echo "$t: $(command -v $t || echo missing)"; done
    [[ -n "${MIXUP_NVRTC_LIB:-}" ]] || { echo "error: libnvrtc.so.13 not found"; return 1; }
    echo "NVRTC: $MIXUP_NVRTC_LIB"
}

# A test binary under its own limit: `tests_one NAME LIMIT [filters...]`.
run_test() {
    local name=$1 limit=$2
    shift 2
    local exe="$bin/test-$name"
    if [[ ! -x "$exe" ]]; then echo "error: $exe missing"; return 1; fi
    sub "test-$name" "$limit" "$exe" --test-threads="${MIXUP_TEST_THREADS:-4}" "$@"
}

gpu_tests() {
    local rc=0
    run_test lib 10 cuda:: || rc=1
    MIXUP_TEST_THREADS=1 run_test cuda_plan 15 || rc=1
    run_test cuda_soft_targets 25 || rc=1
    run_test cuda_mix 40 || rc=1
    run_test cuda_mixup_ce 80 || rc=1
    # Until scripts/gpu-bundle.sh builds it, an older bundle has no BCE binary: say so, go on.
    if [[ -x "$bin/test-cuda_mixup_bce" ]]; then
        run_test cuda_mixup_bce 25 || rc=1
    else
        echo "SKIPPED test-cuda_mixup_bce: not in $bin (add cuda_mixup_bce to scripts/gpu-bundle.sh tests)"
    fi
    run_test cuda_mix_normalize 25 || rc=1
    return $rc
}

# burn's CUDA backend (tests/burn.rs, linked by scripts/burn-cuda-offline.sh): the zero-copy ops
# against Flex in every dtype, then the per-call cost next to Flex's.
burn_cuda() {
    if [[ ! -e "$bin/test-burn.xz" ]]; then
        # Left out on purpose (gpu-bundle.sh --no-burn writes NO_BURN): say so. Otherwise the
        # bundle is broken and the step fails, rather than pass without running.
        if [[ -e "$bin/NO_BURN" ]]; then
            echo "SKIPPED test-burn: the bundle was built with --no-burn"
            return 0
        fi
        echo "error: test-burn.xz is not in $bin (scripts/gpu-bundle.sh builds it unless --no-burn)"
        return 1
    fi
    local exe=/tmp/mixup-test-burn rc=0
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
        "$bin/test-burn.xz" "$exe" && chmod +x "$exe" || { echo "error: could not unpack test-burn.xz"; return 1; }
    sub "test-burn cuda" 25 "$exe" --test-threads=2 cuda_ || rc=1
    sub "test-burn per_call_cost_cuda" 13 "$exe" --ignored --exact per_call_cost_cuda --nocapture || rc=1
    return $rc
}

# The folders of the CUDA libraries that candle's cudarc links (scripts/cuda-link-stubs.sh):
# libcublas.so.13 and libcublasLt.so.13 (wheel nvidia-cublas), libcurand.so.10 (nvidia-curand),
# libcudart.so.13 (nvidia-cuda-runtime; candle-kernels' MoE kernels), from the machine's python,
# else the CUDA toolkit's lib64; libcuda.so.1 is the driver's.
cuda_lib_dirs() {
    python3 - <<'EOF' 2>/dev/null
import importlib.metadata as md, os
dirs = []
for pkg, lib in [("nvidia-cublas", "libcublas.so.13"), ("nvidia-cublas", "libcublasLt.so.13"),
                 ("nvidia-curand", "libcurand.so.10"), ("nvidia-cuda-runtime", "libcudart.so.13")]:
    try:
        for f in md.files(pkg) or []:
            if f.name == lib and os.path.dirname(f.locate()) not in dirs:
                dirs.append(os.path.dirname(f.locate()))
    except md.PackageNotFoundError:
        pass
dirs += [d for d in ("/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib") if os.path.isdir(d)]
print(":".join(dirs))
EOF
}

# candle on CUDA storage (feature candle-cuda, linked here by scripts/gpu-bundle.sh): the candle
# tests on the CPU and the GPU against the reference, then the digits demo trained on the GPU.
candle_cuda() {
    if [[ ! -e "$bin/candle-cuda.tar.xz" ]]; then
        # As for burn: SKIPPED when left out on purpose (NO_CANDLE), a failure otherwise.
        if [[ -e "$bin/NO_CANDLE" ]]; then
            echo "SKIPPED candle-cuda: the bundle was built with --no-candle"
            return 0
        fi
        echo "error: candle-cuda.tar.xz is not in $bin (scripts/gpu-bundle.sh builds it unless --no-candle)"
        return 1
    fi
    local dir=/tmp/candle rc=0
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
        "$bin/candle-cuda.tar.xz" /tmp || { echo "error: could not unpack candle-cuda.tar.xz"; return 1; }
    local libs
    libs=$(cuda_lib_dirs)
    echo "CUDA library folders: ${libs:-none found}"
    export LD_LIBRARY_PATH="${libs:+$libs:}$LD_LIBRARY_PATH"
    # candle's kernels are PTX, compiled by the driver when a module is first loaded (about
    # 4.5 MB of it for the tests): the driver's cache lets the 2nd and 3rd process reuse it.
    export CUDA_CACHE_PATH=/tmp/cuda-jit-cache
    # A library the loader cannot find would fail every run below the same way: say which.
    ldd "$dir/test-candle" | grep -E 'not found|libcu|libnvrtc'
    sub "test-candle" 18 "$dir/test-candle" --test-threads=4 || rc=1
    sub "test-candle_mix_normalize" 5 "$dir/test-candle_mix_normalize" --test-threads=2 || rc=1
    # Three epochs per method (the demo's default is 30): that it trains on the GPU, and how fast.
    sub "digits demo on CUDA" 12 "$dir/digits" --device cuda --epochs 3 --no-progress \
        --out /tmp/mixup-digits || rc=1
    return $rc
}

bench() {
    if [[ ! -x "$bin/bench-gpu" ]]; then echo "error: $bin/bench-gpu missing"; return 1; fi
    # shellcheck disable=SC2086
    "$bin/bench-gpu" ${MIXUP_BENCH_ARGS:---quick}
}

# The tuning sweep (benches/gpu/sweep.rs): each kernel family under a small grid of
# KernelTuning points, every point against the copy of the same bytes, the best marked.
sweep() {
    if [[ "${MIXUP_SWEEP_ARGS:-}" == off ]]; then echo "SKIPPED: MIXUP_SWEEP_ARGS=off"; return 0; fi
    if [[ ! -x "$bin/bench-gpu" ]]; then echo "error: $bin/bench-gpu missing"; return 1; fi
    # shellcheck disable=SC2086
    "$bin/bench-gpu" --sweep ${MIXUP_SWEEP_ARGS:---quick}
}

# The CPU path's fused pixels -> model input (issue 14's target: at least 0.70 of a copy of the
# op's byte floor), on this machine's many cores and on 2 threads (as the 2-vCPU machines of
# BENCHMARKS.md), the bf16 and f32 channels-first rows: fused op and copy, short criterion runs
# (MIXUP_BENCH_QUICK: 0.6 s each). Runs last in mode A, in the time the steps before left.
cpu_bench() {
    if [[ ! -x "$bin/bench-cpu" ]]; then echo "SKIPPED: $bin/bench-cpu missing"; return 0; fi
    local filter='mix_normalize_.*_nchw_(bf16|f32)/(fused|copy)' rc=0
    echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), $(nproc) threads"
    export MIXUP_BENCH_QUICK=1 CRITERION_HOME=/tmp/criterion
    sub "bench-cpu all threads" 14 "$bin/bench-cpu" --bench "$filter" --noplot | tee /tmp/cpu-all.txt
    ((PIPESTATUS[0] == 0)) || rc=1
    # 8-11 s on the 2-vCPU Zen 3 of 2026-12-02.
    RAYON_NUM_THREADS=2 sub "bench-cpu 2 threads" 16 "$bin/bench-cpu" --bench "$filter" --noplot |
        tee /tmp/cpu-2.txt
    ((PIPESTATUS[0] == 0)) || rc=1
    # One line for the summary: copy / fused from criterion's medians, per row.
    python3 - /tmp/cpu-all.txt /tmp/cpu-2.txt <<'EOF'
import re, sys
unit = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}
parts = []
for path, label in zip(sys.argv[1:], ["all threads", "2 threads"]):
    med, name = {}, None
    for line in open(path, encoding="utf-8", errors="replace"):
        m = re.match(r"^(mix_normalize\S+)/(fused|copy)\s*$", line)
        if m:
            name = (m.group(1), m.group(2))
        m = re.search(r"time:\s+\[\S+ \S+ (\S+) (\S+) ", line)
        if m and name:
            med[name] = float(m.group(1)) * unit.get(m.group(2), float("nan"))
            name = None
    rows = sorted({r for r, _ in med})
    ratios = [f"{r.rsplit('_', 1)[-1]} {med[(r, 'copy')] / med[(r, 'fused')]:.2f}"
              for r in rows if (r, "copy") in med and (r, "fused") in med]
    parts.append(f"{label}: " + (", ".join(ratios) or "none"))
print("result: copy / fused, " + "; ".join(parts))
EOF
    return $rc
}

torch_baseline() {
    local whl
    whl=$(compgen -G "$bin/whl/liger_kernel-*.whl" | head -1)
    if [[ -n "$whl" ]]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/liger "$whl" \
            && export PYTHONPATH="/tmp/liger${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "no Liger-Kernel wheel carried ($bin/whl)"
    fi
    # shellcheck disable=SC2086
    PYTHONUNBUFFERED=1 python3 benches/torch_baseline.py --require-liger ${MIXUP_TORCH_ARGS:---quick}
}

# The CPU paths' bit-identity tests at every vector level of this host's CPU (no GPU needed; the
# CI machine has no AVX-512, so its V4 and AVX512-BF16 paths run here first), the best level
# the CPU lists required (MIXUP_REQUIRE_ISA: a level missing fails instead of shrinking the test).
cpu_levels() {
    local want=v3
    grep -qw avx512f /proc/cpuinfo && want=v4
    grep -qw avx512_bf16 /proc/cpuinfo && want=v4-bf16
    echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-); requiring level $want"
    MIXUP_REQUIRE_ISA=$want run_test lib 12 cpu::
}

env_and_cpu_levels() {
    local rc=0
    env_check || rc=1
    cpu_levels || rc=1
    return $rc
}

# A tiny run of a tool: does it accept the device here? Writes the verdict to the log.
probe() { # TOOL ARGS...
    local tool=$1
    shift
    if ! command -v "$tool" >/dev/null; then
        echo "SKIPPED: $tool not installed"
        touch "/tmp/no-$tool"
        return 0
    fi
    local log=/tmp/probe-$tool.log
    timeout --kill-after=5 25 "$tool" "$@" "$bin/test-cuda_soft_targets" --exact same_class_partners_add_up >"$log" 2>&1
    local rc=$?
    tail -15 "$log"
    if grep -q "Device not supported" "$log"; then
        echo "PROBE $tool: Device not supported"
        touch "/tmp/no-$tool"
    elif [[ $rc == 0 ]]; then
        echo "PROBE $tool: works"
    else
        echo "PROBE $tool: rc=$rc"
        touch "/tmp/no-$tool"
    fi
}

probes() {
    probe compute-sanitizer --tool memcheck
    probe ncu --clock-control none --launch-count 1 --metrics gpu__time_duration.sum
}

# sanitize TOOL: bounded subsets of the GPU tests under compute-sanitizer's TOOL.
sanitize() {
    local tool=$1
    if [[ -e /tmp/no-compute-sanitizer ]]; then
        echo "SKIPPED: compute-sanitizer is missing, refused the device or failed its probe (probe.log)"
        return 0
    fi
    local cs=(compute-sanitizer --tool "$tool" --error-exitcode 99 --print-limit 20)
    [[ $tool == racecheck ]] && cs+=(--racecheck-report all)
    local rc=0 item name limit filters
    # name:limit:filters (space-separated test-name filters); subsets kept small: the tools
    # slow kernels 10-100x.
    local -a items
    case $tool in
        memcheck) items=("cuda_plan:15:pinned" "cuda_mix:20:mix_bf16 mix_u8 pinned_staging"
            "cuda_soft_targets:12:soft_targets_bf16 device_labels" "cuda_mixup_ce:30:deterministic device_labels empty_batch"
            "cuda_mix_normalize:10:sanitizer_sized") ;;
        racecheck) items=("cuda_mixup_ce:33:deterministic" "cuda_mix:15:mix_f32" "cuda_soft_targets:10:soft_targets_f32"
            "cuda_mix_normalize:10:sanitizer_sized") ;;
        synccheck) items=("cuda_mixup_ce:20:deterministic" "cuda_mix:13:mix_bf16") ;;
        initcheck) items=("cuda_mixup_ce:20:deterministic device_labels" "cuda_mix:13:mix_u8") ;;
    esac
    for item in "${items[@]}"; do
        IFS=: read -r name limit filters <<<"$item"
        # shellcheck disable=SC2086
        sub "$tool $name" "$limit" "${cs[@]}" "$bin/test-$name" --test-threads=1 $filters || rc=1
    done
    return $rc
}

nvrtc_dir=$(find_nvrtc 2>/tmp/nvrtc-search.txt)
export MIXUP_NVRTC_LIB="$nvrtc_dir"
[[ -n "$nvrtc_dir" ]] && export LD_LIBRARY_PATH="$nvrtc_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# A GPU test that finds no GPU fails instead of skipping; so does the benchmark.
export MIXUP_REQUIRE_GPU=1 MIXUP_REQUIRE_NVRTC=1
export MIXUP_KERNELS_CACHE="${MIXUP_KERNELS_CACHE:-/tmp/mixup-kernels-cache}"
export -f sub run_test gpu_tests burn_cuda cuda_lib_dirs candle_cuda env_check bench sweep cpu_bench torch_baseline cpu_levels env_and_cpu_levels probe probes sanitize
export bin out

note "mode ${mode:-?} on $(hostname) $(date -u +%FT%TZ); $(cat /tmp/nvrtc-search.txt)"
case "$mode" in
    A)
        step env 15 env_check
        step tests 220 gpu_tests
        step burn 40 burn_cuda
        step bench 65 bench
        step candle 40 candle_cuda
        step sweep 30 sweep
        # What the call's 420 s leave (the limits above add up to 410; steps end sooner).
        left=$((410 - (SECONDS - start)))
        if ((left >= 34)); then
            step cpu_bench 34 cpu_bench
        else
            note "cpu_bench: SKIPPED, ${left}s left of the call's time"
        fi
        ;;
    B)
        rm -f /tmp/no-compute-sanitizer /tmp/no-ncu # verdicts of an earlier call
        step env 30 env_and_cpu_levels # one log: at most 8 files come back
        step torch 90 torch_baseline
        step probe 60 probes
        step memcheck 90 sanitize memcheck
        step racecheck 70 sanitize racecheck
        step synccheck 35 sanitize synccheck
        step initcheck 35 sanitize initcheck
        ;;
    *)
        echo "usage: bash scripts/gpu/run.sh A|B" >&2
        exit 2
        ;;
esac
note "mode $mode done in $((SECONDS - start)) s; files in $out: $(ls "$out" | wc -l)"
echo "===== summary"
cat "$summary"
exit $failed
