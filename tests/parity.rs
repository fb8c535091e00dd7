//! Parity with PyTorch and timm: the crate's outputs against golden values that
//! `scripts/golden_timm.py` computed with torch and timm (versions in each fixture's `meta`,
//! pinned in `scripts/requirements-golden.txt`). The fixtures in `tests/fixtures/` are committed:
//! these tests need neither Python nor torch.
//!
//! Tolerances are written `|got - want| <= abs + rel·|want|` and derived where they are used.
//! `EPS32` below is f32's machine epsilon (2^-23): torch computes in f32, so its golden values
//! carry a few f32 roundings that our f64 reference does not, and that our f32 CPU path makes in
//! a different order.

use std::collections::BTreeSet;

use mixup_kernels::SampleShape;
use mixup_kernels::{
    BceSpec, CeSpec, CutBox, GradOutput, MixConfig, MixPlan, Mode, Reduction, Sampler, TargetSpec,
    reference, timm_rand_bbox,
};

const EPS32: f64 = f32::EPSILON as f64;

// ---------------------------------------------------------------------------------------------
// A minimal JSON reader. Numbers keep their text, so each is parsed once with the correctly
// rounded `f32::from_str` / `f64::from_str` for the type it is: the script writes f32 values
// with their shortest f32 representation, which only an f32 parse recovers without a double
// rounding through f64.
// ---------------------------------------------------------------------------------------------

mod common;
use common::{assert_close, cut, image};

mod json {
    #[derive(Debug, Clone)]
    pub enum Value {
        Null,
        Bool(bool),
        Num(String),
        Str(String),
        Arr(Vec<Value>),
        Obj(Vec<(String, Value)>),
    }

    pub fn parse(text: &str) -> Value {
        let mut p = Parser {
            b: text.as_bytes(),
            i: 0,
        };
        let v = p.value();
        p.ws();
        assert_eq!(p.i, p.b.len(), "trailing characters after the JSON value");
        v
    }

    struct Parser<'a> {
        b: &'a [u8],
        i: usize,
    }

    impl Parser<'_> {
        fn ws(&mut self) {
            while self.i < self.b.len() && self.b[self.i].is_ascii_whitespace() {
                self.i += 1;
            }
        }

        fn eat(&mut self, c: u8) {
            self.ws();
            assert_eq!(self.b[self.i] as char, c as char, "at byte {}", self.i);
            self.i += 1;
        }

        fn peek(&mut self) -> u8 {
            self.ws();
            self.b[self.i]
        }

        fn word(&mut self, w: &str, v: Value) -> Value {
            assert!(
                self.b[self.i..].starts_with(w.as_bytes()),
                "at byte {}",
                self.i
            );
            self.i += w.len();
            v
        }

        fn string(&mut self) -> String {
            self.eat(b'"');
            let start = self.i;
            while self.b[self.i] != b'"' {
                assert_ne!(
                    self.b[self.i], b'\\',
                    "escapes are not used by the fixtures"
                );
                self.i += 1;
            }
            self.i += 1;
            String::from_utf8(self.b[start..self.i - 1].to_vec()).unwrap()
        }

        /// `open`, items separated by commas (each read by `item`), `close`.
        fn list<T>(&mut self, open: u8, close: u8, item: impl Fn(&mut Self) -> T) -> Vec<T> {
            self.eat(open);
            let mut items = Vec::new();
            if self.peek() == close {
                self.eat(close);
                return items;
            }
            loop {
                items.push(item(self));
                if self.peek() == b',' {
                    self.eat(b',');
                } else {
                    self.eat(close);
                    return items;
                }
            }
        }

        fn value(&mut self) -> Value {
            match self.peek() {
                b'{' => Value::Obj(self.list(b'{', b'}', |p| {
                    let k = p.string();
                    p.eat(b':');
                    (k, p.value())
                })),
                b'[' => Value::Arr(self.list(b'[', b']', Self::value)),
                b'"' => Value::Str(self.string()),
                b't' => self.word("true", Value::Bool(true)),
                b'f' => self.word("false", Value::Bool(false)),
                b'n' => self.word("null", Value::Null),
                _ => {
                    let start = self.i;
                    while self.i < self.b.len() && b"+-0123456789.eE".contains(&self.b[self.i]) {
                        self.i += 1;
                    }
                    assert!(self.i > start, "unexpected byte at {}", start);
                    Value::Num(String::from_utf8(self.b[start..self.i].to_vec()).unwrap())
                }
            }
        }
    }

    impl Value {
        pub fn get(&self, key: &str) -> &Value {
            self.opt(key)
                .unwrap_or_else(|| panic!("fixture field `{key}` missing"))
        }

        pub fn opt(&self, key: &str) -> Option<&Value> {
            match self {
                Value::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
                _ => panic!("`{key}` looked up in a non-object"),
            }
        }

        pub fn arr(&self) -> &[Value] {
            match self {
                Value::Arr(v) => v,
                other => panic!("expected an array, got {other:?}"),
            }
        }

        pub fn is_null(&self) -> bool {
            matches!(self, Value::Null)
        }

        pub fn str(&self) -> &str {
            match self {
                Value::Str(s) => s,
                other => panic!("expected a string, got {other:?}"),
            }
        }

        pub fn bool(&self) -> bool {
            match self {
                Value::Bool(b) => *b,
                other => panic!("expected a bool, got {other:?}"),
            }
        }

        fn num(&self) -> &str {
            match self {
                Value::Num(s) => s,
                other => panic!("expected a number, got {other:?}"),
            }
        }

        pub fn f64(&self) -> f64 {
            self.num().parse().expect("f64")
        }

        pub fn f32(&self) -> f32 {
            self.num().parse().expect("f32")
        }

        pub fn usize(&self) -> usize {
            self.num().parse().expect("usize")
        }

        pub fn f32s(&self) -> Vec<f32> {
            self.arr().iter().map(Value::f32).collect()
        }

        pub fn usizes(&self) -> Vec<usize> {
            self.arr().iter().map(Value::usize).collect()
        }

        pub fn u32s(&self) -> Vec<u32> {
            self.arr().iter().map(|v| v.usize() as u32).collect()
        }

        pub fn u8s(&self) -> Vec<u8> {
            self.arr()
                .iter()
                .map(|v| u8::try_from(v.usize()).expect("u8 pixel"))
                .collect()
        }
    }
}

use json::Value;

fn fixture(name: &str) -> Value {
    let text = match name {
        "bbox" => include_str!("fixtures/bbox.json"),
        "mix" => include_str!("fixtures/mix.json"),
        "targets" => include_str!("fixtures/targets.json"),
        "loss" => include_str!("fixtures/loss.json"),
        "bce" => include_str!("fixtures/bce.json"),
        "normalize" => include_str!("fixtures/normalize.json"),
        _ => unreachable!(),
    };
    json::parse(text)
}

fn cases<'a>(doc: &'a Value, key: &str) -> &'a [Value] {
    let v = doc.get(key).arr();
    assert!(!v.is_empty(), "fixture list `{key}` is empty");
    v
}

fn widen<T: Copy + Into<f64>>(v: &[T]) -> Vec<f64> {
    v.iter().map(|&x| x.into()).collect()
}

/// u8 pixels kept as f32 values, as u8.
fn pixels(v: &[f32]) -> Vec<u8> {
    v.iter().map(|&v| v as u8).collect()
}

fn box_of(v: &Value) -> CutBox {
    let b = v.u32s();
    cut(b[0]..b[1], b[2]..b[3])
}

// ---------------------------------------------------------------------------------------------
// Boxes and λ correction (exact)
// ---------------------------------------------------------------------------------------------

/// timm's `rand_bbox` (batch mode: λ a Python float, arithmetic in f64) for given centers,
/// over corners, centers, odd sizes, λ of 0, 1 and near both, and λ where `side·sqrt(1-λ)`
/// falls on an integer. Boxes must be identical, and `1 - area/(H·W)` must reproduce timm's
/// `correct_lam` bit for bit (same f64 operations in the same order).
#[test]
fn rand_bbox_matches_timm_exactly() {
    let doc = fixture("bbox");
    let rows = cases(&doc, "rand_bbox");
    let mut clipped = 0;
    for r in rows {
        let (h, w) = (r.get("h").usize(), r.get("w").usize());
        let (lam, cy, cx) = (r.get("lam").f64(), r.get("cy").usize(), r.get("cx").usize());
        let want = box_of(r.get("box"));
        let got = timm_rand_bbox(h, w, lam, cy, cx).unwrap();
        assert_eq!(
            got, want,
            "rand_bbox(H={h}, W={w}, λ={lam}, cy={cy}, cx={cx})"
        );
        let corrected = r.get("lam_corrected").f64();
        assert_eq!(
            got.kept_fraction(h, w).to_bits(),
            corrected.to_bits(),
            "correct_lam for {got:?} in {h}x{w}: {} vs timm {corrected}",
            got.kept_fraction(h, w)
        );
        clipped += usize::from(corrected != lam);
    }
    // The fixture must exercise clipping (corrected λ differs from the drawn one).
    assert!(clipped > rows.len() / 4, "only {clipped} clipped boxes");
}

