#!/usr/bin/env python3
"""PyTorch baselines on the grid of benches/gpu.rs, printed in the same table format.

    python3 benches/torch_baseline.py [filter ...] [--quick] [--compile] [--require-liger]

What people run today, on the same GPU:
- mixup cross-entropy forward+backward: two index-target F.cross_entropy calls blended by lam
  (how PyTorch and Liger users do mixup); timm's soft target + SoftTargetCrossEntropy; and
  Liger-Kernel's fused cross-entropy called twice (and once, as a lower bound). Liger writes the
  gradient into its input during the forward pass, so each of its calls gets logits of its own
  (a user would clone; the clone is not timed, so the Liger rows are a lower bound);
- soft targets: timm's mixup_target (two one-hots, a flip, a blend);
- mix: eager `lerp` with a permuted gather (fastai: lerp(x[perm], x, lam)), timm's flip in place
  (x.flip(0).mul_(1-lam); x.mul_(lam).add_(...)), timm's CutMix paste (NCHW, and NHWC as a
  channels-last tensor).
With --compile, each torch variant also runs under torch.compile (off by default: it compiles
dozens of graphs, minutes). Groups run in that order (CE first), each row printed as it is
measured, beside a device-to-device copy of the same bytes timed in the same run.
Exit status: 1 when MIXUP_REQUIRE_GPU=1 and torch or the GPU is missing; 2 when --require-liger
and Liger-Kernel cannot be imported (the torch rows still run); 3 when a row failed.

Method as in benches/gpu.rs: CUDA events, warm-up, median of synchronized repetitions, inputs
rotated when one set fits in L2, random data; GB/s at the op's byte floor
(shared/REFERENCE.md) and the ratio to a device-to-device copy of the same bytes in this run.
"""
import argparse
import os
import sys

REQUIRE_GPU = os.environ.get("MIXUP_REQUIRE_GPU") == "1"

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - the GPU machine has torch
    print("torch baseline SKIPPED: torch is not installed", flush=True)
    sys.exit(1 if REQUIRE_GPU else 0)

ERRORS = []


def error_row(op, dtname, shape, variant, e):
    ERRORS.append(f"{op} {dtname} {shape} {variant}")
    print(f"| {op} | {dtname} | {shape} | {variant} | error: {type(e).__name__}: {str(e)[:120]} | | | |", flush=True)


