#!/usr/bin/env python3
"""Golden values from PyTorch and timm for the Rust parity tests (tests/parity.rs).

Regenerate (from the repository root; CI never runs this, it only reads the committed files):

    python3 -m venv .venv && .venv/bin/pip install -r scripts/requirements-golden.txt
    .venv/bin/python scripts/golden_timm.py            # writes tests/fixtures/*.json
    .venv/bin/python scripts/golden_timm.py --check    # recomputes, fails if a file would change
    .venv/bin/python scripts/golden_timm.py --only bce.json   # one fixture (repeatable)

Everything runs on the CPU with one thread and fixed seeds, so a rerun writes identical bytes.
timm's random draws are not reproduced by the crate (it has its own seeded sampler): instead the
script calls timm's own functions, records what timm drew (λ, MixUp/CutMix choice, boxes), and
the Rust tests rebuild that plan with `MixPlan::with_boxes` and compare the outputs. Where a box
must come from a chosen center, `np.random.randint` is replaced for the call by a stub that
returns the chosen values (and records the bounds timm asked for).

Number format: f32/f16/bf16 values are written with numpy's shortest round-trip repr of the f32
value (`str(np.float32(v))`; f16/bf16 values are exact in f32), f64 values with Python's repr.
The Rust side parses each number from its text with `f32::from_str` / `f64::from_str`, which are
correctly rounded, so every stored value is recovered bit for bit.
"""

import argparse
import contextlib
import math
import os
import platform
import sys

import numpy as np
import timm
import timm.data.mixup as tm
import torch
import torch.nn.functional as F
from timm.loss import BinaryCrossEntropy, SoftTargetCrossEntropy

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "tests", "fixtures")
COMMAND = ".venv/bin/python scripts/golden_timm.py"

torch.set_num_threads(1)  # reductions in a fixed order: reruns give identical bits
torch.use_deterministic_algorithms(True)


# ---------------------------------------------------------------------------------------------
# Output: a small JSON emitter. Numeric arrays go on one line each (flattened, shape separate).
# ---------------------------------------------------------------------------------------------

class F32List:
    """A flat list of values written as f32 (shortest repr that round-trips in f32)."""

    def __init__(self, values):
        if isinstance(values, torch.Tensor):
            values = values.detach().to(torch.float32).contiguous().view(-1).numpy()
        self.values = np.asarray(values, dtype=np.float32).reshape(-1)


class F32:
    """One scalar written as f32."""

    def __init__(self, v):
        if isinstance(v, torch.Tensor):
            v = v.detach().to(torch.float32).item()
        self.v = np.float32(v)


def f32s(x):
    x = np.float32(x)
    if not np.isfinite(x):
        raise ValueError(f"non-finite value {x} cannot go into a fixture")
    s = str(x)
    assert np.float32(s) == x, s  # shortest repr that round-trips in f32
    return s


def f64s(x):
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"non-finite value {x} cannot go into a fixture")
    return repr(x)


class Raw:
    """Pre-rendered JSON text (one fixture row per line keeps long tables short and diffable)."""

    def __init__(self, text):
        self.text = text


def emit_row(row):
    return Raw("{" + ",".join(f'"{k}":{emit(v)}' for k, v in row.items()) + "}")


def is_scalar(v):
    return v is None or isinstance(v, (int, float, np.integer, np.floating, F32))


def is_flat(v):
    """Numbers, nulls and lists of numbers (labels, partners, boxes): written on one line."""
    return is_scalar(v) or isinstance(v, (list, tuple)) and all(is_scalar(u) for u in v)


def emit(obj, indent=0):
    pad = "  " * indent
    if isinstance(obj, Raw):
        return obj.text
    if isinstance(obj, F32List):
        return "[" + ",".join(f32s(v) for v in obj.values) + "]"
    if isinstance(obj, F32):
        return f32s(obj.v)
    if obj is None:
        return "null"
    if isinstance(obj, (bool, np.bool_)):
        return "true" if obj else "false"
    if isinstance(obj, (int, np.integer)):
        return str(int(obj))
    if isinstance(obj, (float, np.floating)):
        return f64s(obj)
    if isinstance(obj, str):
        assert '"' not in obj and "\\" not in obj
        return '"' + obj + '"'
    if isinstance(obj, dict):
        inner = ",\n".join(f'{pad}  "{k}": {emit(v, indent + 1)}' for k, v in obj.items())
        return "{\n" + inner + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        if all(is_flat(v) for v in obj):
            # Labels, partners, boxes: one line.
            return "[" + ",".join(emit(v) for v in obj) + "]"
        inner = ",\n".join(pad + "  " + emit(v, indent + 1) for v in obj)
        return "[\n" + inner + "\n" + pad + "]"
    raise TypeError(type(obj))


def meta(what):
    return {
        "generated_by": COMMAND,
        "what": what,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
    }


# ---------------------------------------------------------------------------------------------
# Hooks into timm: record what it drew, or make it draw what we choose.
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextlib.contextmanager
def scripted_randint(values, calls):
    """`np.random.randint` returns `values` in order and appends its (low, high) to `calls`."""
    it = iter(values)

    def fake(low, high=None, size=None, dtype=int):
        assert size is None and high is not None
        v = next(it)
        calls.append((int(low), int(high)))
        assert low <= v < high, f"scripted draw {v} outside timm's range [{low}, {high})"
        return np.int64(v)

    with patched(np.random, "randint", fake):
        yield
    assert next(it, None) is None, "not every scripted value was drawn"


@contextlib.contextmanager
def recording_boxes(log):
    """Wraps timm's `cutmix_bbox_and_lam` (looked up as a module global by `Mixup`)."""
    orig = tm.cutmix_bbox_and_lam

    def wrapped(img_shape, lam, ratio_minmax=None, correct_lam=True, count=None):
        (yl, yh, xl, xh), new_lam = orig(img_shape, lam, ratio_minmax, correct_lam, count)
        log.append(([int(yl), int(yh), int(xl), int(xh)], float(new_lam)))
        return (yl, yh, xl, xh), new_lam

    with patched(tm, "cutmix_bbox_and_lam", wrapped):
        yield


