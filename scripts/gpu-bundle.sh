#!/usr/bin/env bash
# Builds the GPU test and benchmark binaries here (no GPU or CUDA toolkit needed: kernels are
# compiled at run time by NVRTC) and copies them, with a runner script, into .gpu/ (git-ignored),
# to carry to the GPU machine. docs/gpu.md has the commands to run there.
#
#   bash scripts/gpu-bundle.sh            # then carry .gpu (device tool: carry=[".gpu"])
#
# Binaries are built without debug info and stripped: everything that travels must fit in
# 64 MiB.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out=.gpu
rm -rf "$out"
mkdir -p "$out"

export CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_BENCH_DEBUG=0

tests=(cuda_mix cuda_soft_targets cuda_mixup_ce kernels_compile)
args=(--release --no-run --message-format=json --lib)
for t in "${tests[@]}"; do args+=(--test "$t"); done

# Cargo prints one JSON object per artifact; test executables have profile.test = true.
pick() {
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        kind = m["target"]["kind"][0]
        name = "lib" if kind == "lib" else m["target"]["name"]
        print(name, m["executable"])
'
}

echo "building test binaries..." >&2
cargo test "${args[@]}" | pick | while read -r name exe; do
    cp "$exe" "$out/test-$name"
done
echo "building the benchmark..." >&2
cargo bench --no-run --bench gpu --message-format=json | pick | while read -r name exe; do
    cp "$exe" "$out/bench-$name"
done
if command -v strip >/dev/null; then strip "$out"/test-* "$out"/bench-* 2>/dev/null || true; fi

cat >"$out/run.sh" <<'EOF'
#!/usr/bin/env bash
# Runs on the GPU machine from the repository root: bash .gpu/run.sh tests|sanitize|bench|torch|all
# Writes logs under $OUT (or .gpu/logs) and prints a summary last.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
logs="${OUT:-$here/logs}"
mkdir -p "$logs"
# NVRTC 13: from the CUDA toolkit or the pip wheel in the image, whichever is found first.
if [[ -z "${MIXUP_NVRTC_LIB:-}" ]]; then
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
             $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' 2>/dev/null); do
        if compgen -G "$d/libnvrtc.so.13*" >/dev/null; then MIXUP_NVRTC_LIB="$d"; break; fi
    done
    : "${MIXUP_NVRTC_LIB:=$(dirname "$(find / -name 'libnvrtc.so.13' -not -path '*/proc/*' 2>/dev/null | head -1)")}"
fi
export LD_LIBRARY_PATH="$MIXUP_NVRTC_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export MIXUP_REQUIRE_GPU=1 MIXUP_REQUIRE_NVRTC=1 MIXUP_KERNELS_CACHE="$here/cache"
echo "NVRTC from $MIXUP_NVRTC_LIB"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
summary=()
step() { # name, command...
    local name=$1; shift
    local t0=$SECONDS
    "$@" >"$logs/$name.log" 2>&1
    local rc=$?
    summary+=("$name: rc=$rc ($((SECONDS - t0)) s) $(grep -E '^test result|ERROR SUMMARY|passed|failed' "$logs/$name.log" | tail -1)")
    tail -5 "$logs/$name.log"
}
tests() {
    for t in "$here"/test-*; do step "$(basename "$t")" "$t" --test-threads=1; done
}
sanitize() {
    local cs; cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    for tool in memcheck racecheck; do
        for t in cuda_mix cuda_soft_targets cuda_mixup_ce; do
            step "$tool-$t" "$cs" --tool "$tool" --error-exitcode 99 "$here/test-$t" --test-threads=1 ${MIXUP_SANITIZE_FILTER:-}
        done
    done
}
bench() { step bench "$here/bench-gpu" ${MIXUP_BENCH_ARGS:-}; cat "$logs/bench.log"; }
torch_baseline() { step torch env PYTHONUNBUFFERED=1 python3 "$here/../benches/torch_baseline.py" ${MIXUP_BENCH_ARGS:-}; cat "$logs/torch.log"; }
case "${1:-all}" in
    tests) tests ;;
    sanitize) sanitize ;;
    bench) bench ;;
    torch) torch_baseline ;;
    all) tests; sanitize; bench ;;
    *) echo "usage: $0 tests|sanitize|bench|torch|all"; exit 2 ;;
esac
printf '%s\n' "${summary[@]}"
EOF
chmod +x "$out/run.sh"
du -sh "$out" >&2
ls -la "$out" >&2
