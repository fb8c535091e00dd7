//! GPU soft targets against the f64 reference and the CPU path (bit for bit), every float dtype, C from 1 to 50 000, odd
//! output offsets, same-class partners, device labels out of range, and the benchmark's shape.
//! Prints SKIPPED without a GPU (see tests/cuda_common).
#![cfg(feature = "cuda")]

mod cuda_common;

use cuda_common::*;
use mixup_kernels::cuda::{CudaMixer, DevicePlan};
use mixup_kernels::{FloatElement, MixError, MixPlan, TargetSpec, bf16, f16, reference};
use rand::Rng;

fn tol<T: FloatElement>() -> (f64, f64) {
    match T::DTYPE.name() {
        "f32" => (1e-7, 1e-6),
        "f16" => (1e-6, 1e-3),
        _ => (1e-6, 8e-3),
    }
}

fn check_dtype<T: FloatElement + cudarc_repr::Repr>(m: &CudaMixer, seed: u64) {
    let mut r = rng(seed);
    let mut dplan = DevicePlan::new(m);
    for c in [1usize, 2, 3, 10, 63, 1000, 4097, 50_000] {
        for batch in [1usize, 2, 5, 64] {
            let labels: Vec<u32> = (0..batch)
                .map(|i| {
                    if i % 5 == 1 {
                        0
                    } else {
                        r.random_range(0..c as u32)
                    }
                })
                .collect();
            let plan =
                MixPlan::from_parts(&permutation(&mut r, batch), &lams(&mut r, batch)).unwrap();
            dplan.upload(&plan).unwrap();
            let ls = upload_at(m, &labels, 0, 0);
            for eps in [0.0f64, 0.1] {
                let spec = TargetSpec::new(c, eps).unwrap();
                let want = reference::soft_targets(&plan, &spec, &labels).unwrap();
                for off in [0usize, 1, 3] {
                    let what =
                        format!("{} C={c} B={batch} eps={eps} offset {off}", T::DTYPE.name());
                    let n = batch * c;
                    let mut out = upload_at(m, &vec![T::from_f32(-1.0); n], off, T::from_f32(5.0));
                    m.soft_targets(
                        &dplan,
                        &spec,
                        &view(&ls, 0, batch),
                        &mut view_mut(&mut out, off, n),
                    )
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                    let got = download(m, &out);
                    assert!(
                        got[..off].iter().all(|v| v.to_f32() == 5.0),
                        "{what}: wrote before"
                    );
                    assert_eq!(got[off + n].to_f32(), 5.0, "{what}: wrote after");
                    let (a, rl) = tol::<T>();
                    assert_close(&what, &widen(&got[off..off + n]), &want, Tol::new(a, rl));
                    // The same f32 formula as the CPU path: the same bits.
                    #[cfg(feature = "cpu")]
                    {
                        let mut cpu = vec![T::default(); n];
                        mixup_kernels::cpu::soft_targets(&plan, &spec, &labels, &mut cpu).unwrap();
                        for (i, (g, w)) in got[off..off + n].iter().zip(&cpu).enumerate() {
                            assert_eq!(
                                bits(*g),
                                bits(*w),
                                "{what}: differs from the CPU path at {i}"
                            );
                        }
                    }
                }
                m.check_labels().unwrap();
            }
        }
    }
}

gpu_dtype_tests! { check_dtype:
    soft_targets_f32 => f32, 11;
    soft_targets_f16 => f16, 12;
    soft_targets_bf16 => bf16, 13;
}

#[test]
fn same_class_partners_add_up() {
    let Some(m) = mixer("same_class_partners_add_up") else {
        return;
    };
    let mut dplan = DevicePlan::new(&m);
    dplan
        .upload(&MixPlan::from_parts(&[1, 0], &[0.7, 0.3]).unwrap())
        .unwrap();
    let ls = m.stream().clone_htod(&[2u32, 2]).unwrap();
    let mut out = m.stream().alloc_zeros::<f32>(8).unwrap();
    let spec = TargetSpec::new(4, 0.0).unwrap();
    m.soft_targets(&dplan, &spec, &ls.as_view(), &mut out.as_view_mut())
        .unwrap();
    assert_eq!(
        m.stream().clone_dtoh(&out).unwrap(),
        vec![0., 0., 1., 0., 0., 0., 1., 0.]
    );
}