/// In timm's elem and pair modes λ is an `np.float32`, so `sqrt(1 - λ)` and `H·ratio` are
/// computed in f32; `timm_rand_bbox` (like timm's batch mode) computes in f64. The fixture
/// lists λ values where the two timm paths disagree; the crate follows the f64 path. This test
/// pins that choice and documents the f32 path's boxes.
#[test]
fn rand_bbox_follows_timms_f64_path_for_f32_lambdas() {
    let doc = fixture("bbox");
    for r in cases(&doc, "rand_bbox_f32_lam") {
        let (h, w) = (r.get("h").usize(), r.get("w").usize());
        let lam = r.get("lam").f32();
        let (cy, cx) = (r.get("cy").usize(), r.get("cx").usize());
        let got = timm_rand_bbox(h, w, f64::from(lam), cy, cx).unwrap();
        assert_eq!(got, box_of(r.get("box_f64")), "H={h} λ={lam}");
        assert_ne!(
            got,
            box_of(r.get("box_f32")),
            "fixture row has no disagreement"
        );
        assert_eq!(
            got.kept_fraction(h, w).to_bits(),
            r.get("lam_corrected_f64").f64().to_bits()
        );
    }
}

/// A `rand_bbox_minmax` row's `minmax` ratios and the bounds timm asked `randint` for (cut_h,
/// cut_w, y0, x0).
fn minmax_row(r: &Value) -> ((f64, f64), Vec<Vec<usize>>) {
    let mm = r.get("minmax").arr();
    let bounds = r
        .get("randint_bounds")
        .arr()
        .iter()
        .map(|b| b.usizes())
        .collect();
    ((mm[0].f64(), mm[1].f64()), bounds)
}

/// `rand_bbox_minmax` with scripted draws: timm's box is `[y0, y0+cut_h) × [x0, x0+cut_w)` and
/// its λ is always corrected to the area; the crate's `kept_fraction` must give that λ exactly.
/// The side bounds timm asked `randint` for must be `int(side·min) .. int(side·max)`.
#[test]
fn rand_bbox_minmax_lambda_and_side_bounds() {
    let doc = fixture("bbox");
    for r in cases(&doc, "rand_bbox_minmax") {
        let (h, w) = (r.get("h").usize(), r.get("w").usize());
        let ((lo, hi), bounds) = minmax_row(r);
        let d = r.get("draws").usizes();
        let b = box_of(r.get("box"));
        let expect = cut(
            d[2] as u32..(d[2] + d[0]) as u32,
            d[3] as u32..(d[3] + d[1]) as u32,
        );
        assert_eq!(b, expect);
        assert_eq!(
            bounds[0],
            vec![(h as f64 * lo) as usize, (h as f64 * hi) as usize]
        );
        assert_eq!(
            bounds[1],
            vec![(w as f64 * lo) as usize, (w as f64 * hi) as usize]
        );
        assert_eq!(
            b.kept_fraction(h, w).to_bits(),
            r.get("lam_corrected").f64().to_bits()
        );
    }
}

type Pairs = BTreeSet<(usize, usize)>;

/// Draws 3200 minmax boxes with the crate's sampler for an `h × w` image and returns the
/// observed (cut_h, y0) and (cut_w, x0) pairs. The fixture's images are small (at most a few
/// dozen such pairs), so each pair of the support is drawn with near certainty.
fn minmax_draws(h: usize, w: usize, mm: (f64, f64)) -> (Pairs, Pairs) {
    let cfg = MixConfig {
        mixup_alpha: 0.0,
        cutmix_minmax: Some(mm),
        mode: Mode::Elem,
        ..MixConfig::timm(10)
    };
    let s = Sampler::new(cfg, 99).unwrap();
    let (mut ys, mut xs) = (Pairs::new(), Pairs::new());
    for step in 0..400 {
        for m in s.plan_images(step, 8, image(h, w)).unwrap().samples() {
            let b = m.cut.expect("minmax forces CutMix");
            ys.insert(((b.y1 - b.y0) as usize, b.y0 as usize));
            xs.insert(((b.x1 - b.x0) as usize, b.x0 as usize));
        }
    }
    (ys, xs)
}

/// The `rand_bbox_minmax` rows of small images (at most 100 pixels: every value of the support
/// is drawn within [`minmax_draws`]' budget) with the crate's draws for them: `(h, w, timm's
/// scripted draws, timm's randint bounds, the draws)`.
#[allow(clippy::type_complexity)]
fn small_minmax_draws() -> Vec<(usize, usize, Vec<usize>, Vec<Vec<usize>>, (Pairs, Pairs))> {
    let doc = fixture("bbox");
    let mut out = Vec::new();
    for r in cases(&doc, "rand_bbox_minmax") {
        let (h, w) = (r.get("h").usize(), r.get("w").usize());
        if h * w > 100 {
            continue;
        }
        let (mm, bounds) = minmax_row(r);
        out.push((
            h,
            w,
            r.get("draws").usizes(),
            bounds,
            minmax_draws(h, w, mm),
        ));
    }
    // 18 rows on 2026-12-01; the tests over these draws must not pass on an empty list.
    assert!(
        out.len() >= 10,
        "{} small minmax rows in the fixture",
        out.len()
    );
    out
}

/// The sampler's minmax box sides cover exactly timm's `randint` range for the side.
#[test]
fn sampler_minmax_sides_cover_timms_range() {
    for (h, w, _, bounds, (ys, xs)) in small_minmax_draws() {
        let sides_h: BTreeSet<usize> = ys.iter().map(|p| p.0).collect();
        let sides_w: BTreeSet<usize> = xs.iter().map(|p| p.0).collect();
        assert_eq!(
            sides_h,
            (bounds[0][0]..bounds[0][1]).collect(),
            "{h}x{w} cut_h"
        );
        assert_eq!(
            sides_w,
            (bounds[1][0]..bounds[1][1]).collect(),
            "{h}x{w} cut_w"
        );
    }
}

/// timm 1.0.29+ draws the minmax box offset with `randint(0, H - cut_h + 1)`: the box may touch
/// the bottom/right edge (timm <= 1.0.28 used `randint(0, H - cut_h)`). The crate follows the
/// current timm.
#[test]
fn sampler_minmax_offsets_cover_timms_range() {
    for (h, w, d, bounds, (ys, xs)) in small_minmax_draws() {
        let want_y: Vec<(usize, usize)> = (bounds[2][0]..bounds[2][1]).map(|y| (d[0], y)).collect();
        let want_x: Vec<(usize, usize)> = (bounds[3][0]..bounds[3][1]).map(|x| (d[1], x)).collect();
        let got_y: Vec<_> = ys.iter().filter(|p| p.0 == d[0]).copied().collect();
        let got_x: Vec<_> = xs.iter().filter(|p| p.0 == d[1]).copied().collect();
        assert_eq!(got_y, want_y, "{h}x{w}: offsets for cut_h = {}", d[0]);
        assert_eq!(got_x, want_x, "{h}x{w}: offsets for cut_w = {}", d[1]);
    }
}

// ---------------------------------------------------------------------------------------------
// Mixing inputs
// ---------------------------------------------------------------------------------------------

/// A mixing case: the plan timm drew (rebuilt with `MixPlan::with_boxes`) and its output.
struct MixCase {
    name: String,
    plan: MixPlan,
    /// `[B, C, H, W]` for images, `[B, len]` for rows.
    shape: Vec<usize>,
    /// Whether timm's weights (f32(λ), f32(1-λ)) equal the crate's (f32(λ), 1 - f32(λ)), so the
    /// f32 lerp is expected bit for bit.
    #[cfg_attr(not(feature = "cpu"), allow(dead_code))]
    bit_exact: bool,
    u8: bool,
    x: Vec<f32>,
    out: Vec<f32>,
}

fn mix_cases() -> Vec<(MixCase, Value)> {
    let doc = fixture("mix");
    cases(&doc, "cases")
        .iter()
        .map(|c| (mix_case(c), c.clone()))
        .collect()
}

/// One case of mix.json or normalize.json (whose `out` is timm's f32 model input).
fn mix_case(c: &Value) -> MixCase {
    let shape = c.get("shape").usizes();
    let partner = c.get("partner").usizes();
    let lam = c.get("lam").f32s();
    let boxes: Vec<Option<CutBox>> = c
        .get("boxes")
        .arr()
        .iter()
        .map(|b| (!b.is_null()).then(|| box_of(b)))
        .collect();
    let rows = c.opt("layout").is_some_and(|l| l.str() == "rows");
    let plan = if rows {
        MixPlan::from_parts(&partner, &lam).unwrap()
    } else {
        MixPlan::with_boxes(&partner, &lam, &boxes, image(shape[2], shape[3])).unwrap()
    };
    // timm stores the corrected λ of a CutMix sample in an f32 array: the crate's
    // correction, rounded to f32, must give the same value.
    for (i, b) in boxes.iter().enumerate() {
        if let Some(b) = b {
            let kept = b.kept_fraction(shape[2], shape[3]) as f32;
            assert_eq!(
                kept,
                lam[i],
                "{}: correct_lam of sample {i}",
                c.get("name").str()
            );
        }
    }
    let u8 = c.get("dtype").str() == "u8";
    let normalized = c.opt("mean").is_some();
    let nums = |k: &str, pixels: bool| -> Vec<f32> {
        if pixels {
            c.get(k).u8s().into_iter().map(f32::from).collect()
        } else {
            c.get(k).f32s()
        }
    };
    MixCase {
        name: c.get("name").str().to_owned(),
        plan,
        shape,
        bit_exact: c.get("bit_exact").bool(),
        u8,
        x: nums("x", u8),
        out: nums("out", u8 && !normalized),
    }
}

