//! Mixing a batch: MixUp lerp and CutMix paste, out of place for any plan, in place for pairs.
//!
//! Per element, in f32 and rounded once to the storage type:
//! `out_i = lam_i * x_i + (1 - lam_i) * x_partner(i)` (two rounded products, one rounded sum, no
//! FMA: Rust never contracts), or for a CutMix sample of an image layout, `x_partner(i)` inside
//! its box and `x_i` outside. A sample that is its own partner is copied unchanged (the formula's
//! value, `λx + (1-λ)x = x`, without its rounding), so in place and out of place agree.
//!
//! A row is walked as *runs*: maximal ranges where a sample keeps its own values, takes its
//! partner's, or lerps. Keep/take runs are slice copies (memcpy); only lerp runs do arithmetic.

use pulp::Simd;
use rayon::prelude::*;

use super::lanes::{F32s, Isa, Kernel, Lanes, width};
use crate::dtype::Element;
use crate::error::{Result, check_len};
use crate::plan::{MixPlan, PlanEntry};
use crate::spec::{MemoryFormat, SampleShape, check_mix};

/// What a run of a sample's output holds.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// The sample's own values.
    Own,
    /// The partner's values (inside a CutMix box).
    Other,
    /// `lam * own + (1 - lam) * partner`.
    Lerp(f32),
}

/// A CutMix box in row coordinates. Image rows are a sequence of *lines* of `line` elements:
/// NCHW has `C·H` lines of `W` pixels, NHWC has `H` lines of `W·C` values. Line `l` is image row
/// `l % height`; the box covers elements `c0..c1` of lines whose image row is in `y0..y1`.
#[derive(Debug, Clone, Copy)]
struct BoxRuns {
    line: usize,
    height: usize,
    y0: usize,
    y1: usize,
    c0: usize,
    c1: usize,
}

/// How one sample's row is produced.
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// The whole row is one kind.
    Plain(Kind),
    /// Own outside the box, partner inside.
    Boxed(BoxRuns),
}

impl Rule {
    fn new(index: usize, e: &PlanEntry, layout: &SampleShape) -> Self {
        if e.partner as usize == index {
            return Rule::Plain(Kind::Own);
        }
        if e.cut == 0 {
            return Rule::Plain(Kind::Lerp(e.lam));
        }
        let (y0, y1, x0, x1) = (e.y0 as usize, e.y1 as usize, e.x0 as usize, e.x1 as usize);
        let (line, height, group) = match *layout {
            // Rows lerp every sample, CutMix ones included: that is how targets mix.
            SampleShape::Rows(_) => return Rule::Plain(Kind::Lerp(e.lam)),
            SampleShape::Image {
                format: MemoryFormat::ChannelsFirst,
                height,
                width,
                ..
            } => (width, height, 1),
            SampleShape::Image {
                format: MemoryFormat::ChannelsLast,
                height,
                width,
                channels,
            } => (width * channels, height, channels),
        };
        if y0 >= y1 || x0 >= x1 {
            return Rule::Plain(Kind::Own);
        }
        Rule::Boxed(BoxRuns {
            line,
            height,
            y0,
            y1,
            c0: x0 * group,
            c1: x1 * group,
        })
    }

    fn runs(self, start: usize, end: usize) -> Runs {
        Runs {
            rule: self,
            pos: start,
            end,
        }
    }
}

/// The runs of one rule over `start..end` of a row, as `(kind, from, to)` in row coordinates.
struct Runs {
    rule: Rule,
    pos: usize,
    end: usize,
}

impl Iterator for Runs {
    type Item = (Kind, usize, usize);

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.end {
            return None;
        }
        let (kind, stop) = match self.rule {
            Rule::Plain(k) => (k, self.end),
            Rule::Boxed(b) => {
                let l = self.pos / b.line;
                let c = self.pos % b.line;
                let line_start = self.pos - c;
                let in_rows = (b.y0..b.y1).contains(&(l % b.height));
                if in_rows && c < b.c0 {
                    (Kind::Own, line_start + b.c0)
                } else if in_rows && c < b.c1 {
                    (Kind::Other, line_start + b.c1)
                } else {
                    // Own values run on to the box segment of the next line inside the box.
                    let l2 = if in_rows { l + 1 } else { l };
                    let y2 = l2 % b.height;
                    let next = if y2 < b.y0 {
                        l2 - y2 + b.y0
                    } else if y2 < b.y1 {
                        l2
                    } else {
                        l2 - y2 + b.height + b.y0
                    };
                    (Kind::Own, next.saturating_mul(b.line).saturating_add(b.c0))
                }
            }
        };
        let stop = stop.min(self.end);
        let run = (kind, self.pos, stop);
        self.pos = stop;
        Some(run)
    }
}

