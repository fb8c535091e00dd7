#!/usr/bin/env python3
"""Compiles every kernel module through NVRTC (no GPU needed) and prints ptxas's resource report.

    LD_LIBRARY_PATH=$(bash scripts/nvrtc.sh) python3 scripts/kernel_report.py [--arch sm_90] \
        [--cubin-dir DIR] [--module mix] [--time]

Prints one line per kernel entry: registers, spill stores/loads, stack frame, static shared
memory, as ptxas reports them with `--ptxas-options=-v` (docs/perf-notes.md records the sm_90
table). With --time each compilation unit is compiled alone (as the crate does on a first call)
and timed. With --cubin-dir the CUBINs are written there, for `cuobjdump -sass`.
The sources are assembled exactly as build.rs does: kernels/common.cuh + kernels/<module>.cu
(the bench's naive baseline: benches/gpu/naive.cu, as benches/gpu/naive.rs assembles it).
"""
import argparse
import ctypes
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = ["mix", "soft_targets", "mixup_ce", "naive"]


def units(module):
    """The compilation units of a module: the names in its `MIXUP_ONLY_<unit>` guards."""
    return sorted(set(re.findall(r"MIXUP_ONLY_(\w+[a-z0-9])\b", source(module))))


def load_nvrtc():
    for name in ("libnvrtc.so.13", "libnvrtc.so"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            pass
    sys.exit("libnvrtc not found: export LD_LIBRARY_PATH=$(bash scripts/nvrtc.sh)")


def source(module):
    with open(os.path.join(ROOT, "kernels", "common.cuh")) as f:
        common = f.read()
    folder = ("benches", "gpu") if module == "naive" else ("kernels",)
    with open(os.path.join(ROOT, *folder, module + ".cu")) as f:
        body = f.read()
    # Same as build.rs: a #line directive keeps NVRTC's messages pointing at the real file.
    return common + '\n#line 1 "' + module + '.cu"\n' + body


def compile_module(nv, module, define, arch, extra):
    prog = ctypes.c_void_p()
    src = source(module).encode()
    rc = nv.nvrtcCreateProgram(ctypes.byref(prog), src, (module + ".cu").encode(), 0, None, None)
    assert rc == 0, rc
    # The options src/cuda/context.rs passes (plus -v for the report).
    opts = ["--gpu-architecture=" + arch, "--std=c++17", "--minimal", "-D" + define + "=1",
            "--ptxas-options=-v"] + extra
    arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    t0 = time.time()
    rc = nv.nvrtcCompileProgram(prog, len(opts), arr)
    dt = time.time() - t0
    size = ctypes.c_size_t()
    nv.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    buf = ctypes.create_string_buffer(size.value)
    nv.nvrtcGetProgramLog(prog, buf)
    log = buf.value.decode(errors="replace")
    cubin = None
    if rc == 0:
        nv.nvrtcGetCUBINSize(prog, ctypes.byref(size))
        cb = ctypes.create_string_buffer(size.value)
        nv.nvrtcGetCUBIN(prog, cb)
        cubin = cb.raw
    nv.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc, log, cubin, dt


def parse(log):
    """Yields (entry, regs, spill_st, spill_ld, stack, smem) from ptxas -v output."""
    rows = {}
    cur = None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            cur = m.group(1)
            rows[cur] = {"regs": 0, "spst": 0, "spld": 0, "stack": 0, "smem": 0}
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            rows[cur]["stack"], rows[cur]["spst"], rows[cur]["spld"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            rows[cur]["regs"] = int(m.group(1))
        m = re.search(r"(\d+) bytes smem", line)
        if m:
            rows[cur]["smem"] = int(m.group(1))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--module", action="append")
    ap.add_argument("--cubin-dir")
    ap.add_argument("--time", action="store_true", help="also print compile time per module")
    ap.add_argument("--log", action="store_true", help="print the raw NVRTC log")
    ap.add_argument("extra", nargs="*", help="extra NVRTC options")
    a = ap.parse_args()
    nv = load_nvrtc()
    major, minor = ctypes.c_int(), ctypes.c_int()
    nv.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    print(f"NVRTC {major.value}.{minor.value}, {a.arch}")
    print(f"{'module':<13} {'entry':<24} {'regs':>4} {'spill st/ld':>11} {'stack':>5} {'smem':>5}")
    failed = False
    for module in a.module or MODULES:
        # --time: one compilation per unit, as the crate compiles them; else one per module.
        todo = [("MIXUP_ONLY_" + u, u) for u in units(module)] if a.time else [("MIXUP_ALL", module)]
        for define, label in todo:
            rc, log, cubin, dt = compile_module(nv, module, define, a.arch, a.extra)
            if rc != 0:
                print(f"{label}: NVRTC error {rc}\n{log}")
                failed = True
                continue
            if a.log:
                print(log)
            for entry, r in sorted(parse(log).items()):
                print(f"{module:<13} {entry:<24} {r['regs']:>4} {r['spst']:>5}/{r['spld']:<5} {r['stack']:>5} {r['smem']:>5}")
            if a.time:
                print(f"{'':<13} {label:<24} compiled in {dt * 1000:.0f} ms")
            if a.cubin_dir and cubin:
                os.makedirs(a.cubin_dir, exist_ok=True)
                with open(os.path.join(a.cubin_dir, f"{label}.{a.arch}.cubin"), "wb") as f:
                    f.write(cubin)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
