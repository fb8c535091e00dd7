//! Plan uploads that run ahead of the device: a long kernel holds the stream while the host
//! queues several uploads and mixes with no synchronization; every output must be mixed with
//! its own step's plan. Prints SKIPPED without a GPU (see tests/cuda_common).
//!
//! The pinned case failed before the staging buffers had events of their own: cudarc 0.19
//! records a `PinnedHostSlice`'s event only in multi-stream mode, so on the default stream the
//! third upload rewrote the first staging buffer while the first copy was still queued behind
//! the long kernel, and step 0 ran with step 2's (or a later) plan.
#![cfg(feature = "cuda")]

mod cuda_common;

use std::time::{Duration, Instant};

use cuda_common::*;
use mixup_kernels::cuda::cudarc::driver::sys::CUevent_flags;
use mixup_kernels::cuda::cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};
use mixup_kernels::cuda::cudarc::nvrtc::Ptx;
use mixup_kernels::cuda::kernels::{ModuleSource, Target, compile, options};
use mixup_kernels::cuda::{CudaMixer, CudaSlice, DevicePlan};
use mixup_kernels::{MixPlan, SampleShape, reference};

/// How long the first kernel holds the stream: far longer than queuing the steps takes.
const SPIN: Duration = Duration::from_millis(300);

/// A kernel that returns after `ns` nanoseconds of the device's global timer.
fn spin_kernel(m: &CudaMixer) -> CudaFunction {
    static SPIN_SRC: ModuleSource = ModuleSource {
        name: "spin",
        source: r#"
extern "C" __global__ void spin(unsigned long long ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); } while (t - t0 < ns);
}
"#,
        hash: 0,
    };
    let target = Target::Sm(m.compute_capability());
    let c = compile(
        &SPIN_SRC,
        "spin",
        target,
        &options(target, "MIXUP_ALL", &[]),
    )
    .unwrap();
    let module = m
        .stream()
        .context()
        .load_module(Ptx::from_binary(c.image))
        .unwrap();
    module.load_function("spin").unwrap()
}

/// Uploads `plan` into `dplan` and mixes `x` into `out` with it, without waiting for either.
fn upload_and_mix(
    m: &CudaMixer,
    (dplan, plan): (&mut DevicePlan, &MixPlan),
    layout: &SampleShape,
    x: &CudaSlice<f32>,
    out: &mut CudaSlice<f32>,
) {
    dplan.upload(plan).unwrap();
    m.mix(dplan, layout, &x.as_view(), &mut out.as_view_mut())
        .unwrap();
}

fn run_ahead(pinned: bool, test: &str) {
    let Some(m) = mixer(test) else { return };
    let s = m.stream().clone();
    assert!(
        !s.context().is_in_multi_stream_mode(),
        "the race needs the context's default stream alone (cudarc's single-stream mode)"
    );
    let spin = spin_kernel(&m);
    let mut r = rng(if pinned { 11 } else { 12 });
    // Batches change size, so the staging and device buffers also grow while work is queued.
    let batches = [8usize, 8, 8, 40, 8, 200, 8, 8, 64, 8];
    let d = 5;
    let layout = SampleShape::rows(d);
    let plans: Vec<MixPlan> = batches
        .iter()
        .enumerate()
        .map(|(k, &b)| {
            let partner = if k % 2 == 0 {
                pairs(&mut r, b)
            } else {
                permutation(&mut r, b)
            };
            MixPlan::from_parts(&partner, &lams(&mut r, b)).unwrap()
        })
        .collect();
    let xs: Vec<Vec<f32>> = batches.iter().map(|&b| random(&mut r, b * d)).collect();
    let inputs: Vec<_> = xs.iter().map(|x| s.clone_htod(x).unwrap()).collect();
    let mut outs: Vec<_> = xs
        .iter()
        .map(|x| s.clone_htod(&vec![f32::NAN; x.len()]).unwrap())
        .collect();
    let mut plan = if pinned {
        DevicePlan::with_pinned_staging(&m)
    } else {
        DevicePlan::new(&m)
    };
    // Compile the mix kernels now, so no compilation happens while the stream is held.
    plan.upload(&plans[0]).unwrap();
    for (k, p) in plans.iter().enumerate().take(2) {
        upload_and_mix(&m, (&mut plan, p), &layout, &inputs[k], &mut outs[k]);
    }
    s.synchronize().unwrap();
    for o in outs.iter_mut() {
        s.memcpy_htod(&vec![f32::NAN; o.len()], o).unwrap();
    }
    s.synchronize().unwrap();

    let held = s
        .context()
        .new_event(Some(CUevent_flags::CU_EVENT_DISABLE_TIMING))
        .unwrap();
    let ns = SPIN.as_nanos() as u64;
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (1, 1, 1),
        shared_mem_bytes: 0,
    };
    let t0 = Instant::now();
    // SAFETY: the kernel takes one u64 and touches no memory.
    unsafe { s.launch_builder(&spin).arg(&ns).launch(cfg) }.unwrap();
    held.record(&s).unwrap();
    for (k, p) in plans.iter().enumerate() {
        upload_and_mix(&m, (&mut plan, p), &layout, &inputs[k], &mut outs[k]);
        if k == 0 {
            // Otherwise the device was never behind and this test proves nothing.
            assert!(
                !held.is_complete(),
                "the spin kernel finished before the first upload was queued"
            );
        }
    }
    let queued = t0.elapsed();
    s.synchronize().unwrap();
    if pinned {
        // The third upload reuses the first staging buffer: it must have waited for the copy
        // queued behind the spin kernel.
        assert!(
            queued >= SPIN / 2,
            "pinned uploads did not wait for their staging buffer: queued in {queued:?}"
        );
    }
    for (k, p) in plans.iter().enumerate() {
        let got = download(&m, &outs[k]);
        let want = reference::mix(p, &layout, &xs[k]).unwrap();
        assert_close(
            &format!("step {k} (batch {})", batches[k]),
            &widen(&got),
            &want,
            Tol::new(1e-6, 1e-6),
        );
    }
}