/// `dst.copy_from_slice(src)`, in pieces of at most 512 bytes when the whole is under 4 KiB.
///
/// glibc's memcpy (2.36, its AVX-512 variant) copies 640 B to 2.5 KiB blocks at about half the
/// speed of 512 B or ≥ 3 KiB ones (`BENCHMARKS.md`, "Measurements behind code choices"). CutMix
/// runs of 224-pixel lines are mostly in that range; splitting them costs a call or two
/// elsewhere.
#[inline(always)]
fn copy_run<T: Copy>(dst: &mut [T], src: &[T]) {
    const PIECE_BYTES: usize = 512;
    if std::mem::size_of_val(src) >= 4096 {
        dst.copy_from_slice(src);
        return;
    }
    let piece = (PIECE_BYTES / std::mem::size_of::<T>()).max(1);
    for (d, s) in dst.chunks_mut(piece).zip(src.chunks(piece)) {
        d.copy_from_slice(s);
    }
}

/// Outputs at least this large (bytes) are written with non-temporal stores where the layout
/// allows ([`StreamOut`]): they do not fit in the last-level cache (32 MiB on the machine this
/// was tuned on, shared by all cores), so caching them only costs the read-for-ownership of
/// every line and evicts the inputs. Smaller outputs stay in cache for whoever reads them next.
pub(super) const STREAM_MIN_BYTES: usize = 16 << 20;

/// Writes a contiguous output range as a sequence of copied runs, with non-temporal stores of
/// whole 64-byte lines (`movntdq`, SSE2: every x86-64 CPU has it).
///
/// A normal store first reads the line it writes (read for ownership), so a copy with ordinary
/// stores moves three bytes over the memory bus per byte copied; a large `memcpy` avoids this
/// (non-temporal stores or `rep movsb`), the CutMix runs (0.3–0.9 KB per image line) could not;
/// non-temporal stores of those runs are faster than `memcpy` pieces (`BENCHMARKS.md`). Runs rarely start or end on a line boundary, so the partial
/// lines at their ends are gathered in `line` and stored once complete; the partial lines at the
/// ends of the range (shared with a neighbouring task) get ordinary stores of our bytes only.
#[cfg(target_arch = "x86_64")]
pub(super) struct StreamOut {
    /// Start and end of the range we own.
    lo: *mut u8,
    hi: *mut u8,
    /// Next address to write (runs arrive in order).
    pos: *mut u8,
    /// The line being gathered: `pos & !63` while `pos` is not line-aligned.
    line: Line,
}

#[cfg(target_arch = "x86_64")]
#[repr(C, align(64))]
struct Line([u8; 64]);

#[cfg(target_arch = "x86_64")]
impl StreamOut {
    pub(super) fn new<T>(out: &mut [T]) -> Self {
        let lo = out.as_mut_ptr().cast::<u8>();
        StreamOut {
            lo,
            // SAFETY: one past the end of `out`.
            hi: unsafe { lo.add(std::mem::size_of_val(out)) },
            pos: lo,
            line: Line([0; 64]),
        }
    }

    /// Appends `src` at the write position.
    #[inline(always)]
    pub(super) fn push<T: Copy>(&mut self, src: &[T]) {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
        let n = std::mem::size_of_val(src);
        assert!(n <= self.hi as usize - self.pos as usize);
        let mut s = src.as_ptr().cast::<u8>();
        let end = self.pos as usize + n;
        // SAFETY (whole body): `pos..end` lies inside `lo..hi` (asserted above), which is the
        // `&mut` slice given to `new`; `s` reads `n` bytes of `src`; loads are unaligned and the
        // streamed stores are to 64-byte aligned addresses.
        unsafe {
            while (self.pos as usize) < end {
                let p = self.pos as usize;
                let off = p & 63;
                if off == 0 && end - p >= 64 {
                    let blocks = (end - p) & !63;
                    let d = self.pos;
                    let mut k = 0;
                    while k < blocks {
                        let a = _mm_loadu_si128(s.add(k).cast::<__m128i>());
                        let b = _mm_loadu_si128(s.add(k + 16).cast::<__m128i>());
                        let c = _mm_loadu_si128(s.add(k + 32).cast::<__m128i>());
                        let e = _mm_loadu_si128(s.add(k + 48).cast::<__m128i>());
                        _mm_stream_si128(d.add(k).cast::<__m128i>(), a);
                        _mm_stream_si128(d.add(k + 16).cast::<__m128i>(), b);
                        _mm_stream_si128(d.add(k + 32).cast::<__m128i>(), c);
                        _mm_stream_si128(d.add(k + 48).cast::<__m128i>(), e);
                        k += 64;
                    }
                    s = s.add(blocks);
                    self.pos = self.pos.add(blocks);
                } else {
                    let take = (64 - off).min(end - p);
                    std::ptr::copy_nonoverlapping(s, self.line.0.as_mut_ptr().add(off), take);
                    s = s.add(take);
                    self.pos = self.pos.add(take);
                    if off + take == 64 {
                        self.flush();
                    }
                }
            }
        }
    }

