//! Helpers shared by the GPU tests (`tests/cuda_*.rs`).
//!
//! Without a GPU (or libcuda, or NVRTC) every GPU test prints `SKIPPED: no CUDA device (...)`
//! and passes; with `MIXUP_REQUIRE_GPU=1` (the GPU session sets it) it fails instead, so a
//! broken setup cannot pass silently.
#![allow(dead_code)]

use mixup_kernels::cuda::{CudaMixer, CudaMixerOptions, CudaSlice, CudaView, CudaViewMut};
use mixup_kernels::{CutBox, Element, ImageSize, MixPlan};
use rand::Rng;

// The one tolerance check and the one generator of the test suite.
#[path = "../common/mod.rs"]
mod common;
pub use common::{TestRng, Tol, assert_close};

/// The test mixer, or `None` (after printing why) when there is no usable GPU.
pub fn mixer(test: &str) -> Option<CudaMixer> {
    let opts = CudaMixerOptions {
        // A per-run cache folder: tests must not depend on what an earlier build left.
        cache_dir: Some(
            std::env::temp_dir().join(format!("mixup-kernels-test-{}", std::process::id())),
        ),
        // Line info for compute-sanitizer reports.
        nvrtc_options: vec!["-lineinfo".into()],
        ..CudaMixerOptions::default()
    };
    match CudaMixer::new(0) {
        Ok(m) => Some(m.with_options(opts)),
        Err(e) => {
            if std::env::var("MIXUP_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("MIXUP_REQUIRE_GPU=1 but no usable GPU: {e}");
            }
            skipped(&format!("no CUDA device ({e})"), test);
            None
        }
    }
}

/// Says on the terminal that `test` was skipped, and why (the reason once per test binary).
///
/// Written to the process's stderr directly: libtest captures `println!`/`eprintln!` of a
/// passing test, and a skip must be visible in the CI log without `--nocapture`.
pub fn skipped(reason: &str, test: &str) {
    use std::io::Write;
    static REASON: std::sync::Once = std::sync::Once::new();
    let mut err = std::io::stderr().lock();
    REASON.call_once(|| {
        let _ = writeln!(
            err,
            "SKIPPED: {reason}; the GPU tests below pass without running"
        );
    });
    let _ = writeln!(err, "SKIPPED: {test}");
}

pub fn rng(seed: u64) -> TestRng {
    TestRng::new(seed)
}

/// Random values of T: floats in [-4, 4) (never zeros), u8 uniform.
pub fn random<T: Element>(rng: &mut TestRng, n: usize) -> Vec<T> {
    (0..n)
        .map(|_| {
            if T::DTYPE == mixup_kernels::ScalarType::U8 {
                T::from_f32(rng.random_range(0..256u32) as f32)
            } else {
                T::from_f32(rng.random_range(-4.0f32..4.0))
            }
        })
        .collect()
}

/// A random permutation of 0..n.
pub fn permutation(rng: &mut TestRng, n: usize) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        p.swap(i, rng.random_range(0..=i));
    }
    p
}

/// Random pairs (an involution; an odd batch leaves one sample with itself).
pub fn pairs(rng: &mut TestRng, n: usize) -> Vec<usize> {
    let order = permutation(rng, n);
    let mut p: Vec<usize> = (0..n).collect();
    for c in order.chunks(2) {
        if let [a, b] = *c {
            p[a] = b;
            p[b] = a;
        }
    }
    p
}

pub fn lams(rng: &mut TestRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            if i % 7 == 3 {
                1.0
            } else {
                rng.random_range(0.0f32..1.0)
            }
        })
        .collect()
}

/// A plan with CutMix boxes on about half the samples (some empty or full-image boxes).
pub fn cutmix_plan(rng: &mut TestRng, partner: &[usize], h: usize, w: usize) -> MixPlan {
    let n = partner.len();
    let lam = lams(rng, n);
    let boxes: Vec<Option<CutBox>> = (0..n)
        .map(|i| match i % 4 {
            0 => None,
            1 => Some(CutBox {
                y0: 0,
                y1: h as u32,
                x0: 0,
                x1: w as u32,
            }),
            2 if i % 8 == 2 => Some(CutBox {
                y0: 1,
                y1: 1,
                x0: 0,
                x1: w as u32,
            }),
            _ => {
                let y0 = rng.random_range(0..h as u32);
                let x0 = rng.random_range(0..w as u32);
                Some(CutBox {
                    y0,
                    y1: rng.random_range(y0..=h as u32),
                    x0,
                    x1: rng.random_range(x0..=w as u32),
                })
            }
        })
        .collect();
    MixPlan::with_boxes(
        partner,
        &lam,
        &boxes,
        ImageSize {
            height: h,
            width: w,
        },
    )
    .unwrap()
}

/// Uploads `data` into a fresh allocation of `data.len() + offset` elements and returns it;
/// the data starts at element `offset` (so views can sit at odd addresses).
pub fn upload_at<T: cudarc_repr::Repr>(
    m: &CudaMixer,
    data: &[T],
    offset: usize,
    fill: T,
) -> CudaSlice<T> {
    let mut host = vec![fill; offset];
    host.extend_from_slice(data);
    host.push(fill);
    m.stream().clone_htod(&host).unwrap()
}

pub fn view<T>(s: &CudaSlice<T>, offset: usize, len: usize) -> CudaView<'_, T> {
    s.slice(offset..offset + len)
}

pub fn view_mut<T>(s: &mut CudaSlice<T>, offset: usize, len: usize) -> CudaViewMut<'_, T> {
    s.slice_mut(offset..offset + len)
}

pub fn download<T: cudarc_repr::Repr>(m: &CudaMixer, s: &CudaSlice<T>) -> Vec<T> {
    m.stream().clone_dtoh(s).unwrap()
}

/// The types the tests move to and from the device.
pub mod cudarc_repr {
    pub trait Repr: mixup_kernels::cuda::cudarc::driver::DeviceRepr + Copy + Default {}
    impl<T: mixup_kernels::cuda::cudarc::driver::DeviceRepr + Copy + Default> Repr for T {}
}

pub fn widen<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f32() as f64).collect()
}

/// Bits of an element, for exact comparisons.
pub fn bits<T: Element>(v: T) -> u32 {
    match T::DTYPE {
        mixup_kernels::ScalarType::U8 => v.to_f32() as u32,
        mixup_kernels::ScalarType::F32 => v.to_f32().to_bits(),
        // f16/bf16 round-trip exactly through f32, so the f32 bits identify the value.
        _ => v.to_f32().to_bits(),
    }
}
#[allow(unused_imports)]
pub use common::in_box as in_box_of;
