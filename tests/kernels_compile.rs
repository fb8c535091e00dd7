//! Every kernel, every dtype, compiled through NVRTC to CUBIN for sm_75, sm_80, sm_89 and sm_90
//! (NVRTC's ptxas assembles the inline PTX too, so an instruction an architecture lacks fails
//! here). No GPU needed: NVRTC runs on the CPU.
//!
//! NVRTC comes from PyPI: `export LD_LIBRARY_PATH=$(bash scripts/nvrtc.sh)`. Without it the
//! tests print SKIPPED and pass, unless `MIXUP_REQUIRE_NVRTC=1` (CI), where they fail.
#![cfg(feature = "cuda")]

use mixup_kernels::cuda::CudaError;
use mixup_kernels::cuda::cudarc::nvrtc::{result::NvrtcError, sys::nvrtcResult};
use mixup_kernels::cuda::kernels::{
    Kernel, MODULES, ModuleSource, Target, compile, defines_entry, entries, options, version,
};
use mixup_kernels::{MixError, ScalarType};
use std::io::Write;

const ARCHS: [u32; 4] = [75, 80, 89, 90];

fn nvrtc_present() -> bool {
    match version() {
        Ok(_) => true,
        Err(e) => {
            if std::env::var("MIXUP_REQUIRE_NVRTC").as_deref() == Ok("1") {
                panic!(
                    "MIXUP_REQUIRE_NVRTC=1 but NVRTC is not usable: {e}\n\
                     install it with `export LD_LIBRARY_PATH=$(bash scripts/nvrtc.sh)`"
                );
            }
            // Straight to stderr: libtest captures `eprintln!` of a passing test.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: NVRTC not found ({e}); set LD_LIBRARY_PATH=$(bash scripts/nvrtc.sh)"
            );
            false
        }
    }
}

/// `(entry, spill-store bytes)` from ptxas's `-v` report; `None` where the count does not parse.
fn spills(log: &str) -> Vec<(String, Option<u64>)> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in log.lines() {
        if let Some(i) = line.find("Compiling entry function '") {
            let rest = &line[i + "Compiling entry function '".len()..];
            cur = rest.split('\'').next().map(str::to_string);
        }
        if let (Some(e), Some(i)) = (&cur, line.find("bytes spill stores")) {
            // `None` when the count does not parse: a changed log format must not read as 0.
            let n: Option<u64> = line[..i]
                .rsplit(',')
                .next()
                .and_then(|s| s.trim().parse().ok());
            out.push((e.clone(), n));
        }
    }
    out
}

#[test]
fn every_module_compiles_for_every_arch() {
    if !nvrtc_present() {
        return;
    }
    let (major, minor) = version().unwrap();
    println!("NVRTC {major}.{minor}");
    std::thread::scope(|s| {
        let handles: Vec<_> = ARCHS
            .iter()
            .map(|&arch| {
                s.spawn(move || {
                    let mut failures = Vec::new();
                    for m in MODULES {
                        let opts = options(
                            Target::Sm(arch),
                            "MIXUP_ALL",
                            &["--ptxas-options=-v".to_string()],
                        );
                        let t0 = std::time::Instant::now();
                        let c = match compile(m, m.name, Target::Sm(arch), &opts) {
                            Ok(c) => c,
                            Err(e) => {
                                failures.push(format!("{} for sm_{arch}: {e}", m.name));
                                continue;
                            }
                        };
                        println!(
                            "{} sm_{arch}: {} bytes of CUBIN in {:?}",
                            m.name,
                            c.image.len(),
                            t0.elapsed()
                        );
                        for (_, _, e) in entries().filter(|e| e.0.module_name() == m.name) {
                            if !defines_entry(&c.image, e) {
                                failures.push(format!("sm_{arch}: {} lacks kernel `{e}`", m.name));
                            }
                        }
                        // The kernels are designed to run without local-memory spills
                        // (docs/perf-notes.md); catch a change that breaks that.
                        if arch == 90 {
                            let report = spills(&c.log);
                            // ptxas reports every function it compiled: at least one line per
                            // entry, or the log was not read (and "no spills" would mean nothing).
                            let n = entries().filter(|e| e.0.module_name() == m.name).count();
                            if report.len() < n {
                                failures.push(format!(
                                    "sm_90: {}: {} spill reports in ptxas's log for {n} entries",
                                    m.name,
                                    report.len()
                                ));
                            }
                            for (entry, bytes) in report {
                                match bytes {
                                    Some(0) => {}
                                    Some(b) => {
                                        failures.push(format!("sm_90: `{entry}` spills {b} bytes"))
                                    }
                                    None => failures
                                        .push(format!("sm_90: `{entry}`: unreadable spill count")),
                                }
                            }
                        }
                    }
                    failures
                })
            })
            .collect();
        let failures: Vec<String> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    });
}