    /// Stores the gathered line ending at `pos`: streamed when all of it is ours, otherwise
    /// our bytes of it with ordinary stores.
    #[inline(always)]
    fn flush(&mut self) {
        use std::arch::x86_64::{__m128i, _mm_load_si128, _mm_stream_si128};
        let p = self.pos as usize;
        let off = p & 63;
        let (start, stop) = if off == 0 { (p - 64, p) } else { (p - off, p) };
        let from = start.max(self.lo as usize);
        // SAFETY: `from..stop` lies in `lo..hi` and `line` holds its bytes at `from - start`;
        // the streamed case writes the aligned line `start..start + 64`, all inside `lo..hi`.
        unsafe {
            let d = self.pos.sub(p - start);
            if from == start && stop - start == 64 {
                let l = self.line.0.as_ptr();
                for k in (0..64).step_by(16) {
                    let v = _mm_load_si128(l.add(k).cast::<__m128i>());
                    _mm_stream_si128(d.add(k).cast::<__m128i>(), v);
                }
            } else {
                let l = self.line.0.as_ptr().add(from - start);
                std::ptr::copy_nonoverlapping(l, d.add(from - start), stop - from);
            }
        }
    }

    /// Stores what is left and orders the streamed stores before anything that follows.
    pub(super) fn finish(mut self) {
        assert!(self.pos == self.hi, "StreamOut: range not filled");
        if self.pos as usize & 63 != 0 {
            self.flush();
        }
        // SAFETY: SSE2 is part of x86-64.
        unsafe { std::arch::x86_64::_mm_sfence() };
    }
}

/// [`mix_segment`] for a rule without lerp runs, writing through [`StreamOut`].
#[cfg(target_arch = "x86_64")]
fn copy_segment_stream<T: Element>(
    rule: Rule,
    own: &[T],
    other: &[T],
    start: usize,
    out: &mut [T],
) {
    let mut w = StreamOut::new(out);
    for (kind, s, e) in rule.runs(start, start + out.len()) {
        match kind {
            Kind::Own => w.push(&own[s..e]),
            Kind::Other => w.push(&other[s..e]),
            Kind::Lerp(_) => unreachable!("copy_segment_stream: lerp run"),
        }
    }
    w.finish();
}

/// `lam * x + (1 - lam) * y` on lanes: two rounded products and a rounded sum, as the formula.
#[inline(always)]
fn lerp<L: Lanes>(l: L, (lam, mu): (F32s<L>, F32s<L>), x: F32s<L>, y: F32s<L>) -> F32s<L> {
    let s = l.simd();
    s.add_f32s(s.mul_f32s(lam, x), s.mul_f32s(mu, y))
}

/// `(lam, 1 - lam)` splatted.
#[inline(always)]
fn weights<L: Lanes>(l: L, lam: f32) -> (F32s<L>, F32s<L>) {
    let s = l.simd();
    (s.splat_f32s(lam), s.splat_f32s(1.0 - lam))
}

/// `out = lam * a + (1 - lam) * b`, element-wise: whole vectors at `l`'s width, the rest one by
/// one (the same operations, so the same bits).
#[inline(always)]
fn lerp_into<L: Lanes, T: Element>(l: L, lam: f32, a: &[T], b: &[T], out: &mut [T]) {
    let n = width::<L>();
    let len = out.len().min(a.len()).min(b.len());
    let full = len / n * n;
    let wl = weights(l, lam);
    for ((o, x), y) in out[..full]
        .chunks_exact_mut(n)
        .zip(a.chunks_exact(n))
        .zip(b.chunks_exact(n))
    {
        l.store(o, lerp(l, wl, l.load(x), l.load(y)));
    }
    if full < len && n > 1 {
        lerp_into(
            pulp::Scalar,
            lam,
            &a[full..len],
            &b[full..len],
            &mut out[full..len],
        );
    }
}

