#!/usr/bin/env python3
"""PyTorch's CPU sequences for the fused pixels -> model input op (benches/cpu.rs,
`mix_normalize_*`), at the same size: 256 decoded 224x224 RGB u8 images, timm's flip partner,
MixUp or CutMix per sample, ImageNet constants, an NCHW f32 batch out.

    python3 benches/mix_normalize_torch.py [--reps N] [--threads T]

Rows (each beside a torch copy of the op's byte floor timed in the same run, as benches/cpu.rs
does):
- timm: `FastCollateMixup` (numpy, per sample: f32 lerp, `np.rint`, u8; CutMix paste) on CHW
  u8 arrays as timm's `ToNumpy` hands them (the HWC -> CHW transpose of its transforms is not
  timed), then `PrefetchLoader`'s `x.float().sub_(mean).div_(std)` on the CPU;
- torch eager: from an NHWC u8 tensor, `permute` + `float`, `x*lam + x.flip(0)*(1-lam)`,
  CutMix pastes, `round_`, `sub_`, `div_`, `contiguous`.
The floor is 256*224*224*3 * (1 + 4) bytes (one u8 read, one f32 write), as for the crate.
Needs torch, numpy and timm (scripts/requirements-golden.txt); CPU only.
"""
import argparse
import statistics
import time

import numpy as np
import torch
import timm.data.mixup as tm
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

B, H, W, C = 256, 224, 224, 3


def timed(fn, reps):
    fn()
    ms = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ms)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    floor = B * H * W * C * (1 + 4)
    g = torch.Generator().manual_seed(0)
    nhwc = torch.randint(0, 256, (B, H, W, C), generator=g, dtype=torch.uint8)
    chw = [(nhwc[i].permute(2, 0, 1).contiguous().numpy(), i % 1000) for i in range(B)]
    mean = torch.tensor([x * 255 for x in IMAGENET_DEFAULT_MEAN]).view(1, C, 1, 1)
    std = torch.tensor([x * 255 for x in IMAGENET_DEFAULT_STD]).view(1, C, 1, 1)

    src = torch.empty(floor // 2, dtype=torch.uint8)
    dst = torch.empty_like(src)
    copy_ms = timed(lambda: dst.copy_(src), args.reps)

    mixer = tm.FastCollateMixup(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem",
                                label_smoothing=0.1, num_classes=1000)
    np.random.seed(0)

    def timm_path():
        x, _ = mixer(chw)
        return x.float().sub_(mean).div_(std)

    # One draw of per-sample λ and boxes (as timm's elem mode draws them) for the eager path.
    lam = np.random.beta(0.8, 0.8, size=B).astype(np.float32)
    cut = np.random.rand(B) < 0.5
    boxes = {}
    for i in np.nonzero(cut)[0]:
        (y0, y1, x0, x1), lam[i] = tm.cutmix_bbox_and_lam((C, H, W), float(lam[i]))
        boxes[int(i)] = (y0, y1, x0, x1)
    lam_t = torch.from_numpy(np.where(cut, 1.0, lam).astype(np.float32)).view(B, 1, 1, 1)

    def torch_path():
        x = nhwc.permute(0, 3, 1, 2).float()
        other = x.flip(0)
        y = x * lam_t + other * (1 - lam_t)
        for i, (y0, y1, x0, x1) in boxes.items():
            y[i, :, y0:y1, x0:x1] = other[i, :, y0:y1, x0:x1]
        return y.round_().sub_(mean).div_(std).contiguous()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{B}x{H}x{W}x{C} u8 -> NCHW f32, floor {floor / 1e6:.0f} MB")
    print("| sequence | ms | GB/s at the floor | copy ms | vs copy |")
    print("|---|---|---|---|---|")
    for name, fn in [("timm FastCollateMixup + PrefetchLoader (CPU)", timm_path),
                     ("torch eager (permute, float, lerp, paste, round, sub, div)", torch_path)]:
        ms = timed(fn, args.reps)
        copy_ms = timed(lambda: dst.copy_(src), args.reps)
        print(f"| {name} | {ms:.1f} | {floor / ms / 1e6:.2f} | {copy_ms:.1f} | "
              f"{copy_ms / ms:.3f} |", flush=True)


if __name__ == "__main__":
    main()
