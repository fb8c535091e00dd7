//! GPU mixing against the CPU path and its formula (bit for bit) and the f64 reference, every dtype, awkward
//! shapes, views at odd element offsets, in place and out of place.
//! Prints SKIPPED without a GPU (see tests/cuda_common).
#![cfg(feature = "cuda")]

mod cuda_common;

use cuda_common::*;
use mixup_kernels::cuda::{CudaMixer, DevicePlan};
use mixup_kernels::{Element, ImageSize, MixError, MixPlan, SampleShape, bf16, f16, reference};

/// The CPU path's semantics, written out: f32 lerp as two rounded products and one rounded
/// sum, one rounding to T; CutMix copies the partner's element inside the box; a sample that
/// is its own partner is copied.
fn expected<T: Element>(plan: &MixPlan, layout: &SampleShape, x: &[T]) -> Vec<T> {
    let row = layout.sample_len().unwrap();
    let mut out = vec![T::default(); x.len()];
    for (i, s) in plan.samples().enumerate() {
        for k in 0..row {
            let a = x[i * row + k];
            let b = x[s.partner * row + k];
            let inside = in_box_of(layout, s.cut, k);
            out[i * row + k] = match inside {
                // A sample that is its own partner keeps its values (no f32 rounding of
                // `λx + (1-λ)x`), as the CPU path does.
                _ if s.partner == i => a,
                Some(true) => b,
                Some(false) => a,
                None => {
                    let lam = s.lam;
                    T::from_f32(lam * a.to_f32() + (1.0 - lam) * b.to_f32())
                }
            };
        }
    }
    out
}

fn plans(seed: u64, batch: usize, layout: &SampleShape) -> Vec<(&'static str, MixPlan)> {
    let mut r = rng(seed);
    let lam = lams(&mut r, batch);
    let perm = permutation(&mut r, batch);
    let prs = pairs(&mut r, batch);
    let flip: Vec<usize> = (0..batch).rev().collect();
    let mut v = vec![
        ("identity", MixPlan::identity(batch).unwrap()),
        ("permutation", MixPlan::from_parts(&perm, &lam).unwrap()),
        ("pairs", MixPlan::from_parts(&prs, &lam).unwrap()),
        ("flip", MixPlan::from_parts(&flip, &lam).unwrap()),
    ];
    if let Some(ImageSize {
        height: h,
        width: w,
    }) = layout.image_size()
    {
        v.push(("cutmix pairs", cutmix_plan(&mut r, &prs, h, w)));
        v.push(("cutmix permutation", cutmix_plan(&mut r, &perm, h, w)));
    } else {
        // Boxes under SampleShape::Rows are ignored: every sample lerps.
        v.push(("boxes on rows", cutmix_plan(&mut r, &prs, 4, 4)));
    }
    v
}