/// `a = lam * a + (1 - lam) * b`, element-wise.
#[inline(always)]
fn lerp_over<L: Lanes, T: Element>(l: L, lam: f32, a: &mut [T], b: &[T]) {
    let n = width::<L>();
    let len = a.len().min(b.len());
    let full = len / n * n;
    let wl = weights(l, lam);
    for (x, y) in a[..full].chunks_exact_mut(n).zip(b.chunks_exact(n)) {
        let v = lerp(l, wl, l.load(x), l.load(y));
        l.store(x, v);
    }
    if full < len && n > 1 {
        lerp_over(pulp::Scalar, lam, &mut a[full..len], &b[full..len]);
    }
}

/// Both members of a pair from their original values: `a' = lerp(la, a, b)` and
/// `b' = lerp(lb, b, a)`, where a `None` weight means "the other's original value" (a paste).
#[inline(always)]
fn pair_lerp<L: Lanes, T: Element>(
    l: L,
    a: &mut [T],
    b: &mut [T],
    la: Option<f32>,
    lb: Option<f32>,
) {
    let n = width::<L>();
    let len = a.len().min(b.len());
    let full = len / n * n;
    let (wa, wb) = (weights(l, la.unwrap_or(0.0)), weights(l, lb.unwrap_or(0.0)));
    for (x, y) in a[..full]
        .chunks_exact_mut(n)
        .zip(b[..full].chunks_exact_mut(n))
    {
        let (vx, vy) = (l.load(x), l.load(y));
        match (la, lb) {
            (Some(_), Some(_)) => {
                l.store(x, lerp(l, wa, vx, vy));
                l.store(y, lerp(l, wb, vy, vx));
            }
            (Some(_), None) => {
                y.copy_from_slice(x);
                l.store(x, lerp(l, wa, vx, vy));
            }
            (None, Some(_)) => {
                x.copy_from_slice(y);
                l.store(y, lerp(l, wb, vy, vx));
            }
            (None, None) => x.swap_with_slice(y),
        }
    }
    if full < len && n > 1 {
        pair_lerp(pulp::Scalar, &mut a[full..len], &mut b[full..len], la, lb);
    }
}

/// Writes `out` = elements `start..start + out.len()` of sample `rule`'s mixed row.
#[inline(always)]
fn mix_segment<L: Lanes, T: Element>(
    l: L,
    rule: Rule,
    own: &[T],
    other: &[T],
    start: usize,
    out: &mut [T],
) {
    for (kind, s, e) in rule.runs(start, start + out.len()) {
        let dst = &mut out[s - start..e - start];
        match kind {
            Kind::Own => copy_run(dst, &own[s..e]),
            Kind::Other => copy_run(dst, &other[s..e]),
            Kind::Lerp(lam) => lerp_into(l, lam, &own[s..e], &other[s..e], dst),
        }
    }
}

/// Mixes elements `start..start + a.len()` of a pair of rows in place (`a` is row i, `b` its
/// partner's), walking both samples' runs together.
#[inline(always)]
fn mix_pair_segment<L: Lanes, T: Element>(
    l: L,
    ri: Rule,
    rj: Rule,
    start: usize,
    a: &mut [T],
    b: &mut [T],
) {
    let end = start + a.len();
    let (mut runs_i, mut runs_j) = (ri.runs(start, end), rj.runs(start, end));
    let (mut cur_i, mut cur_j) = (runs_i.next(), runs_j.next());
    while let (Some((ki, si, ei)), Some((kj, sj, ej))) = (cur_i, cur_j) {
        let (s, e) = (si.max(sj), ei.min(ej));
        let (x, y) = (&mut a[s - start..e - start], &mut b[s - start..e - start]);
        match (ki, kj) {
            (Kind::Own, Kind::Own) => {}
            (Kind::Other, Kind::Other) => x.swap_with_slice(y),
            (Kind::Other, Kind::Own) => copy_run(x, y),
            (Kind::Own, Kind::Other) => copy_run(y, x),
            (Kind::Lerp(li), Kind::Own) => lerp_over(l, li, x, y),
            (Kind::Own, Kind::Lerp(lj)) => lerp_over(l, lj, y, x),
            (Kind::Lerp(li), Kind::Lerp(lj)) => pair_lerp(l, x, y, Some(li), Some(lj)),
            (Kind::Lerp(li), Kind::Other) => pair_lerp(l, x, y, Some(li), None),
            (Kind::Other, Kind::Lerp(lj)) => pair_lerp(l, x, y, None, Some(lj)),
        }
        cur_i = if ei == e {
            runs_i.next()
        } else {
            Some((ki, e, ei))
        };
        cur_j = if ej == e {
            runs_j.next()
        } else {
            Some((kj, e, ej))
        };
    }
}

