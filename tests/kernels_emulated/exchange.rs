//! The cases file the emulator reads and the outputs it writes (format: kernels/emu/main.cpp),
//! and the pass/fail counting of the comparisons.

use std::cell::Cell;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use mixup_kernels::Element;
use mixup_kernels::cuda::KernelTuning;
use mixup_kernels::cuda::kernels::emulated::{Device, HostLaunch};

/// SMs of the device the cases are launched for (the grid cap's unit).
pub const SMS: u32 = 132;

thread_local! {
    /// The tuning and SM count the cases being built are launched with.
    static TUNING: Cell<(KernelTuning, u32)> = Cell::new((KernelTuning::default(), SMS));
}

/// The tuning and SM count of the cases being built ([`with_tuning`]).
pub fn tuning() -> (KernelTuning, u32) {
    TUNING.with(Cell::get)
}

/// Runs `f` (which builds cases) with the host's launches made under `t` on `sms` SMs.
pub fn with_tuning<R>(t: KernelTuning, sms: u32, f: impl FnOnce() -> R) -> R {
    let old = TUNING.with(|c| c.replace((t, sms)));
    let r = f();
    TUNING.with(|c| c.set(old));
    r
}

/// The device the host code launches for: the plan and flags at these stand-in addresses,
/// `smem_optin` bytes of opt-in shared memory, and the current tuning ([`with_tuning`]).
pub fn device(plan: u64, flags: u64, smem_optin: u32) -> Device {
    let (tuning, sms) = tuning();
    Device {
        plan,
        flags,
        smem_optin,
        sms,
        tuning,
    }
}

/// Addresses handed to the host code stand for buffers: top byte 0x7E, buffer index + 1 in
/// bits 40..56, the byte offset below. The emulator patches the real ones in.
const TAG: u64 = 0x7E << 56;

/// A buffer's stand-in address at byte offset `off`.
pub fn addr(buf: usize, off: usize) -> u64 {
    assert!(buf < 0xffff && off < 1 << 40);
    TAG | ((buf as u64 + 1) << 40) | off as u64
}

/// `x` as rows of `seg` elements with `pad` copies of `value` after each row but the last: a
/// pitched tensor's rows, as cubecl allocates them. The buffer ends at the last element, as a
/// slice of a padded tensor may, so a read past it is caught, and a read of the padding gives
/// `value` (chosen to show in a result).
pub fn pad_rows<T: Copy>(x: &[T], seg: usize, pad: usize, value: T) -> Vec<T> {
    if pad == 0 || seg == 0 || x.is_empty() {
        return x.to_vec();
    }
    let mut out: Vec<T> = x
        .chunks(seg)
        .flat_map(|row| row.iter().copied().chain(std::iter::repeat_n(value, pad)))
        .collect();
    out.truncate(out.len() - pad);
    out
}

/// The bytes of a slice of elements (f32, f16, bf16, u8, u32).
pub fn bytes<T: Copy>(v: &[T]) -> Vec<u8> {
    // SAFETY: plain numeric types without padding; every byte initialized.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
        .to_vec()
}

/// Elements back from bytes.
pub fn elems<T: Copy + Default>(b: &[u8]) -> Vec<T> {
    let n = b.len() / size_of::<T>();
    let mut v = vec![T::default(); n];
    // SAFETY: `v` holds `n` elements of a plain numeric type; any bits are a value.
    unsafe {
        std::ptr::copy_nonoverlapping(b.as_ptr(), v.as_mut_ptr().cast::<u8>(), n * size_of::<T>())
    };
    v
}

/// Widens elements to f64.
pub fn wide<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| f64::from(x.to_f32())).collect()
}

/// One launch's output: whether it kept the engine's rules, and each buffer's final bytes
/// (empty for those not returned).
pub struct Run {
    pub ok: bool,
    pub bufs: Vec<Vec<u8>>,
}

/// Pass/fail counts of one group, and the first failures' messages.
#[derive(Default)]
pub struct Checks {
    pub passed: usize,
    pub failed: usize,
    pub shown: Vec<String>,
}

impl Checks {
    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) -> bool {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
            if self.shown.len() < 40 {
                self.shown.push(what());
            }
        }
        ok
    }

    pub fn add(&mut self, o: Checks) {
        self.passed += o.passed;
        self.failed += o.failed;
        self.shown.extend(
            o.shown
                .into_iter()
                .take(40usize.saturating_sub(self.shown.len())),
        );
    }
}

/// Compares the runs of a case (the first in the natural order, the others in other orders).
pub type Verdict = Box<dyn Fn(&[Run], &mut Checks) + Send + Sync>;

/// One launch to emulate and how to judge it.
pub struct Case {
    pub group: &'static str,
    pub what: String,
    pub launch: HostLaunch,
    /// (block order, thread order, seed) per run; the first is the one compared with the
    /// reference.
    pub orders: Vec<(u32, u32, u64)>,
    pub bufs: Vec<(bool, Vec<u8>)>,
    pub verdict: Verdict,
}

/// Buffers of a case being built.
#[derive(Default)]
pub struct Buffers(pub Vec<(bool, Vec<u8>)>);

