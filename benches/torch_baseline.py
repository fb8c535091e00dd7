#!/usr/bin/env python3
"""PyTorch baselines on the grid of benches/gpu.rs, printed in the same table format.

    python3 benches/torch_baseline.py [filter ...] [--quick] [--no-compile]

What people run today, on the same GPU:
- mix: eager `lerp` with a permuted gather (fastai: lerp(x[perm], x, lam)), timm's flip in place
  (x.flip(0).mul_(1-lam); x.mul_(lam).add_(...)), timm's CutMix paste (NCHW, and NHWC as a
  channels-last tensor), and the same under torch.compile;
- soft targets: timm's mixup_target (two one-hots, a flip, a blend);
- mixup cross-entropy forward+backward: timm's soft target + SoftTargetCrossEntropy; two
  index-target F.cross_entropy calls weighted by lam; both under torch.compile; and
  Liger-Kernel's fused cross-entropy (two calls for mixup, and one call as a lower bound) when
  `liger_kernel` is importable.

Method as in benches/gpu.rs: CUDA events, warm-up, median of synchronized repetitions, inputs
rotated when one set fits in L2, random data; GB/s at the op's byte floor
(shared/REFERENCE.md) and the ratio to a device-to-device copy of the same bytes in this run.
"""
import argparse
import statistics
import sys

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - the GPU machine has torch
    print("torch is not installed; nothing to measure")
    sys.exit(0)


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
                    print(f"| mix | {dtname} | {shape} | {name}: torch.compile {vname} | error: {e} | | | |")
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
    lam, eps = 0.7, 0.1
    copy = b.copy(floor)
    shape = f"{batch}x{classes}"

    def timm_soft(i):
        z = logits[i % sets]
        z.grad = None
        t = mixup_target(y, classes, lam, eps)
        soft_target_ce(z, t).backward()

    def two_ce(i):
        z = logits[i % sets]
        z.grad = None
        loss = lam * F.cross_entropy(z, y, label_smoothing=eps) + (1 - lam) * F.cross_entropy(z, y.flip(0), label_smoothing=eps)
        loss.backward()

    variants = [("timm soft target + SoftTargetCrossEntropy", timm_soft), ("two F.cross_entropy calls", two_ce)]
    for name, fn in variants:
        try:
            b.row("mixup CE fwd+bwd", dtname, shape, f"torch {name}", floor, b.time(fn), copy)
        except torch.cuda.OutOfMemoryError:
            print(f"| mixup CE fwd+bwd | {dtname} | {shape} | torch {name} | out of memory | | | |")
            torch.cuda.empty_cache()
        cf = b.maybe_compile(fn)
        if cf is not None:
            try:
                b.row("mixup CE fwd+bwd", dtname, shape, f"torch.compile {name}", floor, b.time(cf), copy)
            except Exception as e:  # noqa: BLE001
                print(f"| mixup CE fwd+bwd | {dtname} | {shape} | torch.compile {name} | error: {type(e).__name__} | | | |")
                torch.cuda.empty_cache()
    if liger is not None:
        ce = liger(label_smoothing=eps)

        def liger_two(i):
            z = logits[i % sets]
            z.grad = None
            (lam * ce(z, y) + (1 - lam) * ce(z, y.flip(0))).backward()

        def liger_one(i):
            z = logits[i % sets]
            z.grad = None
            ce(z, y).backward()

        for name, fn in [("Liger fused CE x2 (mixup)", liger_two), ("Liger fused CE x1 (no mixup, lower bound)", liger_one)]:
            try:
                b.row("mixup CE fwd+bwd", dtname, shape, name, floor, b.time(fn), copy)
            except Exception as e:  # noqa: BLE001
                print(f"| mixup CE fwd+bwd | {dtname} | {shape} | {name} | error: {type(e).__name__}: {e} | | | |")
    b.row("mixup CE fwd+bwd", dtname, shape, "copy", floor, copy, copy)
    del logits
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("filters", nargs="*")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-compile", action="store_true")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("torch baseline skipped: no CUDA device")
        return
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss as liger
    except ImportError:
        liger = None
    b = Bench(10 if a.quick else 50, 2 if a.quick else 5, a.filters, not a.no_compile)
    props = torch.cuda.get_device_properties(0)
    print(f"# PyTorch baseline\n\ndevice: {props.name}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"Liger-Kernel {'yes' if liger else 'not installed'}\n")
    print("| op | dtype | shape | variant | median µs | min–max µs | GB/s at floor | vs copy |")
    print("|---|---|---|---|---|---|---|---|")
    if b.wanted("mix"):
        for batch in ([256] if a.quick else [256, 1024]):
            for dt in ("f32", "bf16", "f16"):
                bench_mix(b, dt, batch)
                torch.cuda.empty_cache()
    if b.wanted("soft"):
        for dt in ("f32", "bf16"):
            bench_soft(b, dt, 1024, 1000)
    if b.wanted("ce") or b.wanted("CE"):
        for batch, classes in [(256, 1000), (4096, 32000), (4096, 128256), (16384, 50257)]:
            for dt in ("f32", "bf16"):
                bench_ce(b, dt, batch, classes, liger)


if __name__ == "__main__":
    main()