impl MixCase {
    fn nchw(&self) -> mixup_kernels::SampleShape {
        match self.shape[..] {
            [_, len] => mixup_kernels::SampleShape::rows(len),
            [_, channels, height, width] => {
                mixup_kernels::SampleShape::channels_first(channels, height, width)
            }
            _ => unreachable!(),
        }
    }

    /// The same batch channels-last: `x.permute(0, 2, 3, 1)`.
    fn nhwc(&self) -> Option<(mixup_kernels::SampleShape, Vec<f32>, Vec<f32>)> {
        let [b, c, h, w] = self.shape[..] else {
            return None;
        };
        let permute = |v: &[f32]| {
            let mut o = vec![0.0; v.len()];
            for n in 0..b {
                for ch in 0..c {
                    for y in 0..h {
                        for x in 0..w {
                            o[((n * h + y) * w + x) * c + ch] = v[((n * c + ch) * h + y) * w + x];
                        }
                    }
                }
            }
            o
        };
        let layout = mixup_kernels::SampleShape::channels_last(h, w, c);
        Some((layout, permute(&self.x), permute(&self.out)))
    }

    /// Layouts to test: NCHW (or rows) as timm ran it, and NHWC by permutation.
    fn layouts(&self) -> Vec<(mixup_kernels::SampleShape, Vec<f32>, Vec<f32>)> {
        let mut v = vec![(self.nchw(), self.x.clone(), self.out.clone())];
        v.extend(self.nhwc());
        v
    }
}

/// Runs `check(case, what, layout, x, want)` on every mix.json case in each of its layouts
/// ([`MixCase::layouts`]); `what` names the case and the layout.
fn each_mix_layout(mut check: impl FnMut(&MixCase, &str, &SampleShape, &[f32], &[f32])) {
    for (case, _) in mix_cases() {
        for (layout, x, want) in case.layouts() {
            let what = format!("{} {:?}", case.name, layout);
            check(&case, &what, &layout, &x, &want);
        }
    }
}

/// f32: torch's result is `fl(fl(λa) + fl((1-λ)b))`, within 1.5 ulp of the exact value at the
/// magnitude of the inputs (|x| < 4.1 here, ulp 4.8e-7), so 1e-6 absolute; 1e-6 relative
/// covers larger values. u8: timm rounds that f32 value half to even; the f64 reference must
/// round to the same pixel except within 1e-4 of a tie, where the f32 roundings decide.
#[test]
fn reference_mix_matches_timm_and_torch() {
    each_mix_layout(|case, what, layout, x, want| {
        if case.u8 {
            let got = reference::mix(&case.plan, layout, &pixels(x)).unwrap();
            for (i, (&g, &e)) in got.iter().zip(want).enumerate() {
                let near_tie = ((g - g.floor()) - 0.5).abs() < 1e-4;
                let ok = if near_tie {
                    (g - f64::from(e)).abs() <= 0.5 + 1e-4
                } else {
                    g.round_ties_even() == f64::from(e)
                };
                assert!(ok, "{what}[{i}]: reference {g} vs timm pixel {e}");
            }
        } else {
            let got = reference::mix(&case.plan, layout, x).unwrap();
            assert_close(what, &got, &widen(want), |_: usize, e: f64| {
                1e-6 + 1e-6 * e.abs()
            });
        }
    });
}

/// The mix fixture must keep exercising every branch: u8 MixUp and CutMix, a non-involution
/// partner, rows, and a batch mixing CutMix, MixUp and unmixed samples.
#[test]
fn mix_fixture_covers_every_branch() {
    let all = mix_cases();
    let has = |f: &dyn Fn(&MixCase) -> bool| all.iter().any(|(c, _)| f(c));
    assert!(has(&|c| c.u8 && c.plan.has_cutmix()));
    assert!(has(&|c| c.u8 && !c.plan.has_cutmix()));
    assert!(has(&|c| !c.plan.is_involution()));
    assert!(has(&|c| c.shape.len() == 2));
    assert!(has(&|c| c.plan.samples().any(|s| s.cut.is_some())
        && c.plan.samples().any(|s| s.cut.is_none() && s.lam < 1.0)
        && c.plan.samples().any(|s| s.lam == 1.0)));
}

#[cfg(feature = "cpu")]
mod cpu_mix {
    use super::*;
    use mixup_kernels::cpu;