fn check_dtype<T: Element + cudarc_repr::Repr>(m: &CudaMixer, seed: u64) {
    let mut dplan = DevicePlan::new(m);
    let mut r = rng(seed);
    for layout in mix_layouts() {
        for batch in [1usize, 2, 5, 8] {
            let row = layout.sample_len().unwrap();
            let x: Vec<T> = random(&mut r, batch * row);
            for (name, plan) in plans(seed ^ batch as u64, batch, &layout) {
                dplan.upload(&plan).unwrap();
                let want = expected(&plan, &layout, &x);
                let reference = reference::mix(&plan, &layout, &x).unwrap();
                #[cfg(feature = "cpu")]
                {
                    // The CPU path is the semantics the GPU must match bit for bit.
                    let mut cpu = vec![T::default(); x.len()];
                    mixup_kernels::cpu::mix(&plan, &layout, &x, &mut cpu).unwrap();
                    for (i, (c, w)) in cpu.iter().zip(&want).enumerate() {
                        assert_eq!(
                            bits(*c),
                            bits(*w),
                            "{name} {layout:?}: the CPU path differs at {i}"
                        );
                    }
                }
                for (xo, oo) in [(0usize, 0usize), (1, 1), (3, 1), (0, 5)] {
                    let what = format!(
                        "{} {name} {layout:?} B={batch} offsets ({xo},{oo})",
                        T::DTYPE.name()
                    );
                    let xs = upload_at(m, &x, xo, T::from_f32(7.0));
                    let mut os =
                        upload_at(m, &vec![T::from_f32(99.0); x.len()], oo, T::from_f32(7.0));
                    m.mix(
                        &dplan,
                        &layout,
                        &view(&xs, xo, x.len()),
                        &mut view_mut(&mut os, oo, x.len()),
                    )
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                    let got = download(m, &os);
                    // Nothing outside the view was touched.
                    assert!(
                        got[..oo].iter().all(|v| v.to_f32() == 7.0),
                        "{what}: wrote before the view"
                    );
                    assert_eq!(
                        got[oo + x.len()].to_f32(),
                        7.0,
                        "{what}: wrote after the view"
                    );
                    let got = &got[oo..oo + x.len()];
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(bits(*g), bits(*w), "{what}[{i}]: got {g:?}, want {w:?}");
                    }
                    let tol = match T::DTYPE.name() {
                        "f32" => (1e-6, 1e-6),
                        "u8" => (0.5, 0.0),
                        _ => (1e-3, 8e-3),
                    };
                    assert_close(&what, &widen(got), &reference, Tol::new(tol.0, tol.1));
                }
                if plan.is_involution() {
                    for xo in [0usize, 3] {
                        let what = format!(
                            "{} {name} {layout:?} B={batch} in place at {xo}",
                            T::DTYPE.name()
                        );
                        let mut xs = upload_at(m, &x, xo, T::from_f32(7.0));
                        m.mix_in_place(&dplan, &layout, &mut view_mut(&mut xs, xo, x.len()))
                            .unwrap_or_else(|e| panic!("{what}: {e}"));
                        let got = download(m, &xs);
                        for (i, (g, w)) in got[xo..xo + x.len()].iter().zip(&want).enumerate() {
                            assert_eq!(bits(*g), bits(*w), "{what}[{i}]");
                        }
                    }
                } else {
                    let mut xs = upload_at(m, &x, 0, T::from_f32(7.0));
                    let err = m.mix_in_place(&dplan, &layout, &mut view_mut(&mut xs, 0, x.len()));
                    assert!(
                        matches!(err, Err(MixError::NotInvolution { .. })),
                        "{name}: {err:?}"
                    );
                    let after = download(m, &xs);
                    assert!(
                        after[..x.len()]
                            .iter()
                            .zip(&x)
                            .all(|(a, b)| bits(*a) == bits(*b)),
                        "untouched after the error"
                    );
                }
            }
        }
    }
}

gpu_dtype_tests! { check_dtype:
    mix_f32 => f32, 1;
    mix_f16 => f16, 2;
    mix_bf16 => bf16, 3;
    mix_u8 => u8, 4;
}

#[test]
fn large_batches_and_images() {
    let Some(m) = mixer("large_batches_and_images") else {
        return;
    };
    let mut r = rng(5);
    let mut dplan = DevicePlan::new(&m);
    // 4096 short rows, and 64 ImageNet-sized images (many chunks per row), bf16.
    for (batch, layout) in [
        (4096usize, SampleShape::rows(63)),
        (64, SampleShape::channels_first(3, 224, 224)),
        (64, SampleShape::channels_last(224, 224, 3)),
    ] {
        let row = layout.sample_len().unwrap();
        let x: Vec<bf16> = random(&mut r, batch * row);
        let prs = pairs(&mut r, batch);
        let plan = match layout.image_size() {
            Some(s) => cutmix_plan(&mut r, &prs, s.height, s.width),
            None => MixPlan::from_parts(&prs, &lams(&mut r, batch)).unwrap(),
        };
        dplan.upload(&plan).unwrap();
        let want = expected(&plan, &layout, &x);
        let mut xs = upload_at(&m, &x, 0, bf16::ZERO);
        m.mix_in_place(&dplan, &layout, &mut view_mut(&mut xs, 0, x.len()))
            .unwrap();
        let got = download(&m, &xs);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{layout:?}[{i}]");
        }
    }
}

