#!/usr/bin/env bash
# Builds here (no GPU or CUDA toolkit needed: kernels are compiled at run time by NVRTC) what the
# GPU machine runs, into the git-ignored folder .gpu/ that the device tool carries
# (carry=[".gpu"]); the runner, scripts/gpu/run.sh, travels with the repository.
#
#   bash scripts/gpu-bundle.sh                # test + bench binaries, Liger-Kernel's wheel
#   bash scripts/gpu-bundle.sh --with-nvrtc   # + libnvrtc 13.0 (xz, ~30 MB), only if the GPU
#                                             #   machine turned out to lack it
#   bash scripts/gpu-bundle.sh --dry-run      # + runs both modes here, without a GPU
#   bash scripts/gpu-bundle.sh --no-burn      # without test-burn (its build: 20-30 min cold)
#   bash scripts/gpu-bundle.sh --no-candle    # without the candle-cuda binaries (their build:
#                                             #   about 20 min cold, nvcc from PyPI)
#
# .gpu/ holds: bench-cpu (the CPU benchmarks: mode A times the mix_normalize rows on the GPU
# machine's many cores), test-<name> (lib, cuda_plan, cuda_mix, cuda_soft_targets, cuda_mixup_ce,
# cuda_mixup_bce, cuda_mix_normalize), test-burn.xz (tests/burn.rs with burn's CUDA backend,
# linked without LLVM by scripts/burn-cuda-offline.sh, xz-compressed), candle-cuda.tar.xz
# (tests/candle.rs, tests/candle_mix_normalize.rs and the digits demo built with `candle-cuda`,
# linked against scripts/cuda-link-stubs.sh's stand-ins for the CUDA libraries),
# bench-gpu, whl/liger_kernel-*.whl, COMMIT, and with --with-nvrtc nvrtc/*.xz. Binaries are built
# without debug info and stripped; everything that travels must fit in 64 MiB.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
with_nvrtc=0 dry_run=0 with_burn=1 with_candle=1
for a in "$@"; do
    case $a in
        --with-nvrtc) with_nvrtc=1 ;;
        --dry-run) dry_run=1 ;;
        --no-burn) with_burn=0 ;;
        --no-candle) with_candle=0 ;;
        *) echo "usage: $0 [--with-nvrtc] [--dry-run] [--no-burn] [--no-candle]" >&2; exit 2 ;;
    esac
done
out=.gpu
rm -rf "$out"
mkdir -p "$out/whl"

export CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_BENCH_DEBUG=0

# Cargo prints one JSON object per artifact; test and bench executables carry "executable".
pick() { python3 scripts/cargo_executables.py; }

tests=(cuda_plan cuda_mix cuda_soft_targets cuda_mixup_ce cuda_mixup_bce cuda_mix_normalize)
args=(--release --no-run --message-format=json --lib)
for t in "${tests[@]}"; do args+=(--test "$t"); done
echo "building the test binaries..." >&2
cargo test "${args[@]}" | pick | while read -r name exe; do cp "$exe" "$out/test-$name"; done
echo "building the benchmark..." >&2
cargo bench --no-run --bench gpu --bench cpu --message-format=json | pick |
    while read -r name exe; do cp "$exe" "$out/bench-$name"; done
if [[ $with_burn == 1 ]]; then
    echo "building the burn CUDA test binary (scripts/burn-cuda-offline.sh)..." >&2
    bash scripts/burn-cuda-offline.sh "$out/test-burn" >&2
else
    # scripts/gpu/run.sh: the burn step says SKIPPED with this, fails without the binary else.
    echo "built with --no-burn" >"$out/NO_BURN"