/// A segment to mix at one [`Isa`] level: one sample's output, or a pair in place.
enum Segment<'a, T> {
    Out {
        rule: Rule,
        own: &'a [T],
        other: &'a [T],
        start: usize,
        out: &'a mut [T],
    },
    Pair {
        ri: Rule,
        rj: Rule,
        start: usize,
        a: &'a mut [T],
        b: &'a mut [T],
    },
}

impl<T: Element> Kernel for Segment<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run<L: Lanes>(self, l: L) {
        match self {
            Segment::Out {
                rule,
                own,
                other,
                start,
                out,
            } => mix_segment(l, rule, own, other, start, out),
            Segment::Pair {
                ri,
                rj,
                start,
                a,
                b,
            } => mix_pair_segment(l, ri, rj, start, a, b),
        }
    }
}

/// Smallest piece of work handed to a thread, in elements: below this, scheduling costs more
/// than the copy.
const MIN_TASK: usize = 1 << 14;

/// How rows are cut into tasks: `(segment length, rows per task at least)`. Rows are split
/// only when there are too few of them to keep every thread busy (a batch of 1 or 2 large
/// images on 2 cores), and never into segments under [`MIN_TASK`].
fn tasking(units: usize, row: usize) -> (usize, usize) {
    let want = 4 * rayon::current_num_threads();
    let parts = want.div_ceil(units.max(1)).min(row / MIN_TASK).max(1);
    let seg = row.div_ceil(parts).max(1);
    let rows_per_task = (MIN_TASK / row.max(1)).max(1);
    (seg, rows_per_task)
}

/// The samples in an order where each one's partner is, wherever possible, the sample just
/// before it: `partner(order[k + 1]) == order[k]` (for a permutation, its cycles one after the
/// other). Sample `j` reads its partner's row right after that row was read as the previous
/// sample's own, so those reads mostly hit the cache: the hardware prefetcher brings in whole
/// rows while the CutMix runs use parts of them, and a lerp reads both rows in full.
pub(super) fn chain_order(entries: &[PlanEntry]) -> Vec<usize> {
    let n = entries.len();
    // Samples grouped by partner (counting sort): `by_partner[first[i]..first[i + 1]]`.
    let mut first = vec![0usize; n + 1];
    for e in entries {
        first[e.partner as usize + 1] += 1;
    }
    for i in 0..n {
        first[i + 1] += first[i];
    }
    let mut fill = first.clone();
    let mut by_partner = vec![0usize; n];
    for (j, e) in entries.iter().enumerate() {
        by_partner[fill[e.partner as usize]] = j;
        fill[e.partner as usize] += 1;
    }
    // `fill[i]` now walks the samples that take `i` as partner.
    fill[..n].copy_from_slice(&first[..n]);
    let mut seen = vec![false; n];
    let mut order = Vec::with_capacity(n);
    for start in 0..n {
        let mut i = start;
        while !seen[i] {
            seen[i] = true;
            order.push(i);
            // Next: an unvisited sample whose partner is `i`.
            let mut next = None;
            while fill[i] < first[i + 1] {
                let j = by_partner[fill[i]];
                fill[i] += 1;
                if !seen[j] {
                    next = Some(j);
                    break;
                }
            }
            match next {
                Some(j) => i = j,
                None => break,
            }
        }
    }
    order
}

pub(crate) fn mix<T: Element>(
    plan: &MixPlan,
    layout: &SampleShape,
    x: &[T],
    out: &mut [T],
) -> Result<()> {
    let stream = std::mem::size_of_val(out) >= STREAM_MIN_BYTES;
    mix_with(plan, layout, x, out, stream)
}