impl Buffers {
    /// Adds a buffer; returns its index. `returned`: the emulator writes it back.
    pub fn add(&mut self, bytes: Vec<u8>, returned: bool) -> usize {
        self.0.push((returned, bytes));
        self.0.len() - 1
    }
}

/// Every 8-byte word of the arguments that holds a stand-in address: (offset, buffer, byte
/// offset). Panics on one naming no buffer.
fn patches(args: &[u8], nbufs: usize, what: &str) -> Vec<(u32, u32, u64)> {
    let mut out = Vec::new();
    for (k, w) in args.chunks_exact(8).enumerate() {
        let v = u64::from_le_bytes(w.try_into().unwrap());
        if v >> 56 != TAG >> 56 {
            continue;
        }
        let buf = ((v >> 40) & 0xffff) as usize;
        assert!(
            buf >= 1 && buf <= nbufs,
            "{what}: argument word {k} is {v:#x}"
        );
        out.push(((k * 8) as u32, (buf - 1) as u32, v & ((1 << 40) - 1)));
    }
    out
}

fn put_u32(w: &mut impl Write, v: u32) {
    w.write_all(&v.to_le_bytes()).unwrap();
}
fn put_u64(w: &mut impl Write, v: u64) {
    w.write_all(&v.to_le_bytes()).unwrap();
}
fn put_str(w: &mut impl Write, s: &[u8]) {
    put_u32(w, s.len() as u32);
    w.write_all(s).unwrap();
}

pub fn write_cases(path: &Path, cases: &[Case]) {
    let mut w = BufWriter::new(std::fs::File::create(path).expect("creating the cases file"));
    w.write_all(b"MXEMUCS1").unwrap();
    put_u64(&mut w, cases.len() as u64);
    for c in cases {
        put_str(&mut w, c.launch.entry.as_bytes());
        put_str(&mut w, c.what.as_bytes());
        let cfg = &c.launch.config;
        assert_eq!((cfg.grid_dim.1, cfg.grid_dim.2), (1, 1), "{}", c.what);
        assert_eq!((cfg.block_dim.1, cfg.block_dim.2), (1, 1), "{}", c.what);
        put_u32(&mut w, cfg.grid_dim.0);
        put_u32(&mut w, cfg.block_dim.0);
        put_u32(&mut w, cfg.shared_mem_bytes);
        put_u32(&mut w, c.orders.len() as u32);
        for &(b, t, s) in &c.orders {
            put_u32(&mut w, b);
            put_u32(&mut w, t);
            put_u64(&mut w, s);
        }
        put_str(&mut w, &c.launch.args);
        put_u32(&mut w, c.bufs.len() as u32);
        for (ret, b) in &c.bufs {
            put_u32(&mut w, u32::from(*ret));
            put_u64(&mut w, b.len() as u64);
            w.write_all(b).unwrap();
        }
        let p = patches(&c.launch.args, c.bufs.len(), &c.what);
        put_u32(&mut w, p.len() as u32);
        for (at, buf, off) in p {
            put_u32(&mut w, at);
            put_u32(&mut w, buf);
            put_u64(&mut w, off);
        }
    }
    w.flush().unwrap();
}

/// Reads one arch's outputs and judges every case; the checks per group.
pub fn judge(path: &Path, cases: &[Case]) -> Vec<(&'static str, Checks)> {
    let mut r = BufReader::new(std::fs::File::open(path).expect("the emulator's output"));
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).unwrap();
    assert_eq!(&magic, b"MXEMUOU1");
    let mut u32b = [0u8; 4];
    let mut u64b = [0u8; 8];
    r.read_exact(&mut u64b).unwrap();
    assert_eq!(u64::from_le_bytes(u64b), cases.len() as u64);
    let mut groups: Vec<(&'static str, Checks)> = Vec::new();
    for c in cases {
        r.read_exact(&mut u32b).unwrap();
        assert_eq!(
            u32::from_le_bytes(u32b) as usize,
            c.orders.len(),
            "{}",
            c.what
        );
        let mut runs = Vec::new();
        for _ in &c.orders {
            r.read_exact(&mut u32b).unwrap();
            let ok = u32::from_le_bytes(u32b) == 1;
            let bufs = c
                .bufs
                .iter()
                .map(|(ret, b)| {
                    let mut v = vec![0u8; if *ret { b.len() } else { 0 }];
                    r.read_exact(&mut v).unwrap();
                    v
                })
                .collect();
            runs.push(Run { ok, bufs });
        }
        if !groups.iter().any(|(g, _)| *g == c.group) {
            groups.push((c.group, Checks::default()));
        }
        let checks = &mut groups.iter_mut().find(|(g, _)| *g == c.group).unwrap().1;
        let mut k = Checks::default();
        for (i, run) in runs.iter().enumerate() {
            k.check(run.ok, || {
                format!(
                    "{}: run {i} broke a barrier or shuffle rule (see EMU FAIL)",
                    c.what
                )
            });
        }
        if runs.iter().all(|r| r.ok) {
            (c.verdict)(&runs, &mut k);
        }
        for s in &mut k.shown {
            if !s.starts_with(&c.what) {
                *s = format!("{}: {s}", c.what);
            }
        }
        checks.add(k);
    }
    groups
}