fi
if [[ $with_candle == 1 ]]; then
    # candle links cudarc dynamically (libcuda, libnvrtc, libcublas, libcublasLt, libcurand):
    # linked here against stand-ins with the real SONAMEs, which the GPU machine's driver and
    # python wheels provide at run time (scripts/gpu/run.sh). candle-kernels' PTX needs nvcc
    # (PyPI, scripts/candle-cuda-env.sh). Own target folder: other RUSTFLAGS, other features.
    echo "building the candle-cuda tests and demo (scripts/cuda-link-stubs.sh)..." >&2
    mkdir -p "$out/candle"
    (
        # nvcc and libcudart first: the stubs' folder links the wheel's libcudart ($CUDA_ROOT).
        eval "$(bash scripts/candle-cuda-env.sh)"
        bash scripts/cuda-link-stubs.sh "$root/target/cuda-stubs"
        export RUSTFLAGS="-L native=$root/target/cuda-stubs"
        ccargs=(--release --no-default-features --features candle-cuda --target-dir target/candle-cuda
            --message-format=json)
        cargo test "${ccargs[@]}" --no-run --test candle --test candle_mix_normalize | pick |
            while read -r name exe; do cp "$exe" "$out/candle/test-$name"; done
        cargo build "${ccargs[@]}" --example digits | pick |
            while read -r name exe; do cp "$exe" "$out/candle/$name"; done
    )
    for f in test-candle test-candle_mix_normalize digits; do
        [[ -x "$out/candle/$f" ]] || { echo "error: candle-cuda $f not built" >&2; exit 1; }
    done
    strip "$out"/candle/*
    # 150 MB stripped, mostly the same bytes three times (candle, candle-kernels' PTX): one
    # archive with a dictionary larger than a binary stores them about once (8 MB on
    # 2026-12-02, against 20 MB with xz's default 8 MiB dictionary; 2 minutes on 2 cores).
    echo "compressing the candle-cuda binaries..." >&2
    tar -C "$out" -cf - candle | xz -T1 --lzma2=preset=6,dict=192MiB >"$out/candle-cuda.tar.xz"
    rm -r "$out/candle"
else
    # scripts/gpu/run.sh: the candle step says SKIPPED with this, fails without the archive else.
    echo "built with --no-candle" >"$out/NO_CANDLE"
fi
strip "$out"/test-* "$out"/bench-*
if [[ -e "$out/test-burn" ]]; then
    # 65 MiB stripped (burn, cubecl and stubbed LLVM code): carried xz-compressed (~10 MiB);
    # scripts/gpu/run.sh unpacks it with python's lzma.
    echo "compressing test-burn..." >&2
    xz -T0 -6 "$out/test-burn"
fi
for t in lib "${tests[@]}"; do [[ -x "$out/test-$t" ]] || { echo "error: test-$t not built" >&2; exit 1; }; done
for b in gpu cpu; do [[ -x "$out/bench-$b" ]] || { echo "error: bench-$b not built" >&2; exit 1; }; done
git rev-parse HEAD >"$out/COMMIT"
git diff --quiet HEAD -- src tests benches kernels || echo "(built with uncommitted changes)" >>"$out/COMMIT"

# Liger-Kernel is not installed on the GPU machine: carry its wheel (pure Python, no deps needed
# beyond torch and triton, which are there).
python3 -m pip download -q --no-deps --only-binary=:all: -d "$out/whl" "liger-kernel" >&2 ||
    echo "warning: could not download Liger-Kernel's wheel; the baseline will run without it" >&2

if [[ $with_nvrtc == 1 ]]; then
    lib="$(bash scripts/nvrtc.sh)"
    mkdir -p "$out/nvrtc"
    for f in libnvrtc.so.13 libnvrtc-builtins.so.13.0; do
        echo "compressing $f (a few minutes on 2 cores)..." >&2
        xz -T0 -6 -c "$lib/$f" >"$out/nvrtc/$f.xz"
    done
fi

du -b "$out"/* "$out"/*/* 2>/dev/null | sort -n >&2
total=$(du -sb "$out" | cut -f1)
echo "total: $((total / 1024 / 1024)) MiB of the 64 MiB that may travel (with the tracked tree)" >&2
if ((total > 56 * 1024 * 1024)); then
    echo "error: .gpu is too large to carry with the working tree" >&2
    exit 1
fi

if [[ $dry_run == 1 ]]; then
    for m in A B; do
        echo "===== dry run of mode $m (no GPU here: steps must fail fast or say SKIPPED)" >&2
        OUT="target/gpu-dry/$m" bash scripts/gpu/run.sh "$m" || true
    done
fi
