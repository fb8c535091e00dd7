#!/usr/bin/env bash
# The test command (README.md). Works on a fresh machine with Rust and Python/pip, no GPU and no
# CUDA toolkit: it installs NVRTC 13.0 from PyPI (cached under target/nvrtc) so every CUDA kernel is
# compiled for sm_75/80/89/90 by the tests, then runs the whole suite in every feature set the crate
# ships. GPU tests print that they were skipped when no device is present.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

nvrtc_lib="$(bash scripts/nvrtc.sh)"
export LD_LIBRARY_PATH="$nvrtc_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# Kernel compile tests fail (instead of skipping) when NVRTC cannot be loaded, and the kernel
# emulation (tests/kernels_emulated) when there is no C++ compiler.
export MIXUP_REQUIRE_NVRTC=1 MIXUP_REQUIRE_EMULATION=1

step() { printf '\n==> %s\n' "$*"; "$@"; }

# Default features: CPU path + CUDA path (kernels compiled through NVRTC; GPU runs skip here).
step cargo test --profile ci
# CPU-only build: no `cuda` module; `check_cuda` says which feature is off. The unit tests and
# every doctest (the CPU ones run without a `cuda` module). The integration tests run the same CPU
# code as above (no CPU code depends on `cuda`); clippy (.ci/run) builds them in this feature set.
step cargo test --profile ci --no-default-features --features cpu --lib
step cargo test --profile ci --no-default-features --features cpu --doc
# candle integration (CPU storage): the crate's unit tests and the candle tests, then the candle
# doctests and the README's. The other test files do not change with the feature (none names it)
# and ran above: running them again cost CI about 7 minutes of builds and 3 of tests (2026-12-01).
step cargo test --profile ci --features candle --lib --test candle --test candle_mix_normalize
step cargo test --profile ci --features candle --doc -- candle ReadmeDoctests
# burn integration (Flex CPU backend; burn 0.22 needs Rust 1.95): the crate's unit tests and the
# burn tests, then the burn doctests and the README's (its burn block). The rest of the suite does
# not change with the feature and ran above; the burn demo is type-checked by clippy (.ci/run).
step cargo test --profile ci --features burn --lib --test burn
step cargo test --profile ci --features burn --doc -- burn ReadmeDoctests
# The bare crate (sampler, plans, reference) must build and pass on its own.
step cargo test --profile ci --no-default-features