#[test]
fn bad_arguments_are_rejected_before_launch() {
    let Some(m) = mixer("bad_arguments_are_rejected_before_launch") else {
        return;
    };
    let mut dplan = DevicePlan::new(&m);
    let plan = MixPlan::from_parts(&[1, 0], &[0.5, 0.5]).unwrap();
    let x = m.stream().clone_htod(&[1.0f32; 10]).unwrap();
    let mut out = m.stream().alloc_zeros::<f32>(10).unwrap();
    // A mix of `x` in rows of `$row` into the first `$len` of `out` that must be refused with
    // `Err($err)`.
    macro_rules! refused {
        ($plan:expr, $row:expr, $len:expr, $err:pat) => {
            let r = m.mix(
                $plan,
                &SampleShape::rows($row),
                &x.as_view(),
                &mut out.slice_mut(0..$len),
            );
            assert!(matches!(r, Err($err)), "{r:?}");
        };
    }
    use MixError::{InvalidArgument, LengthMismatch, ShapeMismatch};
    // Nothing uploaded yet.
    refused!(&dplan, 5, 10, InvalidArgument { what: "plan", .. });
    dplan.upload(&plan).unwrap();
    refused!(&dplan, 4, 10, ShapeMismatch { what: "x", .. });
    refused!(&dplan, 5, 9, LengthMismatch { what: "out", .. });
    assert_eq!(m.stream().clone_dtoh(&out).unwrap(), vec![0.0; 10]);
    // A plan from another mixer's stream is refused.
    let other = CudaMixer::from_stream(m.stream().context().new_stream().unwrap()).unwrap();
    let mut foreign = DevicePlan::new(&other);
    foreign.upload(&plan).unwrap();
    refused!(&foreign, 5, 10, InvalidArgument { what: "plan", .. });
    // The raw API: a misaligned or null address is refused before the launch (a misaligned
    // access would end the context); the mixer still works after.
    {
        use mixup_kernels::ScalarType;
        use mixup_kernels::cuda::cudarc::driver::{DevicePtr, DevicePtrMut};
        use mixup_kernels::cuda::raw;
        let s = m.stream();
        let (xp, _r) = x.device_ptr(s);
        let (op, _w) = out.device_ptr_mut(s);
        let rows = SampleShape::rows(5);
        for (xa, oa, what) in [(xp + 2, op, "x"), (xp, op + 1, "out"), (0, op, "x")] {
            // SAFETY: refused before anything is enqueued (the point of the check).
            let r = unsafe { raw::mix(&m, &dplan, &rows, ScalarType::F32, xa, oa, 10) };
            assert!(
                matches!(r, Err(InvalidArgument { what: w, .. }) if w == what),
                "{what}: {r:?}"
            );
        }
        // SAFETY: both hold 10 f32 on the mixer's device, alive until the stream has run.
        unsafe { raw::mix(&m, &dplan, &rows, ScalarType::F32, xp, op, 10) }.unwrap();
    }
    assert_eq!(m.stream().clone_dtoh(&out).unwrap(), vec![1.0; 10]);
}

#[test]
fn pinned_staging_uploads_each_step() {
    let Some(m) = mixer("pinned_staging_uploads_each_step") else {
        return;
    };
    let mut dplan = DevicePlan::with_pinned_staging(&m);
    let mut r = rng(6);
    let layout = SampleShape::rows(100);
    for step in 0..6 {
        let batch = [4usize, 8, 8, 2, 64, 64][step];
        let x: Vec<f32> = random(&mut r, batch * 100);
        let plan = MixPlan::from_parts(&permutation(&mut r, batch), &lams(&mut r, batch)).unwrap();
        dplan.upload(&plan).unwrap();
        let xs = upload_at(&m, &x, 0, 0.0);
        let mut os = upload_at(&m, &x, 0, 0.0);
        m.mix(
            &dplan,
            &layout,
            &view(&xs, 0, x.len()),
            &mut view_mut(&mut os, 0, x.len()),
        )
        .unwrap();
        let got = download(&m, &os);
        assert_eq!(
            &got[..x.len()],
            &expected(&plan, &layout, &x)[..],
            "step {step}"
        );
    }
}