/// [`mix`], with non-temporal stores for the copy-only rows when `stream` is set.
fn mix_with<T: Element>(
    plan: &MixPlan,
    layout: &SampleShape,
    x: &[T],
    out: &mut [T],
    stream: bool,
) -> Result<()> {
    let row = check_mix(plan, layout, x.len(), "x")?;
    check_len("out", x.len(), out.len())?;
    if x.is_empty() {
        return Ok(());
    }
    let entries = plan.entries();
    let isa = Isa::detect();
    let (seg, min_rows) = tasking(entries.len(), row);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = stream;
    // Rows in partner-chain order (see `chain_order`), each thread taking a contiguous part.
    let mut rows: Vec<Option<&mut [T]>> = out.chunks_mut(row).map(Some).collect();
    let ordered: Vec<(usize, &mut [T])> = chain_order(entries)
        .into_iter()
        .filter_map(|i| rows[i].take().map(|r| (i, r)))
        .collect();
    ordered
        .into_par_iter()
        .with_min_len(min_rows)
        .flat_map(|(i, out_row)| {
            out_row
                .par_chunks_mut(seg)
                .enumerate()
                .map(move |(k, piece)| (i, k * seg, piece))
        })
        .for_each(|(i, start, piece)| {
            let e = &entries[i];
            let p = e.partner as usize;
            let rule = Rule::new(i, e, layout);
            let (own, other) = (&x[i * row..(i + 1) * row], &x[p * row..(p + 1) * row]);
            #[cfg(target_arch = "x86_64")]
            if stream && !matches!(rule, Rule::Plain(Kind::Lerp(_))) {
                copy_segment_stream(rule, own, other, start, piece);
                return;
            }
            isa.run(Segment::Out {
                rule,
                own,
                other,
                start,
                out: piece,
            });
        });
    Ok(())
}