#[test]
fn pinned_uploads_ahead_of_the_device_keep_each_steps_plan() {
    run_ahead(
        true,
        "pinned_uploads_ahead_of_the_device_keep_each_steps_plan",
    );
}

#[test]
fn pageable_uploads_ahead_of_the_device_keep_each_steps_plan() {
    run_ahead(
        false,
        "pageable_uploads_ahead_of_the_device_keep_each_steps_plan",
    );
}

/// Dropping a mixer waits for the work it queued: its fields unload the kernel modules and free
/// the flags and scratch buffers, and CUDA does not say that unloading a module waits for its
/// queued launches. A second mixer on the same stream mixes behind the spin kernel and is
/// dropped at once: when the drop returns the stream must have run past the spin, and the mix
/// must be right. (The old code may pass too, if the driver's `cuModuleUnload` synchronizes by
/// itself: this checks the promise, not that the old code broke it.) Pinned staging, so the
/// plan upload is asynchronous by guarantee and the spin is still running at the drop.
#[test]
fn dropping_a_mixer_waits_for_its_queued_work() {
    let test = "dropping_a_mixer_waits_for_its_queued_work";
    let Some(m) = mixer(test) else { return };
    let s = m.stream().clone();
    let spin = spin_kernel(&m);
    let mut r = rng(13);
    let (b, d) = (16usize, 7usize);
    let layout = SampleShape::rows(d);
    let plan = MixPlan::from_parts(&pairs(&mut r, b), &lams(&mut r, b)).unwrap();
    let x = random(&mut r, b * d);
    let input = s.clone_htod(&x).unwrap();
    let mut out = s.clone_htod(&vec![f32::NAN; b * d]).unwrap();
    let other = mixer(test).expect("a second mixer on the same device");
    assert!(
        **other.stream() == *s,
        "both on the context's default stream"
    );
    let mut dplan = DevicePlan::with_pinned_staging(&other);
    // Compile the kernel before the stream is held.
    upload_and_mix(&other, (&mut dplan, &plan), &layout, &input, &mut out);
    s.memcpy_htod(&vec![f32::NAN; b * d], &mut out).unwrap();
    s.synchronize().unwrap();
    let held = s
        .context()
        .new_event(Some(CUevent_flags::CU_EVENT_DISABLE_TIMING))
        .unwrap();
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (1, 1, 1),
        shared_mem_bytes: 0,
    };
    let ns = SPIN.as_nanos() as u64;
    // SAFETY: the kernel takes one u64 and touches no memory.
    unsafe { s.launch_builder(&spin).arg(&ns).launch(cfg) }.unwrap();
    held.record(&s).unwrap();
    upload_and_mix(&other, (&mut dplan, &plan), &layout, &input, &mut out);
    assert!(
        !held.is_complete(),
        "the spin kernel finished before the drop: the test proves nothing"
    );
    drop(dplan);
    drop(other);
    assert!(
        held.is_complete(),
        "the mixer's drop returned while its queued mix was still waiting behind the spin"
    );
    s.synchronize().unwrap();
    let want = reference::mix(&plan, &layout, &x).unwrap();
    assert_close(
        "the mix queued before the drop",
        &widen(&download(&m, &out)),
        &want,
        Tol::new(1e-6, 1e-6),
    );
}