#[test]
fn each_entry_compiles_alone() {
    if !nvrtc_present() {
        return;
    }
    // The crate compiles one entry per first call (-DMIXUP_ONLY_<entry>); check the guards give
    // exactly that entry, on the architecture of the GPUs the benchmarks target.
    let mut failures = Vec::new();
    for (kernel, _, entry) in entries() {
        let opts = options(Target::Sm(90), &format!("MIXUP_ONLY_{entry}"), &[]);
        match compile(kernel.module(), entry, Target::Sm(90), &opts) {
            Err(e) => failures.push(format!("{entry}: {e}")),
            Ok(c) => {
                if !defines_entry(&c.image, entry) {
                    failures.push(format!("{entry} lacks itself"));
                }
                for (_, _, other) in entries().filter(|o| o.2 != entry) {
                    if defines_entry(&c.image, other) {
                        failures.push(format!("{entry} also compiled `{other}`"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn ptx_target_compiles_for_newer_devices() {
    if !nvrtc_present() {
        return;
    }
    // A device newer than NVRTC gets PTX for the newest architecture NVRTC knows.
    let m = Kernel::SoftTargets.module();
    let opts = options(Target::Compute(90), "MIXUP_ONLY_soft_targets_bf16", &[]);
    let c = compile(m, "soft_targets_bf16", Target::Compute(90), &opts).unwrap();
    assert!(defines_entry(&c.image, "soft_targets_bf16"));
    assert_eq!(
        c.image.last(),
        Some(&0),
        "PTX is NUL-terminated for the driver"
    );
}

#[test]
fn a_syntax_error_names_the_kernel_and_carries_the_log() {
    if !nvrtc_present() {
        return;
    }
    static BROKEN: ModuleSource = ModuleSource {
        name: "broken",
        source: "extern \"C\" __global__ void k(float* x) { x[0] = undefined_name; }",
        hash: 0,
    };
    let opts = options(Target::Sm(90), "MIXUP_ALL", &[]);
    match compile(&BROKEN, "broken_f32", Target::Sm(90), &opts) {
        Err(e @ MixError::Compile { .. }) => {
            // NVRTC's result code stays reachable, as a field and as the error's source.
            let code = NvrtcError(nvrtcResult::NVRTC_ERROR_COMPILATION);
            let source = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<NvrtcError>());
            assert_eq!(source, Some(&code));
            let MixError::Compile {
                module,
                log,
                source,
                ..
            } = e
            else {
                unreachable!()
            };
            assert_eq!(source, CudaError::Nvrtc(code));
            assert_eq!(module, "broken_f32");
            assert!(log.contains("undefined_name"), "{log}");
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
    // A NUL in a user's NVRTC option is an argument error, not a panic inside cudarc.
    let bad = options(Target::Sm(90), "MIXUP_ALL", &["-D\0".to_string()]);
    assert!(matches!(
        compile(&BROKEN, "broken_f32", Target::Sm(90), &bad),
        Err(MixError::InvalidArgument {
            what: "nvrtc_options",
            ..
        })
    ));
    // And bf16 conversion on sm_75 must not use the sm_80 instruction (it would fail here).
    let m = Kernel::SoftTargets.module();
    let opts = options(Target::Sm(75), "MIXUP_ONLY_soft_targets_bf16", &[]);
    assert!(compile(m, "soft_targets_bf16", Target::Sm(75), &opts).is_ok());
}

#[test]
fn the_arch_branches_the_emulation_runs_are_the_ones_nvrtc_compiles() {
    if !nvrtc_present() {
        return;
    }
    // scripts/emulate.sh runs the kernels with __CUDA_ARCH__ 750, 800 and 900, taking the same
    // `#if __CUDA_ARCH__ >= 800` branches as here: the sm_80 code has cp.async and the bf16 /
    // packed conversions, the sm_75 code has none of them (so the emulation's host versions of
    // those instructions stand for what the device runs).
    for (kernel, dtype, needles) in [
        (
            Kernel::CeBlock,
            ScalarType::BF16,
            &[
                "cp.async.cg.shared.global",
                "cp.async.wait_all",
                "cvt.rn.bf16x2.f32",
                "cvt.rn.bf16.f32",
            ][..],
        ),
        (Kernel::CeBlock, ScalarType::F16, &["cvt.rn.f16x2.f32"][..]),
    ] {
        let (m, entry) = (kernel.module(), kernel.name(dtype).unwrap());
        for arch in [75u32, 80, 90] {
            let define = format!("MIXUP_ONLY_{entry}");
            let opts = options(Target::Compute(arch), &define, &[]);
            let c = compile(m, entry, Target::Compute(arch), &opts).unwrap();
            let ptx = String::from_utf8_lossy(&c.image);
            for n in needles {
                assert_eq!(
                    ptx.contains(n),
                    arch >= 80,
                    "{entry} for compute_{arch}: `{n}` {}",
                    if arch >= 80 { "missing" } else { "present" }
                );
            }
        }
    }
}

/// The bench's unfused baseline (`benches/gpu/naive.cu`) is no longer part of the library, but a
/// baseline that does not compile would only show up on a GPU: compile it for every arch here,
/// with the options the bench uses.
#[test]
fn the_bench_baseline_compiles_for_every_arch() {
    if !nvrtc_present() {
        return;
    }
    static NAIVE: ModuleSource = ModuleSource {
        name: "naive",
        source: concat!(
            include_str!("../kernels/common.cuh"),
            "\n#line 1 \"naive.cu\"\n",
            include_str!("../benches/gpu/naive.cu")
        ),
        hash: 0,
    };
    for arch in ARCHS {
        let opts = options(Target::Sm(arch), "MIXUP_ALL", &[]);
        if let Err(e) = compile(&NAIVE, "naive", Target::Sm(arch), &opts) {
            panic!("benches/gpu/naive.cu does not compile for sm_{arch}: {e}");
        }
    }
}

/// The tunings the GPU sweep (benches/gpu/sweep.rs) and the tuned emulation reach, at their
/// extremes, compile for sm_90 with every entry present. Spills are printed, not failed: a point
/// that spills is one the sweep should measure as slower, not one that cannot run.
#[test]
fn tuned_kernels_compile() {
    use mixup_kernels::cuda::KernelTuning;
    if !nvrtc_present() {
        return;
    }
    let d = KernelTuning::default();
    let tunings = [
        KernelTuning {
            mix_threads: 512,
            mix_unroll: 8,
            mix_box_hoist: true,
            soft_threads: 512,
            soft_unroll: 16,
            ce_warp_threads: 1024,
            ce_slots: 8,
            ce_online_unroll: 8,
            ce_block_max_threads: 512,
            ce_warp_max_row_bytes: 4096,
            bce_warp_threads: 128,
            bce_block_max_threads: 512,
            mn_threads: 512,
            mn_tile: 6144,
            mn_direct: 4096,
            ..d
        },
        KernelTuning {
            mix_threads: 96,
            mix_unroll: 1,
            soft_threads: 64,
            soft_unroll: 1,
            ce_warp_threads: 32,
            ce_slots: 1,
            ce_online_unroll: 1,
            ce_block_max_threads: 64,
            ce_warp_max_row_bytes: 512,
            bce_warp_threads: 32,
            bce_block_max_threads: 64,
            mn_threads: 32,
            mn_tile: 64,
            mn_direct: 1,
            ..d
        },
        KernelTuning { ce_slots: 8, ..d },
    ];
    let target = Target::Sm(90);
    let mut failures = Vec::new();
    for t in tunings {
        t.validate().unwrap();
        for m in MODULES {
            let mut extra = t.defines(m.name);
            extra.push("--ptxas-options=-v".into());
            let opts = options(target, "MIXUP_ALL", &extra);
            match compile(m, m.name, target, &opts) {
                Err(e) => failures.push(format!("{} under {}: {e}", m.name, t.all_defines())),
                Ok(c) => {
                    for (k, _, entry) in entries().filter(|e| e.0.module_name() == m.name) {
                        if !defines_entry(&c.image, entry) {
                            failures.push(format!("{entry} ({k:?}) missing under {extra:?}"));
                        }
                    }
                    for (entry, bytes) in spills(&c.log).into_iter().filter(|s| s.1 != Some(0)) {
                        println!("{entry} spills {bytes:?} bytes under {}", extra.join(" "));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
