#!/usr/bin/env bash
# Builds tests/burn.rs with burn's CUDA backend (feature `burn-cuda-cpp`) on a machine that
# cannot download tracel's LLVM bundle (no github.com: this machine, CI, the lent GPU machines).
#
# Why: cubecl-cuda 0.11 always links cubecl-llvm, whose build script downloads a prebuilt LLVM
# 23 from github.com. With DOCS_RS=1 the build scripts of cubecl-llvm and tracel-llvm-bundler
# skip the download and the link (and nothing else in the tree reads DOCS_RS), so the final
# link lacks the LLVM symbols that cubecl-llvm's (unused) code references. This script lists
# them from the linker's errors and links them as stubs that print a message and abort.
# `burn-cuda-cpp` turns on cubecl-cuda's `cpp` feature: burn's kernels go through its CUDA C++
# backend (NVRTC, like this crate's), so no LLVM code runs. Not for releases: a machine that can
# fetch the bundle builds with plain `--features burn-cuda`.
#
#   bash scripts/burn-cuda-offline.sh [DEST]   # prints the test binary's path (copied to DEST)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export DOCS_RS=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/burn-cuda-offline}"
stub="$CARGO_TARGET_DIR/llvm-stub"
mkdir -p "$stub"
args=(rustc --release --features burn-cuda-cpp --test burn --message-format=json-render-diagnostics)

# The test binary's path from cargo's JSON messages.
exe_of() { python3 "$root/scripts/cargo_executables.py" | awk '{print $2}'; }

# 1. Build; the final link fails on the LLVM symbols. Every one is listed (no error limit) by
# its linker name (no demangling): rust-lld says "undefined symbol: NAME", GNU ld "undefined
# reference to `NAME'".
echo "building (burn + cubecl-cuda, release: 20-30 min cold on 2 cores)..." >&2
link1=(-C link-arg=-Wl,--no-demangle -C link-arg=-Wl,--error-limit=0)
if exe=$(cargo "${args[@]}" -- "${link1[@]}" 2>"$stub/link.err" | exe_of) && [[ -n "$exe" ]]; then
    echo "linked without stubs" >&2
else
    {
        grep -oE "undefined symbol: [^ ]+" "$stub/link.err" | sed -E "s/undefined symbol: //" || true
        grep -oE "undefined reference to \`[^']+'" "$stub/link.err" |
            sed -E "s/undefined reference to \`(.*)'/\1/" || true
    } | sort -u >"$stub/symbols.txt"
    n=$(wc -l <"$stub/symbols.txt")
    if [[ $n == 0 ]]; then
        tail -40 "$stub/link.err" >&2
        echo "error: the build failed for another reason than missing LLVM symbols" >&2
        exit 1
    fi
    echo "stubbing $n LLVM symbols" >&2
    # 2. One aborting function per symbol, named by an asm label (any linker name works).
    python3 - "$stub/symbols.txt" "$stub/stub.c" <<'EOF'
import sys
names = [l.strip() for l in open(sys.argv[1]) if l.strip()]
with open(sys.argv[2], "w") as f:
    f.write('#include <stdio.h>\n#include <stdlib.h>\n'
            'static void fail(const char *name) {\n'
            '  fprintf(stderr, "mixup-kernels: %s is an LLVM stub (scripts/burn-cuda-offline.sh):'
            ' this binary has no LLVM; cubecl-cuda must use its C++ backend (feature burn-cuda-cpp)\\n", name);\n'
            '  abort();\n}\n')
    for i, n in enumerate(names):
        q = n.replace('\\', '\\\\').replace('"', '\\"')
        f.write(f'void llvm_stub_{i}(void) __asm__("{q}");\n'
                f'void llvm_stub_{i}(void) {{ fail("{q}"); }}\n')
EOF
    cc -O1 -c -fPIC "$stub/stub.c" -o "$stub/stub.o"
    ar crs "$stub/libmixup_llvm_stub.a" "$stub/stub.o"
    # 3. Link again with the stubs (only the test crate is recompiled).
    exe=$(cargo "${args[@]}" -- -C link-arg="$stub/libmixup_llvm_stub.a" 2>"$stub/link2.err" | exe_of) || {
        tail -40 "$stub/link2.err" >&2
        echo "error: linking with the stubs failed" >&2
        exit 1
    }
fi
if [[ $# -ge 1 ]]; then
    cp "$exe" "$1"
    exe=$1
fi
echo "$exe"