def weights_bit_exact(lam):
    """Whether the library's weights equal ours bit for bit. torch and numpy round a Python
    float scalar to f32 before multiplying an f32 tensor, so timm's batch mode uses
    f32(λ) and f32(1 - λ) with 1 - λ computed in f64; the crate uses f32(λ) and 1 - f32(λ)
    computed in f32. Both agree unless the f64 subtraction rounds differently."""
    return bool(np.float32(1.0 - float(lam)) == np.float32(1.0) - np.float32(lam))


# ---------------------------------------------------------------------------------------------
# bbox.json
# ---------------------------------------------------------------------------------------------

def timm_box(h, w, lam, cy, cx, correct_lam=True):
    calls = []
    with scripted_randint([cy, cx], calls):
        (yl, yh, xl, xh), lam2 = tm.cutmix_bbox_and_lam((3, h, w), lam, correct_lam=correct_lam)
    # timm draws the center uniformly from the whole image (margin 0).
    assert calls == [(0, h), (0, w)], calls
    return [int(yl), int(yh), int(xl), int(xh)], lam2


def bbox_fixture():
    sizes = [(224, 224), (5, 6), (6, 5), (7, 3), (1, 1), (1, 9), (31, 17), (2, 2), (3, 3)]
    base_lams = [0.0, 1e-6, 0.01, 0.25, 0.3, 0.5, 0.64, 0.75, 0.9, 0.99, 0.999999, 1.0]
    rng = np.random.default_rng(20240611)
    cases = []
    for h, w in sizes:
        # λ where side·sqrt(1-λ) lands on (or a rounding away from) an integer: int() truncation.
        edge = [1.0 - (k / h) ** 2 for k in sorted({1, max(1, h // 3), max(1, h - 1)})]
        centers = [(0, 0), (h - 1, w - 1), (0, w - 1), (h - 1, 0), (h // 2, w // 2)]
        centers.append((int(rng.integers(0, h)), int(rng.integers(0, w))))
        for lam in base_lams + edge:
            for cy, cx in centers:
                box, lam2 = timm_box(h, w, lam, cy, cx)
                cases.append({"h": h, "w": w, "lam": float(lam), "cy": cy, "cx": cx,
                              "box": box, "lam_corrected": float(lam2)})
    rows = [emit_row(c) for c in cases]

    # In timm's elem and pair modes λ is an np.float32, so `np.sqrt(1 - lam)` and `img_h * ratio`
    # run in f32; in batch mode λ is a Python float and they run in f64. The crate computes in
    # f64. Record where the two paths give different boxes for the same λ value.
    f32_rows = []
    for h in [5, 7, 31, 224, 225, 384]:
        for k in range(1, h):
            for steps in (-2, -1, 0, 1, 2):
                lam32 = np.float32(1.0 - (k / h) ** 2)
                for _ in range(abs(steps)):  # a few f32 ulps either side
                    lam32 = np.nextafter(lam32, np.float32(np.sign(steps)) * np.float32(2.0))
                if not (0.0 <= lam32 <= 1.0):
                    continue
                c = h // 2
                b32, l32 = timm_box(h, h, lam32, c, c)
                b64, l64 = timm_box(h, h, float(lam32), c, c)
                if b32 != b64 and len(f32_rows) < 8:
                    f32_rows.append(emit_row({"h": h, "w": h, "lam": F32(lam32), "cy": c, "cx": c,
                                     "box_f32": b32, "lam_corrected_f32": F32(l32),
                                     "box_f64": b64, "lam_corrected_f64": float(l64)}))

    # rand_bbox_minmax with scripted draws: record the bounds timm asks `randint` for.
    minmax_rows = []
    for (h, w), mm in [((5, 6), (0.2, 0.8)), ((224, 224), (0.2, 0.8)), ((7, 3), (0.3, 0.9)),
                       ((10, 10), (0.25, 0.75)), ((31, 17), (0.1, 1.0))]:
        ch_lo, ch_hi = int(h * mm[0]), int(h * mm[1])
        cw_lo, cw_hi = int(w * mm[0]), int(w * mm[1])
        picks = [(ch_lo, cw_hi - 1, "low"), (ch_hi - 1, cw_lo, "mixed"),
                 (ch_hi - 1, cw_hi - 1, "high")]
        for cut_h, cut_w, where in picks:
            # Place the box at the top-left corner and at the largest offset timm allows.
            for y_at_end in (False, True):
                calls = []
                yl = h - cut_h if y_at_end else 0
                xl = w - cut_w if y_at_end else 0
                with scripted_randint([cut_h, cut_w, yl, xl], calls):
                    (a, b, c, d), lam2 = tm.cutmix_bbox_and_lam((3, h, w), 0.5, ratio_minmax=mm)
                minmax_rows.append(emit_row({"h": h, "w": w, "minmax": [float(mm[0]), float(mm[1])],
                                    "draws": [cut_h, cut_w, yl, xl],
                                    "randint_bounds": [list(t) for t in calls],
                                    "box": [int(a), int(b), int(c), int(d)],
                                    "lam_corrected": float(lam2)}))
    return {
        "meta": meta("timm.data.mixup.cutmix_bbox_and_lam / rand_bbox / rand_bbox_minmax with "
                     "scripted np.random.randint; box = [y0, y1, x0, x1] half-open"),
        "rand_bbox": rows,
        "rand_bbox_f32_lam": f32_rows,
        "rand_bbox_minmax": minmax_rows,
    }


# ---------------------------------------------------------------------------------------------
# mix.json
# ---------------------------------------------------------------------------------------------

B, CH, H, W = 4, 3, 5, 6
NUM_CLASSES, SMOOTH = 10, 0.1


def images(batch, seed):
    g = torch.Generator().manual_seed(seed)
    # Three decimals keep the file short; the values are still arbitrary f32.
    return (torch.randn(batch, CH, H, W, generator=g) * 1000).round() / 1000


def labels_for(batch, seed, num_classes=NUM_CLASSES):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (batch,), generator=g)
    y[0] = y[batch - 1]  # one same-class pair under the flip
    return y


def flip(batch):
    return [batch - 1 - i for i in range(batch)]


@contextlib.contextmanager
def recorded_draws(mixer, seed, forced_lams=None):
    """Records what a timm `Mixup` or `FastCollateMixup` draws while the block runs; yields
    `(per, boxes_log)`: `per` gets one `(kind, lam, use_cutmix)` per parameter draw ("elem" or
    "batch"), `boxes_log` the boxes `cutmix_bbox_and_lam` returns. numpy is seeded with `seed`
    first; `forced_lams` replaces `np.random.beta`'s draws (in order)."""
    per, boxes_log = [], []
    mixer_per_elem, mixer_per_batch = mixer._params_per_elem, mixer._params_per_batch

    def rec_elem(n):
        lam, cut = mixer_per_elem(n)
        per.append(("elem", lam.copy(), cut.copy()))
        return lam, cut

    def rec_batch():
        lam, cut = mixer_per_batch()
        per.append(("batch", lam, cut))
        return lam, cut

    mixer._params_per_elem, mixer._params_per_batch = rec_elem, rec_batch
    np.random.seed(seed)
    beta_patch = contextlib.nullcontext()
    if forced_lams is not None:
        beta_patch = patched(np.random, "beta", lambda a, b, size=None: np.array(forced_lams[:size])
                             if size is not None else forced_lams[0])
    with recording_boxes(boxes_log), beta_patch:
        yield per, boxes_log


def timm_mix_case(name, mixup_kwargs, batch, seed, mode_fn=None, forced_lams=None):
    """Runs timm's `Mixup` on an f32 batch and records everything needed to rebuild the plan."""
    mixer = tm.Mixup(label_smoothing=SMOOTH, num_classes=NUM_CLASSES, **mixup_kwargs)
    x = images(batch, seed)
    y = labels_for(batch, seed + 1)
    x_in = x.clone()
    with recorded_draws(mixer, seed, forced_lams) as (per, boxes_log):
        if mode_fn is None:
            out, target = mixer(x, y)
            lam_ret = None
        else:
            # Odd batches: timm's `__call__` asserts an even batch, `_mix_elem` itself does not.
            lam_ret = mode_fn(mixer, x)
            out, target = x, tm.mixup_target(y, NUM_CLASSES, lam_ret, SMOOTH)
    return finish_mix_case(name, mixer.mode, batch, x_in, out, y, target, per, boxes_log,
                           u8=False)


def finish_mix_case(name, mode, batch, x_in, out, y, target, per, boxes_log, u8):
    (kind, lam_draw, cut_draw), = per
    partner = flip(batch)
    boxes = [None] * batch
    lam = np.ones(batch, dtype=np.float64)
    exact = True
    it = iter(boxes_log)
    if kind == "batch":
        lam_val = float(lam_draw)
        if lam_val != 1.0 and cut_draw:
            box, lam_val = next(it)
            boxes = [box] * batch
        else:
            exact = weights_bit_exact(lam_val)
        lam[:] = lam_val
    else:
        # elem: one draw per sample; pair: one draw per pair i < B/2, mirrored onto B-1-i.
        n = len(lam_draw)
        for i in range(n):
            li = float(lam_draw[i])
            bi = None
            if li != 1.0 and cut_draw[i]:
                bi, li = next(it)
                li = float(np.float32(li))  # stored back into timm's f32 lam array
            lam[i], boxes[i] = li, bi
            if mode == "pair":
                lam[batch - 1 - i], boxes[batch - 1 - i] = li, bi
    assert next(it, None) is None
    case = {
        "name": name,
        "source": f"timm {'FastCollateMixup' if u8 else 'Mixup'} mode={mode}",
        "dtype": "u8" if u8 else "f32",
        "shape": [batch, CH, H, W],
        "partner": partner,
        "lam": F32List(lam),
        "boxes": boxes,
        "bit_exact": exact,
        "x": x_in.reshape(-1).tolist() if u8 else F32List(x_in),
        "out": out.reshape(-1).tolist() if u8 else F32List(out),
        "num_classes": NUM_CLASSES,
        "smoothing": SMOOTH,
        "labels": [int(v) for v in y],
        "target": F32List(target),
    }
    return case


def timm_collate_case(name, mixup_kwargs, batch, seed, forced_lams=None):
    """timm's `FastCollateMixup` on numpy uint8 images (mixing before normalization)."""
    mixer = tm.FastCollateMixup(label_smoothing=SMOOTH, num_classes=NUM_CLASSES, **mixup_kwargs)
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (batch, CH, H, W), generator=g, dtype=torch.uint8)
    y = labels_for(batch, seed + 1)
    items = [(x[i].numpy().copy(), int(y[i])) for i in range(batch)]
    with recorded_draws(mixer, seed, forced_lams) as (per, boxes_log):
        out, target = mixer(items)
    return finish_mix_case(name, mixer.mode, batch, x, out, y, target, per, boxes_log, u8=True)


def first_seed(make, want):
    """The first seed (from 0) whose case satisfies `want`: fixtures that cover every branch."""
    for seed in range(1000):
        case = make(seed)
        if want(case):
            return case
    raise RuntimeError("no seed covers the wanted branches")


def kinds(case):
    b = case["shape"][0]
    lam = case["lam"].values
    cut = sum(1 for i in range(b) if case["boxes"][i] is not None)
    unmixed = sum(1 for i in range(b) if case["boxes"][i] is None and lam[i] == 1.0)
    return cut, b - cut - unmixed, unmixed


def mix_fixture():
    cases = []
    # The plain torch formula with a random permutation and per-sample λ (fastai-style elem).
    b = 5
    x = images(b, 7)
    for seed in range(7, 1000):
        # The first seed whose permutation has a cycle longer than 2: not an involution.
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(b, generator=g)
        if any(int(perm[int(perm[i])]) != i for i in range(b)):
            break
    lam = torch.rand(b, generator=g)
    lam[2] = 1.0
    lam_b = lam.view(b, 1, 1, 1)
    out = x * lam_b + x[perm] * (1 - lam_b)
    cases.append({"name": "torch_perm_elem", "source": "torch x*lam + x[perm]*(1-lam)",
                  "dtype": "f32", "shape": [b, CH, H, W], "partner": perm.tolist(),
                  "lam": F32List(lam), "boxes": [None] * b, "bit_exact": True,
                  "x": F32List(x), "out": F32List(out)})

    cases.append(timm_mix_case("timm_batch_mixup", dict(mixup_alpha=1.0, cutmix_alpha=0.0), B, 11))
    cases.append(first_seed(
        lambda s: timm_mix_case("timm_batch_cutmix", dict(mixup_alpha=0.0, cutmix_alpha=1.0), B, s),
        lambda c: kinds(c)[0] == B and c["boxes"][0] != [0, H, 0, W]))
    cases.append(first_seed(
        lambda s: timm_mix_case("timm_pair_both", dict(mixup_alpha=0.8, cutmix_alpha=1.0,
                                                       mode="pair"), 6, s),
        lambda c: kinds(c)[0] >= 2 and kinds(c)[1] >= 2))
    cases.append(first_seed(
        lambda s: timm_mix_case("timm_elem_both_prob", dict(mixup_alpha=0.8, cutmix_alpha=1.0,
                                                            prob=0.7, mode="elem"), 6, s),
        lambda c: all(k >= 1 for k in kinds(c)) and kinds(c)[0] >= 2))
    cases.append(first_seed(
        lambda s: timm_mix_case("timm_elem_odd_batch", dict(mixup_alpha=1.0, cutmix_alpha=1.0,
                                                            mode="elem"), 5, s,
                                mode_fn=lambda m, x: m._mix_elem(x)),
        lambda c: kinds(c)[0] >= 1 and kinds(c)[1] >= 1))
    cases.append(first_seed(
        lambda s: timm_mix_case("timm_elem_minmax", dict(mixup_alpha=0.0, cutmix_minmax=(0.2, 0.8),
                                                         mode="elem"), B, s),
        lambda c: kinds(c)[0] == B))

    # Already-soft [B, C] targets mix like rows: timm's multi-label path with ε = 0 is exactly
    # `y*lam + y.flip(0)*(1-lam)` on the dense tensor.
    g = torch.Generator().manual_seed(5)
    b, c = 4, 7
    dense = torch.rand(b, c, generator=g)
    dense = (dense * 1000).round() / 1000
    lam = torch.tensor([0.3, 0.8125, 0.6, 1.0]).unsqueeze(1)
    rows = tm.mixup_target(dense, c, lam, 0.0, multi_label=True)
    cases.append({"name": "timm_multilabel_rows", "source": "timm mixup_target(multi_label=True)",
                  "dtype": "f32", "layout": "rows", "shape": [b, c], "partner": flip(b),
                  "lam": F32List(lam), "boxes": [None] * b, "bit_exact": True,
                  "x": F32List(dense), "out": F32List(rows)})

    # timm's collate path on uint8 images: f32 lerp, then np.rint (half to even).
    cases.append(first_seed(
        lambda s: timm_collate_case("u8_elem_both", dict(mixup_alpha=0.8, cutmix_alpha=1.0,
                                                         prob=0.8, mode="elem"), 6, s),
        lambda c: all(k >= 1 for k in kinds(c))))
    cases.append(first_seed(
        lambda s: timm_collate_case("u8_pair_both", dict(mixup_alpha=0.8, cutmix_alpha=1.0,
                                                         mode="pair"), 6, s),
        lambda c: kinds(c)[0] >= 2 and kinds(c)[1] >= 2))
    cases.append(timm_collate_case("u8_batch_mixup", dict(mixup_alpha=1.0, cutmix_alpha=0.0), B, 3))
    cases.append(first_seed(
        lambda s: timm_collate_case("u8_batch_cutmix", dict(mixup_alpha=0.0, cutmix_alpha=1.0), B, s),
        lambda c: kinds(c)[0] == B and c["boxes"][0] != [0, H, 0, W]))
    # λ chosen so that many pixels land exactly on x.5: rounding must go to even.
    cases.append(timm_collate_case("u8_elem_ties", dict(mixup_alpha=1.0, cutmix_alpha=0.0,
                                                        mode="elem"), 6, 21,
                                   forced_lams=[0.5, 0.25, 0.5, 0.75, 0.5, 0.125]))
    cases.append(timm_collate_case("u8_batch_ties", dict(mixup_alpha=1.0, cutmix_alpha=0.0), B, 22,
                                   forced_lams=[0.5]))
    return {"meta": meta("inputs mixed by torch / timm Mixup / FastCollateMixup; NCHW images "
                         "(the Rust test derives NHWC by permuting), box = [y0, y1, x0, x1]"),
            "cases": cases}


# ---------------------------------------------------------------------------------------------
# normalize.json
# ---------------------------------------------------------------------------------------------

def prefetch_normalize(u8_batch, mean, std):
    """timm's `PrefetchLoader` on the CPU: `x.to(f32).sub_(mean*255).div_(std*255)`, through the
    class itself (one batch, no random erasing)."""
    from timm.data.loader import PrefetchLoader
    loader = PrefetchLoader([(u8_batch, torch.zeros(u8_batch.shape[0]))], mean=mean, std=std,
                            channels=len(mean), device=torch.device("cpu"))
    (x, _), = list(loader)
    return x


def normalize_fixture():
    """The u8 collate cases of mix.json, then timm's PrefetchLoader normalization: the fused
    op's input (u8 NCHW), its plan, and timm's f32 model input."""
    from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    stats = [("imagenet", IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
             # Constants whose ×255 lands between f32 values, and a std under 1 pixel.
             ("odd", (0.1307, 0.9999, 0.0001), (0.3081, 0.0029, 1.7))]
    cases = []
    for case in mix_fixture()["cases"]:
        if case["dtype"] != "u8":
            continue
        b, c, h, w = case["shape"]
        mixed = torch.tensor(case["out"], dtype=torch.uint8).view(b, c, h, w)
        for tag, mean, std in stats:
            y = prefetch_normalize(mixed, mean, std)
            cases.append({
                "name": f"{case['name']}_{tag}",
                "source": f"{case['source']} + timm PrefetchLoader",
                "dtype": "u8", "shape": case["shape"], "partner": case["partner"],
                "lam": case["lam"], "boxes": case["boxes"], "bit_exact": case["bit_exact"],
                "x": case["x"], "mean": [float(v) for v in mean], "std": [float(v) for v in std],
                "out": F32List(y),
            })
    return {"meta": meta("timm FastCollateMixup (u8, f32 lerp + np.rint) then PrefetchLoader "
                         "(x.float().sub_(mean*255).div_(std*255)) on the CPU; NCHW u8 input, "
                         "NCHW f32 output (the Rust test derives NHWC by permuting), "
                         "box = [y0, y1, x0, x1]"),
            "cases": cases}


# ---------------------------------------------------------------------------------------------
# targets.json
# ---------------------------------------------------------------------------------------------

def targets_fixture():
    cases = []
    # (C, ε, λ, batch): timm's batch mode passes λ as a Python float.
    for c, eps, lam, b in [(1, 0.0, 0.7, 4), (1, 0.1, 0.3, 2), (2, 0.1, 0.5, 4),
                           (10, 0.1, 0.3, 6), (10, 0.0, 1.0, 4), (10, 0.1, 0.0, 4),
                           (7, 0.25, 0.8, 5), (1000, 0.1, 0.62, 2), (3, 0.0, 0.123456789, 3)]:
        y = labels_for(b, 100 + c + b, c)
        t = tm.mixup_target(y, c, lam, eps)
        cases.append({"name": f"timm_batch_c{c}_eps{eps}_lam{lam}",
                      "source": "timm mixup_target (flip, scalar lam)", "num_classes": c,
                      "smoothing": F32(eps), "labels": [int(v) for v in y], "partner": flip(b),
                      "lam": F32List([lam] * b), "target": F32List(t)})
    # Per-sample λ as timm's elem/pair modes pass it: an f32 [B, 1] tensor.
    for c, eps, b in [(10, 0.1, 6), (4, 0.2, 5), (1, 0.1, 3)]:
        g = torch.Generator().manual_seed(200 + c)
        y = labels_for(b, 300 + c, c)
        lam = torch.rand(b, 1, generator=g)
        lam[1] = 1.0
        t = tm.mixup_target(y, c, lam, eps)
        cases.append({"name": f"timm_elem_c{c}_eps{eps}",
                      "source": "timm mixup_target (flip, per-sample lam)", "num_classes": c,
                      "smoothing": F32(eps), "labels": [int(v) for v in y], "partner": flip(b),
                      "lam": F32List(lam), "target": F32List(t)})
    # Any permutation, per-sample λ: the same formula built in torch.
    for c, eps, b in [(10, 0.1, 7), (5, 0.0, 4)]:
        g = torch.Generator().manual_seed(400 + c)
        y = torch.randint(0, c, (b,), generator=g)
        perm = torch.randperm(b, generator=g)
        lam = torch.rand(b, 1, generator=g)
        y1 = tm.one_hot(y, c, on_value=1.0 - eps + eps / c, off_value=eps / c)
        t = y1 * lam + y1[perm] * (1.0 - lam)
        cases.append({"name": f"torch_perm_c{c}_eps{eps}",
                      "source": "torch one_hot*lam + one_hot[perm]*(1-lam)", "num_classes": c,
                      "smoothing": F32(eps), "labels": [int(v) for v in y],
                      "partner": perm.tolist(), "lam": F32List(lam), "target": F32List(t)})
    return {"meta": meta("soft targets t = lam*s(y) + (1-lam)*s(y[partner]), s = smoothed "
                         "one-hot (f32, as torch computes them)"), "cases": cases}


# ---------------------------------------------------------------------------------------------
# loss.json
# ---------------------------------------------------------------------------------------------

DT = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def make_logits(b, c, seed, scale, dtype):
    g = torch.Generator().manual_seed(seed)
    if scale == "pm50":
        z = torch.randint(0, 2, (b, c), generator=g).float() * 100 - 50  # exactly ±50
        z += torch.randn(b, c, generator=g).round()  # ties broken by small integers
    elif scale == "pm1e4":
        z = (torch.rand(b, c, generator=g) * 2 - 1) * 1e4
        z = z.round()
        z[0, 0], z[-1, -1] = 1e4, -1e4  # the extremes, exact in every dtype
    else:
        z = (torch.randn(b, c, generator=g) * scale * 100).round() / 100
    return z.to(DT[dtype]).requires_grad_(True)


def loss_case(name, c, eps, b, seed, dtype="f32", scale=3.0, source="timm",
              reduction="mean", upstream=None, partner="flip", per_sample_lam=False,
              lam=0.7):
    """One loss + gradient case. `source`:
    - timm: SoftTargetCrossEntropy(z.float(), mixup_target(...)) (mean only);
    - torch_soft: F.cross_entropy(z.float(), soft_target, reduction=...);
    - torch_smooth: F.cross_entropy(z.float(), unsmoothed soft target, label_smoothing=ε);
    - native: F.cross_entropy(z, soft_target.to(z.dtype)) computed in z's dtype by torch;
    - fastai_v1: crit(z, ya)*λ + crit(z, yb)*(1-λ), then reduced;
    - fastai_v2: torch.lerp(crit(z, yb), crit(z, ya), λ), then reduced
      (crit = F.cross_entropy(reduction='none', label_smoothing=ε))."""
    z = make_logits(b, c, seed, scale, dtype)
    g = torch.Generator().manual_seed(seed + 1)
    y = torch.randint(0, c, (b,), generator=g)
    if b >= 2:
        y[0] = y[b - 1]  # a same-class pair under the flip
    p = flip(b) if partner == "flip" else torch.randperm(b, generator=g).tolist()
    if per_sample_lam:
        lam_t = torch.rand(b, generator=g)
        lam_t[0] = 1.0
    else:
        lam_t = torch.full((b,), lam)
    lam_col = lam_t.unsqueeze(1)
    off, on = eps / c, 1.0 - eps + eps / c
    if partner == "flip":
        soft = tm.mixup_target(y, c, lam_col if per_sample_lam else lam, eps)
        plain = tm.mixup_target(y, c, lam_col if per_sample_lam else lam, 0.0)
    else:
        y1 = tm.one_hot(y, c, on_value=on, off_value=off)
        soft = y1 * lam_col + y1[p] * (1.0 - lam_col)
        y0 = tm.one_hot(y, c)
        plain = y0 * lam_col + y0[p] * (1.0 - lam_col)

    zf = z.float()
    if source == "timm":
        assert reduction == "mean"
        loss = SoftTargetCrossEntropy()(zf, soft)
    elif source == "torch_soft":
        loss = F.cross_entropy(zf, soft, reduction=reduction)
    elif source == "torch_smooth":
        loss = F.cross_entropy(zf, plain, reduction=reduction, label_smoothing=eps)
    elif source == "native":
        loss = F.cross_entropy(z, soft.to(z.dtype), reduction=reduction)
    elif source in ("fastai_v1", "fastai_v2"):
        la = F.cross_entropy(zf, y, reduction="none", label_smoothing=eps)
        lb = F.cross_entropy(zf, y[p], reduction="none", label_smoothing=eps)
        if source == "fastai_v1":
            d = la * lam_t + lb * (1 - lam_t)
        else:
            d = torch.lerp(lb, la, lam_t)
        loss = {"mean": d.mean(), "sum": d.sum(), "none": d}[reduction]
    else:
        raise ValueError(source)

    up_json = 1.0
    if reduction == "none":
        if upstream is None:
            upstream = 1.0
        if isinstance(upstream, float):
            loss.backward(torch.full_like(loss, upstream))
            up_json = upstream
        else:
            w = torch.tensor(upstream, dtype=loss.dtype)
            loss.backward(w)
            up_json = F32List(w)
    else:
        up = 1.0 if upstream is None else upstream
        (loss * up).backward() if up != 1.0 else loss.backward()
        up_json = up
    case = {
        "name": name, "source": source, "dtype": dtype, "num_classes": c, "smoothing": F32(eps),
        "batch": b, "reduction": reduction, "upstream": up_json,
        "labels": [int(v) for v in y], "partner": [int(v) for v in p], "lam": F32List(lam_t),
        "logits": F32List(z),
    }
    if reduction == "none":
        case["losses"] = F32List(loss)
        case["loss"] = F32(loss.detach().float().mean())
    else:
        case["loss"] = F32(loss)
    case["grad"] = F32List(z.grad)
    return case


def loss_fixture():
    cases = []
    # timm SoftTargetCrossEntropy (mean) across C, ε, dtypes and logit ranges.
    for c in (1, 2, 10, 1000):
        for eps in ((0.1,) if c == 1000 else (0.0, 0.1)):  # C = 1000 cases are the bulk of the file
            b = 2 if c == 1000 else 4
            cases.append(loss_case(f"timm_c{c}_eps{eps}", c, eps, b, seed=c * 10 + int(eps * 10)))
    for dtype in ("bf16", "f16"):
        for c in (10, 1000):
            b = 2 if c == 1000 else 4
            cases.append(loss_case(f"timm_{dtype}_c{c}", c, 0.1, b, seed=50 + c, dtype=dtype))
    for scale in ("pm50", "pm1e4"):
        for c in (2, 10, 1000):
            b = 2 if c == 1000 else 4
            for dtype in (("f32", "bf16", "f16") if c == 10 else ("f32",)):
                cases.append(loss_case(f"timm_{scale}_{dtype}_c{c}", c, 0.1, b, seed=70 + c,
                                       dtype=dtype, scale=scale))
    cases.append(loss_case("timm_elem_lam_c10", 10, 0.1, 6, seed=90, per_sample_lam=True))
    # F.cross_entropy on probability targets, every reduction, with upstream gradients.
    for red in ("mean", "sum", "none"):
        cases.append(loss_case(f"torch_soft_{red}", 10, 0.1, 5, seed=100, source="torch_soft",
                               reduction=red, partner="perm", per_sample_lam=True))
    cases.append(loss_case("torch_soft_mean_up3.5", 10, 0.1, 5, seed=101, source="torch_soft",
                           upstream=3.5, partner="perm", per_sample_lam=True))
    cases.append(loss_case("torch_soft_sum_up-0.25", 7, 0.0, 3, seed=102, source="torch_soft",
                           reduction="sum", upstream=-0.25))
    cases.append(loss_case("torch_soft_none_up3.5", 10, 0.1, 4, seed=103, source="torch_soft",
                           reduction="none", upstream=3.5))
    cases.append(loss_case("torch_soft_none_per_sample", 10, 0.1, 4, seed=104, source="torch_soft",
                           reduction="none", upstream=[0.5, -1.0, 2.0, 0.0]))
    cases.append(loss_case("torch_label_smoothing_c10", 10, 0.1, 4, seed=105, source="torch_smooth",
                           partner="perm", per_sample_lam=True))
    cases.append(loss_case("torch_soft_bf16_cast_sum", 10, 0.1, 4, seed=106, dtype="bf16",
                           source="torch_soft", reduction="sum"))
    # torch's own bf16/f16 cross-entropy (log-softmax rounded to the storage type).
    for dtype in ("bf16", "f16"):
        for c in ((10, 1000) if dtype == "bf16" else (10,)):
            b = 2 if c == 1000 else 4
            cases.append(loss_case(f"native_{dtype}_c{c}", c, 0.1, b, seed=110 + c, dtype=dtype,
                                   source="native"))
    # fastai's stacked loss λ CE(z, y_a) + (1-λ) CE(z, y_b): permutation partner, per-sample λ.
    for src in ("fastai_v1", "fastai_v2"):
        for red in ("mean", "sum", "none"):
            cases.append(loss_case(f"{src}_{red}", 10, 0.0, 5, seed=120, source=src,
                                   reduction=red, partner="perm", per_sample_lam=True))
    cases.append(loss_case("fastai_v2_mean_up3.5_eps0.1", 10, 0.1, 5, seed=121, source="fastai_v2",
                           upstream=3.5, partner="perm", per_sample_lam=True))
    cases.append(loss_case("fastai_v2_none_per_sample_c1000", 1000, 0.0, 3, seed=122,
                           source="fastai_v2", reduction="none", upstream=[1.0, 0.5, -2.0],
                           partner="perm", per_sample_lam=True))
    return {"meta": meta("mixup cross-entropy loss and its autograd gradient w.r.t. the logits; "
                         "logits/grad in `dtype`, loss as torch returns it"), "cases": cases}


# ---------------------------------------------------------------------------------------------
# bce.json
# ---------------------------------------------------------------------------------------------

# timm's default BCE smoothing. timm 1.0.31 uses it only to one-hot class-index targets (or on
# dense ones with smooth_dense=True, default False): on the mixed target it is ignored (checked).
BCE_OWN_SMOOTHING = 0.1


@contextlib.contextmanager
def default_dtype(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def bce_run(z, y, c, eps, lam, thr, weight, pos_weight, reduction, sum_classes, upstream, f64):
    """timm's Mixup target and BinaryCrossEntropy, loss and autograd gradient of the logits.

    f64=False is what training does: f32 target (timm's `mixup_target`), f32 loss on
    `z.float()`, gradient cast back to z's dtype by autograd. f64=True runs the same timm code
    with torch's default dtype set to f64 (timm's `one_hot` uses it) and every input widened from
    the very f32 values the crate gets (λ, threshold, weights), as the golden for the crate's
    f64 reference."""
    ctx = default_dtype(torch.float64) if f64 else contextlib.nullcontext()
    with ctx:
        if f64:
            lam = float(np.float32(lam)) if isinstance(lam, float) else lam.double()
            thr = None if thr is None else float(np.float32(thr))
            eps = float(np.float32(eps))  # the crate's smoothing is an f32
        dt = torch.float64 if f64 else torch.float32
        weight = None if weight is None else weight.to(dt)
        pos_weight = None if pos_weight is None else pos_weight.to(dt)
        target = tm.mixup_target(y, c, lam, eps)
        assert target.dtype == dt
        # f32: the logits in their own dtype, cast for the loss (autograd casts the gradient
        # back); f64: an f64 leaf, so the gradient stays in f64.
        leaf = z.detach().to(torch.float64 if f64 else z.dtype).requires_grad_(True)
        x = leaf.to(dt)
        crit = BinaryCrossEntropy(smoothing=BCE_OWN_SMOOTHING, target_threshold=thr, weight=weight,
                                  reduction=reduction, sum_classes=sum_classes,
                                  pos_weight=pos_weight)
        loss = crit(x, target)
        # timm's own `smoothing` is only used to build a target from class indices: on the dense
        # mixed target every value of it gives the same bits.
        for s in (0.0, 0.3):
            other = BinaryCrossEntropy(smoothing=s, target_threshold=thr, weight=weight,
                                       reduction=reduction, sum_classes=sum_classes,
                                       pos_weight=pos_weight)(x.detach(), target)
            assert torch.equal(other, loss.detach()), "timm smoothed a dense target"
        if thr is None:  # the check above can fail: smooth_dense=True does change the loss
            dense = BinaryCrossEntropy(smoothing=0.3, weight=weight, reduction=reduction,
                                       sum_classes=sum_classes, pos_weight=pos_weight,
                                       smooth_dense=True)(x.detach(), target)
            assert not torch.equal(dense, loss.detach())
        if loss.dim() == 0:
            (loss * upstream).backward() if upstream != 1.0 else loss.backward()
        else:
            up = torch.as_tensor(upstream, dtype=dt)
            up = up.expand(loss.shape[0]) if up.dim() == 0 else up
            loss.backward(up.unsqueeze(1).expand_as(loss).contiguous())
        if thr is not None:
            target = target.gt(thr).to(target.dtype)  # what timm's forward compared against
    return target, loss.detach(), leaf.grad


def bce_case(name, c, eps, b, seed, dtype="f32", scale=3.0, reduction="mean", thr=None,
             weight=False, pos_weight=False, sum_classes=False, per_sample_lam=False, lam=0.7,
             upstream=1.0, labels=None, boundary=False):
    """One BinaryCrossEntropy case: the flip partner (timm's Mixup), λ a Python float (batch
    mode) or an f32 [B, 1] tensor (elem mode), the target from timm's `mixup_target`. `upstream`
    is the scalar multiplying the loss, or for reduction='none' one factor per sample (row)."""
    z = make_logits(b, c, seed, scale, dtype)
    g = torch.Generator().manual_seed(seed + 1)
    y = torch.randint(0, c, (b,), generator=g)
    if labels is not None:
        y = torch.tensor(labels)
    elif b >= 2:
        y[0] = y[b - 1]  # a same-class pair under the flip
    if per_sample_lam:
        lam_t = torch.rand(b, generator=g)
        lam_t[0] = 1.0
        if b > 2:
            lam_t[1] = 0.0
        lam_arg = lam_t.unsqueeze(1)
    else:
        lam_t = torch.full((b,), lam)
        lam_arg = lam
    w = ((torch.rand(c, generator=g) * 2).round(decimals=2) + 0.25) if weight else None
    if w is not None and c > 2:
        w[1] = 0.0
    pw = ((torch.rand(c, generator=g) * 3).round(decimals=2) + 0.5) if pos_weight else None
    if pw is not None and c > 3:
        pw[2] = 1.0
    args = (y, c, eps, lam_arg, thr, w, pw, reduction, sum_classes, upstream)
    t32, l32, g32 = bce_run(z, *args, f64=False)
    t64, l64, g64 = bce_run(z, *args, f64=True)
    case = {
        "name": name, "dtype": dtype, "num_classes": c, "smoothing": F32(eps), "batch": b,
        "bce_smoothing": BCE_OWN_SMOOTHING,
        "target_threshold": None if thr is None else F32(thr),
        "weight": None if w is None else F32List(w),
        "pos_weight": None if pw is None else F32List(pw),
        "sum_classes": sum_classes, "reduction": reduction,
        "upstream": F32List(upstream) if isinstance(upstream, list) else upstream,
        "labels": [int(v) for v in y], "partner": flip(b), "lam": F32List(lam_t),
        "logits": F32List(z), "target": F32List(t32), "threshold_boundary": boundary,
    }
    if l32.dim() == 0:
        case["loss"], case["loss_f64"] = F32(l32), float(l64)
    else:
        assert l32.shape == (b, c)
        case["elements"] = F32List(l32)
        case["elements_f64"] = [float(v) for v in l64.reshape(-1)]
    case["grad"] = F32List(g32)
    case["grad_f64"] = [float(v) for v in g64.reshape(-1)]
    return case


def bce_fixture():
    cases = []
    k = 0

    def add(name, c, eps, b, **kw):
        nonlocal k
        k += 1
        cases.append(bce_case(name, c, eps, b, seed=500 + 10 * k, **kw))

    # Reductions, smoothing 0 and 0.1, batch λ (a Python float) and per-sample λ (f32 [B, 1]).
    add("mean_eps0.1_c10", 10, 0.1, 4)
    add("mean_eps0_c10", 10, 0.0, 4)
    add("mean_eps0.1_c10_up-0.25", 10, 0.1, 4, upstream=-0.25)
    add("sum_eps0.1_c7", 7, 0.1, 4, reduction="sum")
    add("sum_eps0_c5_elem", 5, 0.0, 5, reduction="sum", per_sample_lam=True)
    add("none_eps0.1_c5_odd_batch", 5, 0.1, 5, reduction="none",
        upstream=[0.5, -1.0, 2.0, 0.0, 1.5])
    add("none_eps0_c7_up3.5", 7, 0.0, 4, reduction="none", upstream=3.5)
    add("mean_eps0.1_c10_elem", 10, 0.1, 6, per_sample_lam=True)
    add("mean_eps0.1_c1", 1, 0.1, 4)
    # target_threshold=0.2: thresholded targets (0/1), with and without smoothing.
    add("thr0.2_mean_eps0.1_c10", 10, 0.1, 4, thr=0.2)
    add("thr0.2_sum_eps0_c5", 5, 0.0, 4, reduction="sum", thr=0.2, lam=0.85)
    add("thr0.2_none_eps0.1_c7_elem", 7, 0.1, 6, reduction="none", thr=0.2, per_sample_lam=True,
        upstream=[1.0, 0.5, -2.0, 1.0, 0.25, 3.0])
    # Per-class weight and pos_weight.
    add("weight_mean_eps0.1_c7", 7, 0.1, 4, weight=True)
    add("pos_weight_mean_eps0.1_c7", 7, 0.1, 4, pos_weight=True)
    add("weight_pos_weight_thr0.2_sum_eps0.1_c5", 5, 0.1, 4, reduction="sum", thr=0.2,
        weight=True, pos_weight=True)
    add("weight_pos_weight_none_eps0_c7_elem", 7, 0.0, 5, reduction="none", weight=True,
        pos_weight=True, per_sample_lam=True, upstream=[2.0, -0.5, 1.0, 0.0, 1.25])
    # sum_classes: classes summed per sample, then the batch mean.
    add("sum_classes_mean_eps0.1_c10", 10, 0.1, 4, sum_classes=True)
    add("sum_classes_mean_pos_weight_thr0.2_c7_elem", 7, 0.1, 6, sum_classes=True, thr=0.2,
        pos_weight=True, weight=True, per_sample_lam=True, upstream=2.0)
    # timm builds sum_classes with reduction='none' and ends in `.sum(-1).mean()`, whatever
    # reduction it was given: these record what it returns for 'sum' and 'none'.
    add("sum_classes_sum_eps0.1_c5", 5, 0.1, 4, reduction="sum", sum_classes=True)
    add("sum_classes_none_eps0_c5", 5, 0.0, 4, reduction="none", sum_classes=True)
    # Large logits, half-precision logits (cast to f32 for the loss, gradient in the half type).
    add("pm50_mean_eps0.1_c10", 10, 0.1, 4, scale="pm50")
    add("pm1e4_sum_eps0.1_c5_pos_weight", 5, 0.1, 4, reduction="sum", scale="pm1e4",
        pos_weight=True)
    add("bf16_mean_eps0.1_c10", 10, 0.1, 4, dtype="bf16")
    add("f16_sum_eps0.1_c7_thr0.2", 7, 0.1, 4, dtype="f16", reduction="sum", thr=0.2)
    # λ one f32 ulp from where a mixed target equals the threshold: timm rounds
    # f32(on)·λ + f32(off)·(1 - λ), the crate (1 - ε)·λ + ε/C (f32 on the CPU, f64 in the
    # reference), and `t > 0.2` can come out differently (threshold_boundary: true).
    for c, lam in [(5, "0.20000002"), (7, "0.20634921"), (7, "0.20634922")]:
        add(f"thr_boundary_c{c}_lam{lam}", c, 0.1, 2, reduction="none", thr=0.2,
            lam=float(np.float32(lam)), labels=[0, 1], boundary=True)
    return {"meta": meta(
        "timm BinaryCrossEntropy(smoothing=bce_smoothing, target_threshold, weight, pos_weight, "
        "reduction, sum_classes) on timm's mixup_target(labels, num_classes, lam, smoothing) "
        "with the flip partner, and the autograd gradient w.r.t. the logits. loss/elements/grad: "
        "training precision (target and loss in f32 on z.float(), grad in dtype); *_f64: the same "
        "timm code with torch's default dtype f64 and inputs widened from the stored f32 values. "
        "`elements` is timm's reduction='none' output [B, C]; for 'none' the backward gets "
        "upstream[i] on every element of row i. `target` is the f32 target timm compared "
        "against (after the threshold); threshold_boundary cases put a target within an f32 "
        "rounding of the threshold. timm's own `smoothing` is used only when the target is "
        "class indices (target.shape != x.shape): on the dense mixed target it is ignored "
        "(checked: bce_smoothing 0, 0.1 and 0.3 give identical bits; only smooth_dense=True, "
        "default False, would move dense targets towards 0.5), so label smoothing is the "
        "Mixup's `smoothing`, not applied twice. With sum_classes timm forces reduction='none' "
        "and returns loss.sum(-1).mean() whatever `reduction` says."), "cases": cases}


# ---------------------------------------------------------------------------------------------

def render(name, doc):
    return emit(doc) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="fail if any fixture would change")
    ap.add_argument("--only", action="append", metavar="FILE",
                    help="only this fixture (e.g. bce.json); repeatable")
    args = ap.parse_args()
    outputs = {
        "bbox.json": bbox_fixture,
        "mix.json": mix_fixture,
        "targets.json": targets_fixture,
        "loss.json": loss_fixture,
        "bce.json": bce_fixture,
        "normalize.json": normalize_fixture,
    }
    if args.only:
        unknown = set(args.only) - set(outputs)
        if unknown:
            sys.exit(f"unknown fixture(s): {', '.join(sorted(unknown))}")
        outputs = {k: v for k, v in outputs.items() if k in args.only}
    os.makedirs(FIXTURES, exist_ok=True)
    stale = []
    for name, build in outputs.items():
        text = render(name, build())
        path = os.path.join(FIXTURES, name)
        old = open(path).read() if os.path.exists(path) else None
        if args.check:
            if old != text:
                stale.append(name)
        else:
            with open(path, "w") as f:
                f.write(text)
            print(f"wrote {os.path.relpath(path)} ({len(text)} bytes)")
    if stale:
        sys.exit(f"fixtures differ from a fresh run: {', '.join(stale)}")


if __name__ == "__main__":
    main()