pub(crate) fn mix_in_place<T: Element>(
    plan: &MixPlan,
    layout: &SampleShape,
    x: &mut [T],
) -> Result<()> {
    let row = check_mix(plan, layout, x.len(), "x")?;
    plan.check_involution()?;
    if x.is_empty() {
        return Ok(());
    }
    let entries = plan.entries();
    let isa = Isa::detect();
    // Each pair i < partner(i) once; the involution makes the pairs disjoint, so every row is
    // borrowed by at most one task. Self-partnered rows are left as they are.
    let mut rows: Vec<Option<&mut [T]>> = x.chunks_mut(row).map(Some).collect();
    let mut pairs = Vec::with_capacity(entries.len() / 2);
    for (i, e) in entries.iter().enumerate() {
        let j = e.partner as usize;
        if i < j {
            let (head, tail) = rows.split_at_mut(j);
            if let (Some(a), Some(b)) = (head[i].take(), tail[0].take()) {
                pairs.push((i, j, a, b));
            }
        }
    }
    let (seg, min_rows) = tasking(pairs.len(), row);
    pairs
        .into_par_iter()
        .with_min_len(min_rows)
        .flat_map(|(i, j, a, b)| {
            a.par_chunks_mut(seg)
                .zip(b.par_chunks_mut(seg))
                .enumerate()
                .map(move |(k, (sa, sb))| (i, j, k * seg, sa, sb))
        })
        .for_each(|(i, j, start, sa, sb)| {
            let ri = Rule::new(i, &entries[i], layout);
            let rj = Rule::new(j, &entries[j], layout);
            isa.run(Segment::Pair {
                ri,
                rj,
                start,
                a: sa,
                b: sb,
            });
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ImageSize;
    use half::{bf16, f16};

    /// Every level the CPU has gives the baseline build's bits, in and out of place, for
    /// every pairing of runs (rows whose length is not a multiple of the lanes included).
    fn paths_agree<T: Element>() {
        let n = 3 * 7 * 11;
        let mut s = 7u32;
        let mut next = || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            T::from_f32((s >> 8) as f32 / (1u32 << 24) as f32 * 255.0)
        };
        let own: Vec<T> = (0..n).map(|_| next()).collect();
        let other: Vec<T> = (0..n).map(|_| next()).collect();
        let boxed = Rule::Boxed(BoxRuns {
            line: 11,
            height: 7,
            y0: 2,
            y1: 6,
            c0: 3,
            c1: 9,
        });
        let rules = [
            Rule::Plain(Kind::Lerp(0.3)),
            Rule::Plain(Kind::Own),
            Rule::Plain(Kind::Other),
            boxed,
        ];
        let bits = |v: &[T]| v.iter().map(|x| x.to_f32().to_bits()).collect::<Vec<_>>();
        let run = |isa: Isa, rule: Rule, rj: Rule| {
            let mut a = vec![T::default(); n];
            isa.run(Segment::Out {
                rule,
                own: &own,
                other: &other,
                start: 0,
                out: &mut a,
            });
            let (mut x, mut y) = (own.clone(), other.clone());
            isa.run(Segment::Pair {
                ri: rule,
                rj,
                start: 0,
                a: &mut x,
                b: &mut y,
            });
            (bits(&a), bits(&x), bits(&y))
        };
        for rule in rules {
            for rj in [
                Rule::Plain(Kind::Lerp(0.8)),
                Rule::Plain(Kind::Other),
                boxed,
            ] {
                let want = run(Isa::scalar(), rule, rj);
                for isa in Isa::all() {
                    assert!(run(isa, rule, rj) == want, "{isa:?} {rule:?} {rj:?}");
                }
            }
        }
        // The baseline against the formula, element by element.
        let mut a = vec![T::default(); n];
        mix_segment(pulp::Scalar, rules[0], &own, &other, 0, &mut a);
        for k in 0..n {
            let want = T::from_f32(0.3 * own[k].to_f32() + (1.0 - 0.3f32) * other[k].to_f32());
            assert_eq!(a[k].to_f32().to_bits(), want.to_f32().to_bits(), "lerp {k}");
        }
    }

    #[test]
    fn every_level_gives_the_baseline_bits() {
        paths_agree::<f32>();
        paths_agree::<f16>();
        paths_agree::<bf16>();
        paths_agree::<u8>();
    }

    /// The streamed copy writes the same bits as `mix_segment`, touches nothing outside its
    /// range, for runs from 1 byte to over 4 KiB, any start alignment and any sub-range.
    #[cfg(target_arch = "x86_64")]
    fn stream_matches<T: Element>() {
        let mut s = 11u32;
        let mut next = move || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            s >> 8
        };
        let size = std::mem::size_of::<T>();
        // (line, height, y0, y1, c0, c1): runs in bytes around 1, 32, 64, 128, 512, 4096.
        let mut shapes = vec![
            (224, 5, 1, 4, 20, 180),
            (1100, 3, 0, 3, 8, 40),
            (1100, 3, 1, 2, 0, 1100),
            (300, 4, 0, 4, 64 / size, 64 / size + 128 / size),
            (4096 / size + 3, 3, 1, 3, 1, 4096 / size + 1),
            (7, 3, 0, 3, 3, 4),
        ];
        for _ in 0..20 {
            let line = 1 + next() as usize % 700;
            let height = 1 + next() as usize % 6;
            let (ya, yb) = (next() as usize % height, next() as usize % height);
            let (ca, cb) = (next() as usize % line, next() as usize % line);
            shapes.push((
                line,
                height,
                ya.min(yb),
                ya.max(yb) + 1,
                ca.min(cb),
                ca.max(cb) + 1,
            ));
        }
        for (line, height, y0, y1, c0, c1) in shapes {
            let n = 2 * line * height;
            let own: Vec<T> = (0..n).map(|_| T::from_f32((next() % 200) as f32)).collect();
            let other: Vec<T> = (0..n).map(|_| T::from_f32((next() % 200) as f32)).collect();
            let rule = Rule::Boxed(BoxRuns {
                line,
                height,
                y0,
                y1,
                c0,
                c1,
            });
            let mut want = vec![T::default(); n];
            mix_segment(pulp::Scalar, rule, &own, &other, 0, &mut want);
            let mut ranges = vec![(0, n), (1, n), (0, n - 1), (n / 3, n / 3 + 1)];
            for _ in 0..8 {
                let (a, b) = (next() as usize % n, next() as usize % n);
                ranges.push((a.min(b), a.max(b) + 1));
            }
            for (start, end) in ranges {
                for shift in [0, 1, 3, 64 / size] {
                    let guard = T::from_f32(255.0);
                    let mut buf = vec![guard; end - start + shift + 2 * 64];
                    let got = &mut buf[shift + 64..shift + 64 + end - start];
                    copy_segment_stream(rule, &own, &other, start, got);
                    for (k, v) in buf.iter().enumerate() {
                        let e = if (shift + 64..shift + 64 + end - start).contains(&k) {
                            want[start + k - shift - 64]
                        } else {
                            guard
                        };
                        assert_eq!(
                            v.to_f32().to_bits(),
                            e.to_f32().to_bits(),
                            "line {line} box {y0}..{y1} x {c0}..{c1}, range {start}..{end}, \
                             shift {shift}: element {k} of the buffer"
                        );
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn streamed_copy_matches_the_runs() {
        stream_matches::<f32>();
        stream_matches::<bf16>();
        stream_matches::<u8>();
    }

    /// A whole batch gives the same bits with and without the streamed stores: CutMix, MixUp
    /// and unmixed samples, both image layouts, one sample (its row split into tasks) and many.
    #[test]
    fn streamed_mix_matches_the_cached_one() {
        use crate::config::{MixConfig, Mode};
        use crate::sampler::Sampler;
        let cfg = MixConfig {
            mixup_alpha: 1.0,
            cutmix_alpha: 1.0,
            prob: 0.8,
            switch_prob: 0.5,
            mode: Mode::Elem,
            ..MixConfig::timm(10)
        };
        let (h, w, c) = (37, 45, 3);
        for batch in [1, 2, 9] {
            let plan = Sampler::new(cfg.clone(), 5)
                .unwrap()
                .plan_images(
                    0,
                    batch,
                    ImageSize {
                        height: h,
                        width: w,
                    },
                )
                .unwrap();
            let n = batch * c * h * w * if batch == 1 { 40 } else { 1 };
            let x: Vec<f32> = (0..n).map(|i| (i % 97) as f32).collect();
            let layouts = if batch == 1 {
                // Long rows: split into several tasks.
                vec![SampleShape::channels_first(40 * c, h, w)]
            } else {
                vec![
                    SampleShape::channels_first(c, h, w),
                    SampleShape::channels_last(h, w, c),
                ]
            };
            for layout in layouts {
                let (mut a, mut b) = (vec![0.0f32; n], vec![0.0f32; n]);
                mix_with(&plan, &layout, &x, &mut a, false).unwrap();
                mix_with(&plan, &layout, &x, &mut b, true).unwrap();
                for (k, (p, q)) in a.iter().zip(&b).enumerate() {
                    assert_eq!(p.to_bits(), q.to_bits(), "batch {batch} {layout:?}: {k}");
                }
            }
        }
    }

    #[test]
    fn chain_order_visits_every_sample_once_along_partners() {
        let entry = |p: u32| PlanEntry {
            partner: p,
            lam: 1.0,
            cut: 0,
            y0: 0,
            y1: 0,
            x0: 0,
            x1: 0,
            pad: 0,
        };
        // A permutation with cycles (0 4 2) (1) (3 5): every cycle chained, 6 - 3 links. A map
        // with shared partners: the greedy walk from 0 gives 0 2 | 1 4 | 3 (3 0 2 1 4 would
        // have 3 links; the order is a cache heuristic, not an optimum).
        for (partners, chained) in [(vec![2u32, 1, 4, 5, 0, 3], 6 - 3), (vec![3, 3, 0, 3, 1], 2)] {
            let entries: Vec<PlanEntry> = partners.iter().map(|&p| entry(p)).collect();
            let order = chain_order(&entries);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..partners.len()).collect::<Vec<_>>());
            let links = order
                .windows(2)
                .filter(|w| partners[w[1]] as usize == w[0])
                .count();
            assert_eq!(links, chained, "{partners:?} -> {order:?}");
        }
    }

    fn collect(rule: Rule, start: usize, end: usize) -> Vec<(Kind, usize, usize)> {
        rule.runs(start, end).collect()
    }

    #[test]
    fn runs_cover_the_range_and_merge_own_lines() {
        // 2 planes of a 4x5 image (NCHW), box rows 1..3, cols 2..4.
        let b = Rule::Boxed(BoxRuns {
            line: 5,
            height: 4,
            y0: 1,
            y1: 3,
            c0: 2,
            c1: 4,
        });
        let runs = collect(b, 0, 40);
        assert_eq!(
            runs,
            vec![
                (Kind::Own, 0, 7),
                (Kind::Other, 7, 9),
                (Kind::Own, 9, 12),
                (Kind::Other, 12, 14),
                (Kind::Own, 14, 27),
                (Kind::Other, 27, 29),
                (Kind::Own, 29, 32),
                (Kind::Other, 32, 34),
                (Kind::Own, 34, 40),
            ]
        );
        // Any sub-range gives the same kinds, clipped.
        for s in 0..40 {
            for e in s..=40 {
                let mut pos = s;
                for (k, a, z) in collect(b, s, e) {
                    assert_eq!(a, pos);
                    assert!(z > a);
                    for q in a..z {
                        let full = runs.iter().find(|r| r.1 <= q && q < r.2).unwrap();
                        assert_eq!(full.0, k, "element {q} of range {s}..{e}");
                    }
                    pos = z;
                }
                assert_eq!(pos, e);
            }
        }
    }

    #[test]
    fn tasking_splits_long_rows_of_small_batches_only() {
        let (seg, rows) = tasking(1, 3 * 224 * 224);
        assert!(seg < 3 * 224 * 224);
        assert_eq!(rows, 1);
        let (seg, _) = tasking(256, 3 * 224 * 224);
        assert_eq!(seg, 3 * 224 * 224);
        let (seg, rows) = tasking(1000, 3);
        assert_eq!((seg, rows), (3, MIN_TASK / 3));
    }
}