class Bench:
    def __init__(self, reps, warmup, filters, use_compile):
        self.reps, self.warmup, self.filters, self.use_compile = reps, warmup, filters, use_compile
        self.l2 = torch.cuda.get_device_properties(0).L2_cache_size or (50 << 20)

    def wanted(self, op):
        return not self.filters or any(f in op for f in self.filters)

    def time(self, fn):
        for i in range(self.warmup):
            fn(i)
        torch.cuda.synchronize()
        ms = []
        for i in range(self.reps):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn(self.warmup + i)
            end.record()
            end.synchronize()
            ms.append(start.elapsed_time(end))
        ms.sort()
        return ms[len(ms) // 2], ms[0], ms[-1]

    def sets(self, nbytes):
        if nbytes >= 2 * self.l2:
            return 1
        return max(2, min(16, -(-2 * self.l2 // max(nbytes, 1))))

    def copy(self, floor_bytes):
        half = max(floor_bytes // 2, 4)
        n = self.sets(half)
        src = [torch.randint(1, 255, (half,), dtype=torch.uint8, device="cuda") for _ in range(n)]
        dst = [torch.empty_like(s) for s in src]
        return self.time(lambda i: dst[i % n].copy_(src[i % n]))

    @staticmethod
    def row(op, dtype, shape, variant, floor, t, copy):
        med, lo, hi = t
        gbs = floor / (med * 1e-3) / 1e9
        copy_gbs = floor / (copy[0] * 1e-3) / 1e9
        print(f"| {op} | {dtype} | {shape} | {variant} | {med * 1e3:.1f} | {lo * 1e3:.1f}–{hi * 1e3:.1f} "
              f"| {gbs:.0f} | {gbs / copy_gbs:.2f} |", flush=True)

    def maybe_compile(self, fn):
        if not self.use_compile:
            return None
        try:
            return torch.compile(fn)
        except Exception as e:  # noqa: BLE001 - report and go on
            print(f"<!-- torch.compile unavailable: {e} -->")
            return None


DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def rand(shape, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.rand(shape, generator=g, device="cuda", dtype=torch.float32) * 8 - 4
    x[x == 0] = 0.5
    return x.to(dtype)


def bench_mix(b, dtname, batch):
    dtype = DTYPES[dtname]
    s = torch.finfo(dtype).bits // 8
    c, h, w = 3, 224, 224
    n = batch * c * h * w
    shape = f"{batch}x3x224x224"
    x = rand((batch, c, h, w), dtype, 1)
    xi = x.clone()
    lam = torch.rand(batch, 1, 1, 1, device="cuda", dtype=dtype) * 0.5 + 0.5
    lam_scalar = 0.7
    perm = torch.randperm(batch, device="cuda")
    pairs = torch.arange(batch, device="cuda")
    order = torch.randperm(batch, device="cuda")
    pairs[order[0::2][: batch // 2]] = order[1::2][: batch // 2]
    pairs[order[1::2][: batch // 2]] = order[0::2][: batch // 2]

    def lerp_gather(_i, p=perm):
        return torch.lerp(x[p], x, lam)  # fastai: lerp(x_p, x, lam); 2 reads + gather + 1 write

    def lerp_pairs_inplace(_i):
        xp = xi[pairs]
        xi.lerp_(xp, 1 - lam)

    def timm_flip(_i):
        # timm Mixup._mix_batch, mode 'batch': in place with one lam.
        x_flipped = xi.flip(0).mul_(1.0 - lam_scalar)
        xi.mul_(lam_scalar).add_(x_flipped)

    yl, yh, xl, xh = 50, 162, 30, 142

    def timm_cutmix_nchw(_i):
        xi[:, :, yl:yh, xl:xh] = xi.flip(0)[:, :, yl:yh, xl:xh]

    x_cl = x.clone().contiguous(memory_format=torch.channels_last)

    def timm_cutmix_nhwc(_i):
        x_cl[:, :, yl:yh, xl:xh] = x_cl.flip(0)[:, :, yl:yh, xl:xh]

    cases = [
        ("random pairs, in place", 2, [("eager gather + lerp_", lerp_pairs_inplace), ("timm flip in place", timm_flip)]),
        ("permutation", 3, [("eager lerp(x[perm], x, lam)", lerp_gather)]),
        ("cutmix NCHW, flip in place", 2, [("timm paste", timm_cutmix_nchw)]),
        ("cutmix NHWC, flip in place", 2, [("timm paste, channels_last", timm_cutmix_nhwc)]),
    ]
    for name, passes, variants in cases:
        floor = passes * n * s
        copy = b.copy(floor)
        for vname, fn in variants:
            b.row("mix", dtname, shape, f"{name}: torch {vname}", floor, b.time(fn), copy)
            cf = b.maybe_compile(fn)
            if cf is not None:
                try:
                    b.row("mix", dtname, shape, f"{name}: torch.compile {vname}", floor, b.time(cf), copy)
                except Exception as e:  # noqa: BLE001
                    error_row("mix", dtname, shape, f"{name}: torch.compile {vname}", e)
        b.row("mix", dtname, shape, f"{name}: copy", floor, copy, copy)


def one_hot(x, num_classes, on_value=1.0, off_value=0.0):
    # timm.data.mixup.one_hot
    return torch.full((x.size()[0], num_classes), off_value, device=x.device).scatter_(1, x.long().view(-1, 1), on_value)


def mixup_target(target, num_classes, lam=1.0, smoothing=0.0):
    # timm.data.mixup.mixup_target
    off_value = smoothing / num_classes
    on_value = 1.0 - smoothing + off_value
    y1 = one_hot(target, num_classes, on_value=on_value, off_value=off_value)
    y2 = one_hot(target.flip(0), num_classes, on_value=on_value, off_value=off_value)
    return y1 * lam + y2 * (1.0 - lam)


def soft_target_ce(x, target):
    # timm.loss.SoftTargetCrossEntropy
    loss = torch.sum(-target * F.log_softmax(x, dim=-1), dim=-1)
    return loss.mean()


def bench_soft(b, dtname, batch, classes):
    dtype = DTYPES[dtname]
    s = torch.finfo(dtype).bits // 8
    floor = batch * classes * s
    y = torch.randint(0, classes, (batch,), device="cuda")
    copy = b.copy(floor * 2)
    copy = (copy[0] / 2, copy[1] / 2, copy[2] / 2)
    fn = lambda _i: mixup_target(y, classes, 0.7, 0.1).to(dtype)  # noqa: E731
    shape = f"{batch}x{classes}"
    b.row("soft targets", dtname, shape, "timm mixup_target", floor, b.time(fn), copy)
    cf = b.maybe_compile(fn)
    if cf is not None:
        b.row("soft targets", dtname, shape, "torch.compile timm mixup_target", floor, b.time(cf), copy)
    b.row("soft targets", dtname, shape, "copy (write half)", floor, copy, copy)


def bench_ce(b, dtname, batch, classes, liger):
    dtype = DTYPES[dtname]
    s = torch.finfo(dtype).bits // 8
    n = batch * classes
    floor = 2 * n * s
    sets = b.sets(n * s)
    logits = [rand((batch, classes), dtype, 10 + i).requires_grad_() for i in range(sets)]
    y = torch.randint(0, classes, (batch,), device="cuda")
    y_perm = y.flip(0)
    lam, eps = 0.7, 0.1
    copy = b.copy(floor)
    shape = f"{batch}x{classes}"
    op = "mixup CE fwd+bwd"

    def two_ce(i):
        z = logits[i % sets]
        z.grad = None
        loss = lam * F.cross_entropy(z, y, label_smoothing=eps) + (1 - lam) * F.cross_entropy(
            z, y_perm, label_smoothing=eps
        )
        loss.backward()

    def timm_soft(i):
        z = logits[i % sets]
        z.grad = None
        t = mixup_target(y, classes, lam, eps)
        soft_target_ce(z, t).backward()

    variants = [("F.cross_entropy x2, blended", two_ce), ("timm soft target + SoftTargetCrossEntropy", timm_soft)]
    for name, fn in variants:
        try:
            b.row(op, dtname, shape, f"torch {name}", floor, b.time(fn), copy)
        except torch.cuda.OutOfMemoryError as e:
            error_row(op, dtname, shape, f"torch {name}", e)
            torch.cuda.empty_cache()
        cf = b.maybe_compile(fn)
        if cf is not None:
            try:
                b.row(op, dtname, shape, f"torch.compile {name}", floor, b.time(cf), copy)
            except Exception as e:  # noqa: BLE001
                error_row(op, dtname, shape, f"torch.compile {name}", e)
                torch.cuda.empty_cache()
    for z in logits:
        z.grad = None
    if liger is not None:
        ce = liger(label_smoothing=eps)
        # Liger overwrites its input with the gradient in the forward pass: the second call of a
        # mixup step must not read the first call's gradients, so it gets logits of its own.
        second = [rand((batch, classes), dtype, 100 + i).requires_grad_() for i in range(sets)]

        def liger_two(i):
            za, zb = logits[i % sets], second[i % sets]
            za.grad = zb.grad = None
            (lam * ce(za, y) + (1 - lam) * ce(zb, y_perm)).backward()

        def liger_one(i):
            z = logits[i % sets]
            z.grad = None
            ce(z, y).backward()

        for name, fn in [
            ("Liger fused CE x2 (own logits per call)", liger_two),
            ("Liger fused CE x1 (no mixup, lower bound)", liger_one),
        ]:
            try:
                b.row(op, dtname, shape, name, floor, b.time(fn), copy)
            except Exception as e:  # noqa: BLE001
                error_row(op, dtname, shape, name, e)
        del second
    b.row(op, dtname, shape, "copy", floor, copy, copy)
    del logits
    torch.cuda.empty_cache()


def import_liger():
    """Liger's loss class and version, or (None, why)."""
    try:
        import liger_kernel
        from liger_kernel.transformers import LigerCrossEntropyLoss
    except Exception as e:  # noqa: BLE001 - ImportError, or triton/torch mismatches
        return None, f"{type(e).__name__}: {e}"
    try:
        from importlib.metadata import version

        v = version("liger-kernel")
    except Exception:  # noqa: BLE001
        v = getattr(liger_kernel, "__version__", "?")
    return LigerCrossEntropyLoss, v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("filters", nargs="*")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also time each torch variant under torch.compile")
    ap.add_argument("--no-compile", action="store_true", help="the default; kept for old command lines")
    ap.add_argument("--require-liger", action="store_true", help="exit 2 if Liger-Kernel cannot be imported")
    a = ap.parse_args()
    liger, liger_version = import_liger()
    print(f"Liger-Kernel: {liger_version if liger else 'not importable: ' + liger_version}", flush=True)
    if not torch.cuda.is_available():
        print("torch baseline SKIPPED: no CUDA device", flush=True)
        sys.exit(1 if REQUIRE_GPU else 0)
    b = Bench(10 if a.quick else 50, 2 if a.quick else 5, a.filters, a.compile and not a.no_compile)
    props = torch.cuda.get_device_properties(0)
    print(f"# PyTorch baseline\n\ndevice: {props.name}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"Liger-Kernel {liger_version if liger else 'not installed'}, torch.compile {'on' if b.use_compile else 'off'}\n")
    print("| op | dtype | shape | variant | median µs | min–max µs | GB/s at floor | vs copy |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    if b.wanted("ce") or b.wanted("CE"):
        for batch, classes in [(256, 1000), (4096, 32000), (4096, 128256), (16384, 50257)]:
            for dt in ("f32", "bf16"):
                bench_ce(b, dt, batch, classes, liger)
    if b.wanted("soft"):
        for dt in ("f32", "bf16"):
            bench_soft(b, dt, 1024, 1000)
    if b.wanted("mix"):
        for batch in ([256] if a.quick else [256, 1024]):
            for dt in ("f32", "bf16", "f16"):
                bench_mix(b, dt, batch)
                torch.cuda.empty_cache()
    if ERRORS:
        print(f"FAILED rows: {len(ERRORS)}", flush=True)
        sys.exit(3)
    if a.require_liger and liger is None:
        print("error: --require-liger and Liger-Kernel is not importable", flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