    /// f32: bit for bit where timm's weights equal ours (two rounded products and one rounded
    /// sum, as torch and numpy compute them, no FMA); otherwise, and for samples that are their
    /// own partner (timm's odd batch), 1e-6 as for the reference.
    /// u8: the pixel timm's collate produced (f32 lerp, round half to even), exactly.
    #[test]
    fn cpu_mix_matches_timm_and_torch() {
        each_mix_layout(|case, what, layout, x, want| {
            if case.u8 {
                let xu = pixels(x);
                let mut out = vec![0u8; xu.len()];
                cpu::mix(&case.plan, layout, &xu, &mut out).unwrap();
                let wantu = pixels(want);
                if case.bit_exact {
                    assert_eq!(out, wantu, "{what}");
                } else {
                    assert_close(what, &widen(&out), &widen(&wantu), |_: usize, _: f64| 1.0);
                }
                if case.plan.is_involution() {
                    let mut inplace = xu.clone();
                    cpu::mix_in_place(&case.plan, layout, &mut inplace).unwrap();
                    assert_eq!(inplace, out, "{what} in place");
                }
            } else {
                let mut out = vec![0f32; x.len()];
                cpu::mix(&case.plan, layout, x, &mut out).unwrap();
                if case.bit_exact {
                    let row = x.len() / case.plan.len();
                    for (i, (g, e)) in out.iter().zip(want).enumerate() {
                        // A sample that is its own partner is copied: the crate gives the
                        // exact λx + (1-λ)x = x where torch rounds the lerp.
                        if case.plan.sample(i / row).partner == i / row {
                            assert!((g - e).abs() <= 1e-6 + 1e-6 * e.abs(), "{what}[{i}]");
                        } else {
                            assert_eq!(g.to_bits(), e.to_bits(), "{what}[{i}]: {g} vs torch {e}");
                        }
                    }
                } else {
                    assert_close(what, &widen(&out), &widen(want), |_: usize, e: f64| {
                        1e-6 + 1e-6 * e.abs()
                    });
                }
                if case.plan.is_involution() {
                    let mut inplace = x.to_vec();
                    cpu::mix_in_place(&case.plan, layout, &mut inplace).unwrap();
                    assert_eq!(inplace, out, "{what} in place");
                }
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Pixels to the model's input: timm's FastCollateMixup + PrefetchLoader
// ---------------------------------------------------------------------------------------------

/// normalize.json: the u8 cases of mix.json, each normalized with two sets of constants by
/// timm's `PrefetchLoader`. Returns the case, its `Normalize` (timm's `mean·255`, `std·255`, u8
/// rounding on) and NHWC copies of input and output.
fn normalize_cases() -> Vec<(MixCase, mixup_kernels::Normalize)> {
    let doc = fixture("normalize");
    cases(&doc, "cases")
        .iter()
        .map(|c| {
            let f64s = |k: &str| -> Vec<f64> { c.get(k).arr().iter().map(Value::f64).collect() };
            let norm = mixup_kernels::Normalize::new(&f64s("mean"), &f64s("std"), 255.0)
                .unwrap()
                .with_u8_rounding(true);
            (mix_case(c), norm)
        })
        .collect()
}

/// The fixture keeps covering MixUp, CutMix, a λ = 1 sample, forced ties and a std under one
/// pixel.
#[test]
fn normalize_fixture_covers_every_branch() {
    let all = normalize_cases();
    assert!(all.iter().any(|(c, _)| c.plan.has_cutmix()));
    assert!(
        all.iter()
            .any(|(c, _)| c.plan.samples().any(|s| s.cut.is_none() && s.lam < 1.0))
    );
    assert!(all.iter().any(|(c, _)| c.name.contains("ties")));
    assert!(all.iter().any(|(_, n)| n.std().iter().any(|&s| s < 1.0)));
}

/// The f64 reference in u8-rounding mode: the pixel is timm's, then `(v − mean)/std` in f64
/// against torch's f32 subtraction and division (two roundings: 2 ε of the result, plus ε of
/// `|v| + |mean|` over std for the subtraction). Where timm's weights are not ours
/// (`bit_exact` false) a pixel may differ by one: 1/std more.
#[test]
fn reference_mix_normalize_matches_timm_prefetch() {
    for (case, norm) in normalize_cases() {
        for (layout, x, want) in case.layouts() {
            let what = format!("{} {layout:?}", case.name);
            let xu = pixels(&x);
            let fmt = match layout {
                mixup_kernels::SampleShape::Image { format, .. } => format,
                mixup_kernels::SampleShape::Rows(_) => mixup_kernels::MemoryFormat::ChannelsFirst,
            };
            let got = reference::mix_normalize(&case.plan, &layout, &norm, &xu, fmt).unwrap();
            let smin = norm.std().iter().fold(f32::MAX, |a, &b| a.min(b)) as f64;
            let mmax = norm.mean().iter().fold(0.0f32, |a, &b| a.max(b.abs())) as f64;
            let pixel = if case.bit_exact { 0.0 } else { 1.0 / smin };
            assert_close(&what, &got, &widen(&want), |_: usize, e: f64| {
                2.0 * EPS32 * e.abs() + EPS32 * (255.0 + mmax) / smin + pixel
            });
        }
    }
}

#[cfg(feature = "cpu")]
mod cpu_mix_normalize {
    use super::*;
    use mixup_kernels::{MemoryFormat, cpu};

    /// The CPU op in u8-rounding mode with an f32 output is timm's collate + PrefetchLoader bit
    /// for bit, from either input format to either output format, where timm's weights equal
    /// ours (`bit_exact`); elsewhere within one pixel over std.
    #[test]
    fn cpu_mix_normalize_matches_timm_bit_for_bit() {
        let mut exact_cases = 0;
        for (case, norm) in normalize_cases() {
            let [b, c, h, w] = case.shape[..] else {
                unreachable!()
            };
            let layouts = case.layouts();
            let (cf, cl) = (&layouts[0], &layouts[1]);
            for (layout, x, _) in [cf, cl] {
                let xu = pixels(x);
                for (fmt, want) in [
                    (MemoryFormat::ChannelsFirst, &cf.2),
                    (MemoryFormat::ChannelsLast, &cl.2),
                ] {
                    let what = format!("{} {layout:?} -> {fmt:?}", case.name);
                    let mut out = vec![0.0f32; b * c * h * w];
                    cpu::mix_normalize(&case.plan, layout, &norm, &xu, fmt, &mut out).unwrap();
                    if case.bit_exact {
                        for (i, (g, e)) in out.iter().zip(want.iter()).enumerate() {
                            assert_eq!(g.to_bits(), e.to_bits(), "{what}[{i}]: {g} vs timm {e}");
                        }
                        exact_cases += 1;
                    } else {
                        let smin = norm.std().iter().fold(f32::MAX, |a, &b| a.min(b)) as f64;
                        assert_close(&what, &widen(&out), &widen(want), |_: usize, _: f64| {
                            1.0 / smin + 1e-5
                        });
                    }
                }
            }
        }
        assert!(
            exact_cases >= 40,
            "only {exact_cases} bit-exact comparisons"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Soft targets
// ---------------------------------------------------------------------------------------------

struct TargetCase {
    name: String,
    plan: MixPlan,
    labels: Vec<u32>,
    spec: TargetSpec,
    target: Vec<f32>,
}

/// Every soft target in the fixtures: targets.json, plus the targets timm's `Mixup` and
/// `FastCollateMixup` returned with the mixed images in mix.json (same plan).
fn target_cases() -> Vec<TargetCase> {
    let mut v = Vec::new();
    let doc = fixture("targets");
    for c in cases(&doc, "cases") {
        let plan = MixPlan::from_parts(&c.get("partner").usizes(), &c.get("lam").f32s()).unwrap();
        v.push(TargetCase {
            name: c.get("name").str().to_owned(),
            plan,
            labels: c.get("labels").u32s(),
            spec: TargetSpec::new(c.get("num_classes").usize(), c.get("smoothing").f64()).unwrap(),
            target: c.get("target").f32s(),
        });
    }
    for (m, c) in mix_cases() {
        if c.opt("target").is_none() {
            continue;
        }
        v.push(TargetCase {
            name: format!("mix.json {}", m.name),
            plan: m.plan,
            labels: c.get("labels").u32s(),
            spec: TargetSpec::new(c.get("num_classes").usize(), c.get("smoothing").f64()).unwrap(),
            target: c.get("target").f32s(),
        });
    }
    v
}

/// torch builds the target in f32 as `on·λ + off·(1-λ)` from f32 `on`/`off`: a few roundings
/// of values <= 1, each <= 2^-24, so 1e-6 absolute (8 ulp of 1) bounds the difference from the
/// exact value; 1e-6 relative as for every f32 comparison here.
#[test]
fn reference_soft_targets_match_timm() {
    let all = target_cases();
    assert!(all.len() >= 20);
    assert!(all.iter().any(|c| c.spec.num_classes() == 1));
    assert!(all.iter().any(|c| c.spec.num_classes() == 1000));
    // Same-class partners (weights add) must be present.
    assert!(all.iter().any(|c| {
        c.plan
            .samples()
            .enumerate()
            .any(|(i, s)| s.partner != i && c.labels[i] == c.labels[s.partner] && s.lam < 1.0)
    }));
    for c in all {
        let got = reference::soft_targets(&c.plan, &c.spec, &c.labels).unwrap();
        assert_close(&c.name, &got, &widen(&c.target), |_: usize, e: f64| {
            1e-6 + 1e-6 * e.abs()
        });
    }
}

/// One unit in the last place of `v` stored as `dtype` (`f32`, `bf16` or `f16`), subnormals
/// included: two values that round the same f32-accurate quantity once can differ by one unit
/// where that quantity lies near a rounding boundary.
fn ulp(dtype: &str, v: f64) -> f64 {
    let (mantissa, min_exp) = match dtype {
        "f32" => (23, -126),
        "bf16" => (7, -126),
        "f16" => (10, -14),
        _ => unreachable!("{dtype}"),
    };
    let e = if v == 0.0 {
        min_exp
    } else {
        (v.abs().log2().floor() as i32).max(min_exp)
    };
    2f64.powi(e - mantissa)
}

#[cfg(feature = "cpu")]
mod cpu_targets {
    use super::*;
    use mixup_kernels::{FloatElement, bf16, cpu, f16};

    fn check<T: FloatElement + Into<f64>>(dtype: &str) {
        for c in target_cases() {
            let mut out = vec![T::default(); c.target.len()];
            cpu::soft_targets(&c.plan, &c.spec, &c.labels, &mut out).unwrap();
            // torch's f32 error (1e-6, as above), plus one unit of the storage type.
            assert_close(
                &format!("{} as {dtype}", c.name),
                &widen(&out),
                &widen(&c.target),
                |_: usize, e: f64| {
                    1e-6 + 1e-6 * e.abs() + if dtype == "f32" { 0.0 } else { ulp(dtype, e) }
                },
            );
        }
    }

    #[test]
    fn cpu_soft_targets_match_timm_f32() {
        check::<f32>("f32");
    }

    #[test]
    fn cpu_soft_targets_match_timm_bf16() {
        check::<bf16>("bf16");
    }

    #[test]
    fn cpu_soft_targets_match_timm_f16() {
        check::<f16>("f16");
    }
}

// ---------------------------------------------------------------------------------------------
// Mixup cross-entropy: loss and gradient against torch autograd
// ---------------------------------------------------------------------------------------------

/// What the cases of loss.json and bce.json share (each case derefs to it): the plan, the
/// labels, the logits in their storage type and the upstream gradient.
#[derive(Clone)]
struct LossInputs {
    name: String,
    /// The logits' storage type: "f32", "bf16" or "f16".
    dtype: String,
    plan: MixPlan,
    labels: Vec<u32>,
    /// Logits as f32 values (exact in `dtype`).
    logits: Vec<f32>,
    upstream_scalar: Option<f32>,
    upstream_per_sample: Vec<f32>,
}

impl LossInputs {
    fn parse(c: &Value) -> Self {
        let up = c.get("upstream");
        let (upstream_scalar, upstream_per_sample) = match up {
            Value::Arr(_) => (None, up.f32s()),
            _ => (Some(up.f32()), Vec::new()),
        };
        let plan = MixPlan::from_parts(&c.get("partner").usizes(), &c.get("lam").f32s()).unwrap();
        assert_eq!(plan.len(), c.get("batch").usize());
        Self {
            name: c.get("name").str().to_owned(),
            dtype: c.get("dtype").str().to_owned(),
            plan,
            labels: c.get("labels").u32s(),
            logits: c.get("logits").f32s(),
            upstream_scalar,
            upstream_per_sample,
        }
    }

    fn batch(&self) -> usize {
        self.plan.len()
    }

    fn upstream(&self) -> GradOutput<'_> {
        match self.upstream_scalar {
            Some(g) => GradOutput::Scalar(g),
            None => GradOutput::PerSample(&self.upstream_per_sample),
        }
    }

    /// The upstream gradient of sample `i`.
    fn upstream_of(&self, i: usize) -> f64 {
        match self.upstream_scalar {
            Some(g) => f64::from(g),
            None => f64::from(self.upstream_per_sample[i]),
        }
    }
}

/// A fixture case's `reduction`.
fn reduction_of(c: &Value) -> Reduction {
    match c.get("reduction").str() {
        "mean" => Reduction::Mean,
        "sum" => Reduction::Sum,
        "none" => Reduction::None,
        r => panic!("reduction {r}"),
    }
}

/// Runs a CPU forward-only loss (`cpu::mixup_ce_forward` or `cpu::mixup_bce_forward`) as
/// [`run_cpu`] does; returns the reduced loss (NaN for none) and the per-sample losses.
#[cfg(feature = "cpu")]
fn run_cpu_forward<S, T: mixup_kernels::FloatElement>(
    op: common::CpuForward<S, T>,
    case: &LossInputs,
    spec: &S,
    z: &[T],
) -> (f32, Vec<f32>) {
    let mut losses = vec![0f32; case.batch()];
    let loss = op(&case.plan, spec, z, &case.labels, Some(&mut losses))
        .unwrap()
        .unwrap_or(f32::NAN);
    (loss, losses)
}

/// Lets a loss case read its [`LossInputs`] as its own fields (`case.plan`, `case.labels`...).
macro_rules! deref_to_inputs {
    ($($case:ty),+) => {$(
        impl std::ops::Deref for $case {
            type Target = LossInputs;
            fn deref(&self) -> &LossInputs {
                &self.inputs
            }
        }
    )+};
}

deref_to_inputs!(LossCase, BceCase);

struct LossCase {
    inputs: LossInputs,
    source: String,
    spec: CeSpec,
    loss: f64,
    losses: Option<Vec<f64>>,
    grad: Vec<f64>,
}

impl LossCase {
    fn classes(&self) -> usize {
        self.spec.num_classes()
    }

    /// The gradient scale of sample `i`: the upstream gradient, over B for the mean.
    fn scale(&self, i: usize) -> f64 {
        let up = self.upstream_of(i);
        match self.spec.reduction() {
            Reduction::Mean => up / self.batch() as f64,
            _ => up,
        }
    }

    /// Largest |logit| of row i: f32 roundings in the log-sum-exp happen at this magnitude.
    fn row_max(&self, i: usize) -> f64 {
        let c = self.classes();
        self.logits[i * c..(i + 1) * c]
            .iter()
            .fold(0.0f64, |m, &z| m.max(f64::from(z).abs()))
    }

    /// Per-sample loss tolerance. torch (and our f32 path) compute `lse - Σ t·z` with f32
    /// roundings at the magnitude of the logits (the cancellation between lse and the target
    /// logit leaves an absolute, not relative, error) and a sum over C terms:
    /// 4·EPS32·(1 + max|z| + ln C), plus 1e-6 relative. Measured over the whole fixture (logits
    /// up to ±1e4): torch vs the f64 reference uses at most 15% of it, the CPU path vs torch 11%.
    fn loss_tol_row(&self, i: usize, want: f64) -> f64 {
        4.0 * EPS32 * (1.0 + self.row_max(i) + (self.classes() as f64).ln()) + 1e-6 * want.abs()
    }

    /// The reduced loss: the rows' tolerances summed (and averaged for the mean).
    fn loss_tol(&self, want: f64) -> f64 {
        let b = self.batch();
        let sum: f64 = (0..b).map(|i| self.loss_tol_row(i, 0.0)).sum();
        let t = match self.spec.reduction() {
            Reduction::Sum => sum,
            _ => sum / b as f64,
        };
        t + 1e-6 * want.abs()
    }

    /// Gradient tolerance at (row i, value want). torch computes `-t·s + softmax·Σ(t·s)` in f32:
    /// p and t are <= 1 and Σt = 1 up to log2 C roundings, so the error is a few EPS32 times
    /// |s|·(1 + ln C); softmax itself is relatively accurate to EPS32·(|z - max| + ln C), which
    /// the absolute term covers because p·|z - max| <= 1/e: 4·EPS32·|s|·(1 + ln C) plus 8 EPS32
    /// relative (torch's f32 gradients vs the reference, and the CPU path's vs torch, use at
    /// most 15% of it). Half types add one unit of the storage type: torch and we each round an
    /// f32 value once (torch's bf16/f16 gradients use up to half of that unit, as a correctly
    /// rounded value would).
    fn grad_tol(&self, i: usize, want: f64) -> f64 {
        let c = self.classes() as f64;
        let mut t = 4.0 * EPS32 * self.scale(i).abs() * (1.0 + c.ln()) + 8.0 * EPS32 * want.abs();
        if self.dtype != "f32" {
            t += ulp(&self.dtype, want);
        }
        t
    }
}

fn loss_cases() -> Vec<LossCase> {
    let doc = fixture("loss");
    cases(&doc, "cases")
        .iter()
        .map(|c| LossCase {
            inputs: LossInputs::parse(c),
            source: c.get("source").str().to_owned(),
            spec: CeSpec::new(
                c.get("num_classes").usize(),
                c.get("smoothing").f64(),
                reduction_of(c),
            )
            .unwrap(),
            loss: c.get("loss").f32().into(),
            losses: c.opt("losses").map(|l| widen(&l.f32s())),
            grad: widen(&c.get("grad").f32s()),
        })
        .collect()
}

/// The logits in their storage type; panics if a fixture value is not exact in it.
fn typed<T: mixup_kernels::FloatElement>(v: &[f32]) -> Vec<T> {
    v.iter()
        .map(|&z| {
            let t = T::from_f32(z);
            assert_eq!(
                t.to_f32(),
                z,
                "fixture logit {z} is not exact in the storage type"
            );
            t
        })
        .collect()
}

/// Runs `f` with the case's logits in their own type.
macro_rules! with_dtype {
    ($case:expr, |$t:ident: $T:ident| $body:expr) => {
        match $case.dtype.as_str() {
            "f32" => {
                type $T = f32;
                let $t: Vec<$T> = typed(&$case.logits);
                $body
            }
            "bf16" => {
                type $T = mixup_kernels::bf16;
                let $t: Vec<$T> = typed(&$case.logits);
                $body
            }
            "f16" => {
                type $T = mixup_kernels::f16;
                let $t: Vec<$T> = typed(&$case.logits);
                $body
            }
            d => panic!("dtype {d}"),
        }
    };
}

/// The f64 reference (`reference::mixup_ce` or `reference::mixup_bce`) of a loss case under
/// `$spec`, on its logits in their storage type.
macro_rules! exact {
    ($op:ident, $case:expr, $spec:expr) => {
        with_dtype!($case, |z: T| {
            reference::$op(&$case.plan, $spec, &z, &$case.labels, $case.upstream()).unwrap()
        })
    };
}

/// Runs a CPU loss (`cpu::mixup_ce` or `cpu::mixup_bce`) on a case's logits `z` under `spec`
/// into fresh outputs; returns the reduced loss (NaN for none), the per-sample losses and the
/// gradient.
#[cfg(feature = "cpu")]
fn run_cpu<S, T: mixup_kernels::FloatElement>(
    op: common::CpuLoss<S, T>,
    case: &LossInputs,
    spec: &S,
    z: &[T],
) -> (f32, Vec<f32>, Vec<T>) {
    let mut losses = vec![0f32; case.batch()];
    let mut grad = vec![T::default(); z.len()];
    let up = case.upstream();
    let loss = op(
        &case.plan,
        spec,
        z,
        &case.labels,
        up,
        Some(&mut losses),
        &mut grad,
    )
    .unwrap()
    .unwrap_or(f32::NAN);
    (loss, losses, grad)
}

/// Compares a loss result with the torch case (the f32-accurate sources; torch's native
/// half-precision cases are checked separately).
fn check_loss(case: &LossCase, what: &str, loss: f64, losses: Option<&[f64]>, grad: &[f64]) {
    // Reduction::None has no scalar (the per-sample losses below are the result).
    let scalar = case.spec.reduction() != Reduction::None;
    assert!(
        !scalar || (loss - case.loss).abs() <= case.loss_tol(case.loss),
        "{what}: loss {loss} vs torch {} (tol {:e})",
        case.loss,
        case.loss_tol(case.loss)
    );
    if let (Some(got), Some(want)) = (losses, &case.losses) {
        assert_close(&format!("{what} losses"), got, want, |i: usize, e: f64| {
            case.loss_tol_row(i, e)
        });
    }
    let c = case.classes();
    assert_close(
        &format!("{what} grad"),
        grad,
        &case.grad,
        |k: usize, e: f64| case.grad_tol(k / c, e),
    );
}

fn torch_accurate(case: &LossCase) -> bool {
    case.source != "native"
}

#[test]
fn loss_fixture_covers_the_grid() {
    let all = loss_cases();
    for c in [1, 2, 10, 1000] {
        assert!(all.iter().any(|l| l.classes() == c), "C = {c}");
    }
    for d in ["f32", "bf16", "f16"] {
        assert!(all.iter().any(|l| l.dtype == d && torch_accurate(l)), "{d}");
    }
    for r in [Reduction::Mean, Reduction::Sum, Reduction::None] {
        assert!(all.iter().any(|l| l.spec.reduction() == r));
    }
    assert!(all.iter().any(|l| l.logits.iter().any(|z| z.abs() >= 1e4)));
    assert!(all.iter().any(|l| l.upstream_per_sample.len() > 1));
    assert!(
        all.iter()
            .any(|l| l.upstream_scalar.is_some_and(|g| g != 1.0))
    );
}

/// The f64 reference against torch autograd (SoftTargetCrossEntropy, F.cross_entropy on soft
/// targets and with label_smoothing, fastai's stacked losses), every reduction and grad_output.
#[test]
fn reference_mixup_ce_matches_torch_autograd() {
    let mut n = 0;
    for case in loss_cases().iter().filter(|c| torch_accurate(c)) {
        let r = exact!(mixup_ce, case, &case.spec);
        let losses = (case.spec.reduction() == Reduction::None).then_some(&r.losses[..]);
        check_loss(
            case,
            &format!("reference {}", case.name),
            r.loss.unwrap_or(f64::NAN),
            losses,
            &r.grad,
        );
        n += 1;
    }
    assert!(n >= 30, "only {n} cases");
}

/// torch's own half-precision cross-entropy (`F.cross_entropy` on bf16/f16 logits) rounds the
/// log-softmax and the target to the storage type, so it is far less accurate than an f32
/// computation. Checked loosely against the exact value (so a corrupted fixture still fails):
/// each logit's log-probability carries a relative error of 2^-8 (bf16) / 2^-11 (f16), so the
/// loss is within 2^-6 / 2^-9 relative and each gradient entry within
/// |s|·(p·2^-6·(1 + |log p|) + 2^-7) for bf16 (2^-9 / 2^-10 for f16).
#[test]
fn torch_native_half_cross_entropy_is_loosely_close() {
    let mut n = 0;
    for case in loss_cases().iter().filter(|c| !torch_accurate(c)) {
        let (rel, grad_rel) = if case.dtype == "bf16" {
            (2f64.powi(-6), 2f64.powi(-7))
        } else {
            (2f64.powi(-9), 2f64.powi(-10))
        };
        let r = exact!(mixup_ce, case, &case.spec);
        assert!(
            case.spec.reduction() == Reduction::None
                || (r.loss.unwrap_or(f64::NAN) - case.loss).abs()
                    <= rel * r.loss.unwrap_or(f64::NAN).abs(),
            "{}: exact {} vs torch {}",
            case.name,
            r.loss.unwrap_or(f64::NAN),
            case.loss
        );
        let c = case.classes();
        let t = reference::soft_targets(&case.plan, case.spec.targets(), &case.labels).unwrap();
        // softmax, recovered from the exact gradient (p - t)·s.
        let p: Vec<f64> = (0..r.grad.len())
            .map(|k| r.grad[k] / case.scale(k / c) + t[k])
            .collect();
        assert_close(&case.name, &case.grad, &r.grad, |k: usize, _: f64| {
            let s = case.scale(k / c).abs();
            s * (p[k] * 2.0 * rel * (1.0 + p[k].max(1e-300).ln().abs()) + grad_rel)
        });
        n += 1;
    }
    assert!(n >= 3);
}

#[cfg(feature = "cpu")]
mod cpu_loss {
    use super::*;
    use mixup_kernels::{Element, cpu};

    /// `cpu::mixup_ce` (separate gradient buffer), `cpu::mixup_ce_in_place` and
    /// `cpu::mixup_ce_forward` against torch autograd, every dtype the fixture has.
    #[test]
    fn cpu_mixup_ce_matches_torch_autograd() {
        let mut n = 0;
        for case in loss_cases().iter().filter(|c| torch_accurate(c)) {
            with_dtype!(case, |z: T| {
                let (loss, losses, grad) = run_cpu(cpu::mixup_ce, case, &case.spec, &z);
                let grad64 = widen(&grad);
                let what = format!("cpu {}", case.name);
                let per = (case.spec.reduction() == Reduction::None).then(|| widen(&losses));
                check_loss(case, &what, loss.into(), per.as_deref(), &grad64);

                let mut inplace = z.clone();
                let loss2 = cpu::mixup_ce_in_place(
                    &case.plan,
                    &case.spec,
                    &mut inplace,
                    &case.labels,
                    case.upstream(),
                    Some(&mut vec![0f32; case.plan.len()][..]),
                )
                .unwrap()
                .unwrap_or(f32::NAN);
                assert_eq!(loss2.to_bits(), loss.to_bits(), "{what}: in-place loss");
                for (k, (a, g)) in inplace.iter().zip(&grad).enumerate() {
                    assert_eq!(
                        a.to_f32().to_bits(),
                        g.to_f32().to_bits(),
                        "{what}: in-place grad[{k}]"
                    );
                }

                let (fwd, fwd_losses) =
                    run_cpu_forward(cpu::mixup_ce_forward, case, &case.spec, &z);
                assert!(
                    case.spec.reduction() == Reduction::None
                        || (f64::from(fwd) - case.loss).abs() <= case.loss_tol(case.loss),
                    "{what}: forward loss {fwd} vs torch {}",
                    case.loss
                );
                if let Some(want) = &case.losses {
                    assert_close(
                        &format!("{what} forward losses"),
                        &widen(&fwd_losses),
                        want,
                        |i: usize, e: f64| case.loss_tol_row(i, e),
                    );
                }
            });
            n += 1;
        }
        assert!(n >= 30, "only {n} cases");
    }

    /// Where torch computes the cross-entropy in bf16/f16 itself, our f32-accumulating path
    /// writing bf16/f16 must be at least as close to the exact value as torch is.
    #[test]
    fn cpu_half_ce_is_at_least_as_accurate_as_torch_native() {
        let mut n = 0;
        for case in loss_cases().iter().filter(|c| !torch_accurate(c)) {
            n += 1;
            let exact = exact!(mixup_ce, case, &case.spec);
            let (loss, grad) = with_dtype!(case, |z: T| {
                let (loss, _, grad) = run_cpu(cpu::mixup_ce, case, &case.spec, &z);
                (f64::from(loss), widen(&grad))
            });
            let max_err = |g: &[f64]| {
                g.iter()
                    .zip(&exact.grad)
                    .map(|(a, e)| (a - e).abs())
                    // A NaN error counts as infinite (`f64::max` would drop it).
                    .fold(
                        0.0,
                        |m, e| if e.is_nan() { f64::INFINITY } else { m.max(e) },
                    )
            };
            assert!(
                case.spec.reduction() == Reduction::None
                    || (loss - exact.loss.unwrap_or(f64::NAN)).abs()
                        <= (case.loss - exact.loss.unwrap_or(f64::NAN)).abs(),
                "{}: our loss error {:e} vs torch's {:e}",
                case.name,
                (loss - exact.loss.unwrap_or(f64::NAN)).abs(),
                (case.loss - exact.loss.unwrap_or(f64::NAN)).abs()
            );
            assert!(
                max_err(&grad) <= max_err(&case.grad),
                "{}: our max grad error {:e} vs torch's {:e}",
                case.name,
                max_err(&grad),
                max_err(&case.grad)
            );
        }
        assert!(
            n >= 3,
            "only {n} half-precision cases where torch computes in bf16/f16"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Mixup binary cross-entropy: timm's BinaryCrossEntropy on timm's mixed target
// ---------------------------------------------------------------------------------------------

/// One `bce.json` case. timm computed every value twice: in training precision (f32 target and
/// loss, gradient in the logits' dtype) and in f64 (the same timm code with torch's default
/// dtype f64, inputs widened from the stored f32 values).
#[derive(Clone)]
struct BceCase {
    inputs: LossInputs,
    spec: BceSpec,
    /// What timm's forward compared against / used: thresholded already.
    target: Vec<f64>,
    /// The scalar timm returned (`None` for an `[B, C]` result).
    loss: Option<f64>,
    loss64: Option<f64>,
    /// timm's `reduction='none'` output, `[B, C]`.
    elements: Option<Vec<f64>>,
    elements64: Option<Vec<f64>>,
    grad: Vec<f64>,
    grad64: Vec<f64>,
    /// A target within an f32 rounding of the threshold (see `bce_threshold_boundary_cases`).
    boundary: bool,
}

impl BceCase {
    fn classes(&self) -> usize {
        self.spec.num_classes()
    }

    /// The gradient scale of sample `i` as timm's autograd applies it: the upstream gradient,
    /// over B·C for the mean, over B with `sum_classes` (timm then always takes the batch mean).
    fn scale(&self, i: usize) -> f64 {
        let up = self.upstream_of(i);
        let (b, c) = (self.batch() as f64, self.classes() as f64);
        if self.spec.sum_classes() {
            up / b
        } else if self.spec.reduction() == Reduction::Mean {
            up / (b * c)
        } else {
            up
        }
    }

    /// `(class weight v, pos_weight w)` of element `j`.
    fn weights(&self, j: usize) -> (f64, f64) {
        let k = j % self.classes();
        (
            self.spec.weight().map_or(1.0, |v| f64::from(v[k])),
            self.spec.pos_weight().map_or(1.0, |w| f64::from(w[k])),
        )
    }

    /// The magnitude the roundings of element `j` scale with: `ℓ = v·((1 − t)·z + (1 + (w − 1)t)
    /// ·softplus(−z))` is formed from terms up to `|v|·(1 + w)·(1 + |z|)` (its cancellation for
    /// large |z| leaves an absolute error of that size), and the target's own rounding (f32 in
    /// timm, a different f32 formula on the CPU) moves `ℓ` by `|∂ℓ/∂t|·δt <= |v|·(1 + w)·
    /// (1 + |z|)·δt` too.
    fn size(&self, j: usize) -> f64 {
        let (v, w) = self.weights(j);
        v.abs() * (1.0 + w) * (1.0 + f64::from(self.logits[j]).abs())
    }

    /// Row sums of timm's `[B, C]` elements: the crate's per-sample losses.
    fn row_sums(elements: &[f64], c: usize) -> Vec<f64> {
        elements.chunks(c).map(|r| r.iter().sum()).collect()
    }

    /// Element tolerance `rel` times the element's size (see [`size`](Self::size)).
    fn element_tol(&self, j: usize, rel: f64) -> f64 {
        rel * self.size(j)
    }

    /// Row `i`: its elements' tolerances summed.
    fn row_tol(&self, i: usize, rel: f64) -> f64 {
        let c = self.classes();
        (i * c..(i + 1) * c).map(|j| self.element_tol(j, rel)).sum()
    }

    /// The reduced loss as timm reduces: the sum of all rows' tolerances, over the count the
    /// mean divides by.
    fn loss_tol(&self, rel: f64, want: f64) -> f64 {
        let sum: f64 = (0..self.batch()).map(|i| self.row_tol(i, rel)).sum();
        let (b, c) = (self.batch() as f64, self.classes() as f64);
        let t = if self.spec.sum_classes() {
            sum / b
        } else if self.spec.reduction() == Reduction::Sum {
            sum
        } else {
            sum / (b * c)
        };
        t + rel * want.abs()
    }

    /// Gradient tolerance of element `j`: `g = v·((1 + (w − 1)t)·σ(z) − w·t)·s` is made of
    /// terms up to `|v|·(1 + w)·|s|`, each good to `rel` (σ and t relative, the product rounded):
    /// `rel·|v|·(1 + w)·|s| + 2·rel·|want|`, plus one unit of a half storage type (torch and we
    /// each round an f32 value to it once).
    fn grad_tol(&self, j: usize, rel: f64, want: f64) -> f64 {
        let (v, w) = self.weights(j);
        let mut t = rel * v.abs() * (1.0 + w) * self.scale(j / self.classes()).abs()
            + 2.0 * rel * want.abs();
        if rel > 1e-9 && self.dtype != "f32" {
            t += ulp(&self.dtype, want);
        }
        t
    }
}

fn bce_cases() -> Vec<BceCase> {
    let doc = fixture("bce");
    cases(&doc, "cases")
        .iter()
        .map(|c| {
            let mut spec = BceSpec::new(
                c.get("num_classes").usize(),
                c.get("smoothing").f64(),
                reduction_of(c),
            )
            .unwrap()
            .with_sum_classes(c.get("sum_classes").bool());
            if !c.get("target_threshold").is_null() {
                spec = spec
                    .with_target_threshold(c.get("target_threshold").f32())
                    .unwrap();
            }
            if !c.get("weight").is_null() {
                spec = spec.with_weight(c.get("weight").f32s()).unwrap();
            }
            if !c.get("pos_weight").is_null() {
                spec = spec.with_pos_weight(c.get("pos_weight").f32s()).unwrap();
            }
            let f64s = |v: &Value| v.arr().iter().map(Value::f64).collect::<Vec<_>>();
            BceCase {
                inputs: LossInputs::parse(c),
                spec,
                target: widen(&c.get("target").f32s()),
                loss: c.opt("loss").map(|v| v.f32().into()),
                loss64: c.opt("loss_f64").map(Value::f64),
                elements: c.opt("elements").map(|v| widen(&v.f32s())),
                elements64: c.opt("elements_f64").map(f64s),
                grad: widen(&c.get("grad").f32s()),
                grad64: f64s(c.get("grad_f64")),
                boundary: c.get("threshold_boundary").bool(),
            }
        })
        .collect()
}

/// The cases away from the threshold boundary.
fn bce_typed_cases() -> Vec<BceCase> {
    bce_cases().into_iter().filter(|c| !c.boundary).collect()
}

/// timm with `sum_classes=True` ignores `reduction` (it sets 'none' and ends in
/// `.sum(-1).mean()`): those cases with reduction 'sum' / 'none' are checked on their own.
fn timm_reduction_follows_spec(case: &BceCase) -> bool {
    !case.spec.sum_classes() || case.spec.reduction() == Reduction::Mean
}

/// The cases (away from the threshold boundary) whose reduction timm followed.
fn spec_reduction_cases() -> Vec<BceCase> {
    bce_typed_cases()
        .into_iter()
        .filter(timm_reduction_follows_spec)
        .collect()
}

/// Compares a BCE result with one of timm's two runs. `rel` is the relative accuracy of the
/// less accurate side (f32 level against the training-precision run, 1e-12 against f64).
#[allow(clippy::too_many_arguments)]
fn check_bce(
    case: &BceCase,
    what: &str,
    rel: f64,
    want_loss: Option<f64>,
    want_elements: Option<&[f64]>,
    want_grad: &[f64],
    loss: f64,
    losses: &[f64],
    elements: Option<&[f64]>,
    grad: &[f64],
) {
    let c = case.classes();
    // Reduction::None has no scalar (the per-sample losses are the result).
    let want_loss = want_loss.filter(|_| case.spec.reduction() != Reduction::None);
    if let Some(want) = want_loss {
        let tol = case.loss_tol(rel, want);
        assert!(
            (loss - want).abs() <= tol,
            "{what}: loss {loss} vs timm {want} (|diff| {:e}, tol {tol:e})",
            (loss - want).abs()
        );
    }
    if let Some(want) = want_elements {
        if let Some(got) = elements {
            assert_close(
                &format!("{what} elements"),
                got,
                want,
                |j: usize, e: f64| case.element_tol(j, rel) + rel * e.abs(),
            );
        }
        let rows = BceCase::row_sums(want, c);
        assert_close(
            &format!("{what} per-sample"),
            losses,
            &rows,
            |i: usize, e: f64| case.row_tol(i, rel) + rel * e.abs(),
        );
        // timm has no reduced value for 'none', and neither has the crate (NaN stands for
        // its `None`); a reduced value here would be a scalar pretending to be one.
        if case.spec.reduction() == Reduction::None {
            assert!(
                loss.is_nan(),
                "{what}: Reduction::None gave a scalar {loss}"
            );
        }
    }
    assert_close(
        &format!("{what} grad"),
        grad,
        want_grad,
        |j: usize, e: f64| case.grad_tol(j, rel, e),
    );
}

/// f32-level accuracy: torch's f32 run and our CPU path each round at most a few times per
/// term (the CPU's `ln_1p` is within 3 ulp), so 4·EPS32 relative to the element's size.
/// Measured over the fixture: every check passes with EPS32; with EPS32/4 the gradient of
/// `σ(z) − t` near t (z ≈ 3, t = 0.91, both the reference and the CPU against torch's f32 run)
/// does not.
const BCE_REL32: f64 = 4.0 * EPS32;
/// torch's f64 run against our f64 reference: the same formula up to rearrangement (every
/// check passes with 1e-15).
const BCE_REL64: f64 = 1e-12;

#[test]
fn bce_fixture_covers_the_grid() {
    let all = bce_cases();
    let any = |f: &dyn Fn(&BceCase) -> bool| all.iter().any(f);
    for eps in [0.0, 0.1] {
        assert!(any(&|c| c.spec.label_smoothing() == eps), "smoothing {eps}");
    }
    for r in [Reduction::Mean, Reduction::Sum, Reduction::None] {
        assert!(any(&|c| c.spec.reduction() == r && !c.spec.sum_classes()));
    }
    assert!(any(&|c| c.spec.target_threshold().is_none()));
    assert!(any(
        &|c| c.spec.target_threshold() == Some(0.2) && !c.boundary
    ));
    assert!(any(&|c| c.spec.weight().is_some()));
    assert!(any(&|c| c.spec.pos_weight().is_some()));
    assert!(any(&|c| c.spec.sum_classes()));
    assert!(any(&|c| !c.spec.sum_classes()));
    assert!(any(&|c| c.classes() % 2 == 1 && c.classes() > 1));
    assert!(any(&|c| c.batch() % 2 == 1));
    for d in ["f32", "bf16", "f16"] {
        assert!(any(&|c| c.dtype == d), "{d}");
    }
    // Per-sample λ (elem mode) and one batch λ; a sample whose flipped partner has its label.
    assert!(any(&|c| c
        .plan
        .samples()
        .any(|s| s.lam != c.plan.samples().next().unwrap().lam)));
    assert!(any(&|c| c.plan.samples().all(|s| s.lam == 0.7)));
    assert!(all.iter().all(|c| {
        c.batch() < 2
            || c.boundary
            || c.plan
                .samples()
                .enumerate()
                .any(|(i, s)| i != s.partner && c.labels[i] == c.labels[s.partner])
    }));
    assert!(any(&|c| c.upstream_per_sample.len() > 1));
    assert!(any(&|c| c.logits.iter().any(|z| z.abs() >= 1e4)));
    // Thresholded targets are 0/1, the others positive with smoothing.
    for c in &all {
        if c.spec.target_threshold().is_some() {
            assert!(c.target.iter().all(|&t| t == 0.0 || t == 1.0), "{}", c.name);
        }
    }
}

/// The f64 reference against timm's f64 run (1e-12) and its training-precision run (f32
/// level): loss, per-element and per-sample losses, gradient.
#[test]
fn reference_mixup_bce_matches_timm() {
    let mut n = 0;
    for case in &spec_reduction_cases() {
        let spec64 = spec_of_f64_run(&case.spec);
        for (spec, rel, run, loss, elements, grad) in [
            (
                &spec64,
                BCE_REL64,
                "f64",
                case.loss64,
                &case.elements64,
                &case.grad64,
            ),
            (
                &case.spec,
                BCE_REL32,
                "f32",
                case.loss,
                &case.elements,
                &case.grad,
            ),
        ] {
            let r = exact!(mixup_bce, case, spec);
            check_bce(
                case,
                &format!("reference {} vs timm {run}", case.name),
                rel,
                loss,
                elements.as_deref(),
                grad,
                r.loss.unwrap_or(f64::NAN),
                &r.losses,
                Some(&r.elements),
                &r.grad,
            );
        }
        n += 1;
    }
    assert!(n >= 20, "only {n} cases");
}

#[cfg(feature = "cpu")]
mod cpu_bce {
    use super::*;
    use mixup_kernels::cpu;

    /// `cpu::mixup_bce` and `cpu::mixup_bce_forward` against timm's training-precision run (f32
    /// level) and its f64 run (the same f32-level tolerance: the CPU path computes in f32).
    #[test]
    fn cpu_mixup_bce_matches_timm() {
        let mut n = 0;
        for case in &spec_reduction_cases() {
            with_dtype!(case, |z: T| {
                let (loss, losses, grad) = run_cpu(cpu::mixup_bce, case, &case.spec, &z);
                let grad64 = widen(&grad);
                for (run, want_loss, want_el, want_grad) in [
                    ("f32", case.loss, &case.elements, &case.grad),
                    ("f64", case.loss64, &case.elements64, &case.grad64),
                ] {
                    check_bce(
                        case,
                        &format!("cpu {} vs timm {run}", case.name),
                        BCE_REL32,
                        want_loss,
                        want_el.as_deref(),
                        want_grad,
                        loss.into(),
                        &widen(&losses),
                        None,
                        &grad64,
                    );
                }
                let (fwd, fwd_losses) =
                    run_cpu_forward(cpu::mixup_bce_forward, case, &case.spec, &z);
                assert_eq!(fwd.to_bits(), loss.to_bits(), "{}: forward loss", case.name);
                assert_eq!(
                    fwd_losses, losses,
                    "{}: forward per-sample losses",
                    case.name
                );
            });
            n += 1;
        }
        assert!(n >= 20, "only {n} cases");
    }

    /// As `reference_bce_sum_classes_mean_is_timms_value_for_every_reduction`, on the CPU.
    #[test]
    fn cpu_bce_sum_classes_mean_is_timms_value_for_every_reduction() {
        let mut n = 0;
        for mean in sum_classes_cases_as_mean() {
            with_dtype!(mean, |z: T| {
                let (loss, losses, grad) = run_cpu(cpu::mixup_bce, &mean, &mean.spec, &z);
                let grad64 = widen(&grad);
                check_bce(
                    &mean,
                    &format!("cpu {} (as Mean) vs timm f32", mean.name),
                    BCE_REL32,
                    mean.loss,
                    None,
                    &mean.grad,
                    loss.into(),
                    &widen(&losses),
                    None,
                    &grad64,
                );
            });
            n += 1;
        }
        assert!(n >= 2);
    }
}

/// The cases timm ran with `sum_classes` and reduction 'sum' or 'none' (which it ignores: see
/// below), each with the crate's [`Reduction::Mean`] that gives timm's value.
fn sum_classes_cases_as_mean() -> Vec<BceCase> {
    bce_typed_cases()
        .into_iter()
        .filter(|c| !timm_reduction_follows_spec(c))
        .map(|mut c| {
            c.spec = respec(&c.spec, Reduction::Mean);
            c
        })
        .collect()
}

/// `spec` with another reduction.
fn respec(spec: &BceSpec, reduction: Reduction) -> BceSpec {
    respec_eps(spec, reduction, spec.label_smoothing())
}

/// The spec timm's f64 run was given: `scripts/golden_timm.py` rounds ε to f32 there (the
/// crate's smoothing was an f32 when the fixtures were made), while the training-precision run
/// and the threshold decisions use timm's double ε.
fn spec_of_f64_run(spec: &BceSpec) -> BceSpec {
    let eps = f64::from(spec.label_smoothing() as f32);
    respec_eps(spec, spec.reduction(), eps)
}

fn respec_eps(spec: &BceSpec, reduction: Reduction, eps: f64) -> BceSpec {
    let t = spec.targets();
    let mut s = BceSpec::new(t.num_classes(), eps, reduction)
        .unwrap()
        .with_sum_classes(spec.sum_classes());
    if let Some(thr) = spec.target_threshold() {
        s = s.with_target_threshold(thr).unwrap();
    }
    if let Some(w) = spec.weight() {
        s = s.with_weight(w.to_vec()).unwrap();
    }
    if let Some(w) = spec.pos_weight() {
        s = s.with_pos_weight(w.to_vec()).unwrap();
    }
    s
}

/// timm's `sum_classes=True` builds its loss with reduction 'none' and returns
/// `loss.sum(-1).mean()` whatever `reduction` says; the crate's [`Reduction::Mean`] with
/// `sum_classes` is that value, for the cases where timm was given 'sum' or 'none' too.
#[test]
fn reference_bce_sum_classes_mean_is_timms_value_for_every_reduction() {
    let mut n = 0;
    for mean in sum_classes_cases_as_mean() {
        let spec64 = spec_of_f64_run(&mean.spec);
        let r = exact!(mixup_bce, mean, &spec64);
        check_bce(
            &mean,
            &format!("reference {} (as Mean) vs timm f64", mean.name),
            BCE_REL64,
            mean.loss64,
            None,
            &mean.grad64,
            r.loss.unwrap_or(f64::NAN),
            &r.losses,
            None,
            &r.grad,
        );
        n += 1;
    }
    assert!(n >= 2);
}

// timm with `sum_classes=True` ignores its `reduction` (always the batch mean of the per-sample
// sums); `BceSpec` keeps `Sum` and `None` meaning what they say, and `Mean` gives timm's value
// whatever reduction timm was handed (checked above). Documented on `BceSpec`.

/// The boundary cases agree exactly: the thresholded target is decided on timm's own f32
/// rounding of the soft target (`BceSpec::thresholded`).
#[test]
fn bce_threshold_boundary_matches_timm() {
    let mut bad = Vec::new();
    let cases: Vec<_> = bce_cases().into_iter().filter(|c| c.boundary).collect();
    // The fixture's boundary cases (3 on 2026-12-01): none would make this test pass vacuously.
    assert!(
        cases.len() >= 3,
        "{} boundary cases in the fixture",
        cases.len()
    );
    for case in &cases {
        let c = case.classes();
        let want = BceCase::row_sums(case.elements.as_ref().unwrap(), c);
        let r = reference::mixup_bce(
            &case.plan,
            &case.spec,
            &case.logits,
            &case.labels,
            case.upstream(),
        )
        .unwrap();
        #[allow(unused_mut)]
        let mut got = vec![("reference", r.losses.clone())];
        #[cfg(feature = "cpu")]
        {
            let forward = mixup_kernels::cpu::mixup_bce_forward;
            let (_, losses) = run_cpu_forward(forward, case, &case.spec, &case.logits);
            got.push(("cpu", widen(&losses)));
        }
        for (what, l) in got {
            for i in 0..case.batch() {
                // `ok` is false for a NaN on either side.
                let ok = (l[i] - want[i]).abs() <= case.row_tol(i, BCE_REL32);
                if !ok {
                    bad.push(format!(
                        "{what} {} row {i}: {} vs timm {}",
                        case.name, l[i], want[i]
                    ));
                }
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