#[test]
fn device_labels_out_of_range_are_flagged_not_read() {
    let Some(m) = mixer("device_labels_out_of_range_are_flagged_not_read") else {
        return;
    };
    let mut dplan = DevicePlan::new(&m);
    dplan
        .upload(&MixPlan::from_parts(&[1, 0, 2], &[0.5, 0.5, 1.0]).unwrap())
        .unwrap();
    // Sample 0 has label 10 >= C; samples 0 and 1 both see it (own and partner).
    let ls = m.stream().clone_htod(&[10u32, 1, u32::MAX]).unwrap();
    let mut out = m.stream().alloc_zeros::<f32>(12).unwrap();
    let spec = TargetSpec::new(4, 0.0).unwrap();
    m.soft_targets(&dplan, &spec, &ls.as_view(), &mut out.as_view_mut())
        .unwrap();
    match m.check_labels() {
        Err(MixError::DeviceLabelOutOfRange { count }) => assert_eq!(count, 3),
        other => panic!("{other:?}"),
    }
    // Reported once, then cleared.
    m.check_labels().unwrap();
    // Valid labels of the same rows are still written where they are valid (row 1 keeps its
    // own half at class 1).
    let got = m.stream().clone_dtoh(&out).unwrap();
    assert_eq!(got[4 + 1], 0.5);
}

#[test]
fn length_errors_leave_the_output_alone() {
    let Some(m) = mixer("length_errors_leave_the_output_alone") else {
        return;
    };
    let mut dplan = DevicePlan::new(&m);
    dplan.upload(&MixPlan::identity(2).unwrap()).unwrap();
    let ls = m.stream().clone_htod(&[0u32, 1, 2]).unwrap();
    let mut out = m.stream().clone_htod(&[3.0f32; 8]).unwrap();
    let spec = TargetSpec::new(4, 0.1).unwrap();
    assert!(matches!(
        m.soft_targets(&dplan, &spec, &ls.as_view(), &mut out.as_view_mut()),
        Err(MixError::BatchMismatch {
            what: "labels",
            plan: 2,
            data: 3
        })
    ));
    assert!(matches!(
        m.soft_targets(&dplan, &spec, &ls.slice(0..2), &mut out.slice_mut(0..7)),
        Err(MixError::ShapeMismatch { what: "out", .. })
    ));
    assert_eq!(m.stream().clone_dtoh(&out).unwrap(), vec![3.0; 8]);
}

#[test]
fn bench_shape_matches_the_reference() {
    // The benchmark's bf16 shape against the f64 reference, as the unfused baseline (now in
    // benches/gpu) once was.
    let Some(m) = mixer("bench_shape_matches_the_reference") else {
        return;
    };
    let mut r = rng(14);
    let (batch, c) = (33usize, 1000usize);
    let labels: Vec<u32> = (0..batch).map(|_| r.random_range(0..c as u32)).collect();
    let plan = MixPlan::from_parts(&pairs(&mut r, batch), &lams(&mut r, batch)).unwrap();
    let mut dplan = DevicePlan::new(&m);
    dplan.upload(&plan).unwrap();
    let spec = TargetSpec::new(c, 0.1).unwrap();
    let ls = upload_at(&m, &labels, 0, 0);
    let mut out = m.stream().alloc_zeros::<bf16>(batch * c).unwrap();
    m.soft_targets(&dplan, &spec, &view(&ls, 0, batch), &mut out.as_view_mut())
        .unwrap();
    let want = reference::soft_targets(&plan, &spec, &labels).unwrap();
    assert_close(
        "bf16",
        &widen(&m.stream().clone_dtoh(&out).unwrap()),
        &want,
        Tol::new(1e-6, 8e-3),
    );
}
