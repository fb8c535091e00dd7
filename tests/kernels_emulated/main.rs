//! Runs the kernels of `kernels/*.cu` on the CPU (scripts/emulate.sh, kernels/emu): the threads
//! of a block as fibers, so barriers, warp shuffles, shared memory, `cp.async` and the
//! last-block-done loss reduction behave as on a GPU; under AddressSanitizer and UBSan, 16-byte
//! accesses checked for alignment.
//!
//! One oracle: this file writes each case (the inputs, and the launch the crate's host code
//! makes for them: `cuda::kernels::emulated`, the same code the CUDA path launches with, so
//! the kernel, grid, block, shared memory and every argument are the host's), the emulator runs
//! the kernel and writes the outputs back, and they are compared here with
//! `mixup_kernels::reference` (f64) within explicit error bounds (mix.rs, ce.rs, bce.rs,
//! mix_normalize.rs). The
//! C++ side knows no launch rule and no expected value (kernels/emu/main.cpp); only the
//! engine's own tests are written there.
//!
//! The emulation is built and run once per device generation the kernels branch on
//! (`__CUDA_ARCH__` 750: T4; 800: A100; 900: H100/H200), so the sm_80+ paths (`cp.async`, the
//! bf16 and packed conversions) run too; an arch whose kernels preprocess to the same text as an
//! earlier one's (sm_90 = sm_80 today) is reported as covered by that run instead of run again.
//!
//! Needs a C++17 compiler with `_Float16` (g++ >= 12, clang >= 15; `CXX` picks it); without one
//! it prints SKIPPED and passes.
//!
//! Built with the `cuda` feature only (the default set): the launches come from the crate's host
//! code.
#![cfg(feature = "cuda")]

#[path = "../common/mod.rs"]
mod common;

mod bce;
mod ce;
mod exchange;
mod loss;
mod mix;
mod mix_normalize;

use std::io::Write;
use std::process::Command;
use std::time::Instant;

use exchange::Case;

fn emulate(root: &str, args: &[&str], env: &[(&str, String)]) -> (bool, String) {
    let out = Command::new("bash")
        .arg(format!("{root}/scripts/emulate.sh"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("bash runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Every case, in groups.
fn cases() -> Vec<Case> {
    let mut all = mix::cases();
    all.extend(ce::cases());
    all.extend(bce::cases());
    all.extend(mix_normalize::cases());
    all
}

/// Whether there is a C++ compiler for the emulation (else prints SKIPPED).
/// Whether the emulation can be built; without a compiler it says SKIPPED, unless
/// `MIXUP_REQUIRE_EMULATION=1` (the test command sets it), where it fails.
fn have_compiler() -> bool {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    if Command::new(&cxx).arg("--version").output().is_err() {
        assert!(
            std::env::var("MIXUP_REQUIRE_EMULATION").as_deref() != Ok("1"),
            "MIXUP_REQUIRE_EMULATION=1 but no C++ compiler ({cxx}) for the kernel emulation"
        );
        // Straight to stderr: libtest captures `println!` of a passing test.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: no C++ compiler ({cxx}) for the kernel emulation"
        );
        return false;
    }
    true
}

/// Writes `cases`, runs scripts/emulate.sh on them (with `env`, e.g. a tuning's
/// `EMU_DEFINES`), checks that each run of `want_runs` ("== sm_80") happened and judges every
/// arch's outputs side by side; panics listing the failures. `tag` names the run in the output.
fn emulate_and_judge(tag: &str, cases: &[Case], env: &[(&str, String)], want_runs: &[&str]) {
    let root = env!("CARGO_MANIFEST_DIR");
    let t0 = Instant::now();
    let dir = std::env::temp_dir().join(format!(
        "mixup-kernels-emulated-{}-{tag}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    let file = dir.join("cases.bin");
    exchange::write_cases(&file, cases);
    let written = t0.elapsed();
    let args = [
        "--cases",
        file.to_str().expect("a UTF-8 temp path"),
        "--out",
        dir.to_str().expect("a UTF-8 temp path"),
    ];
    let (ok, text) = emulate(root, &args, env);
    let emulated = t0.elapsed();
    println!("[{tag}] {text}");
    assert!(ok, "[{tag}] kernel emulation failed:\n{text}");
    // The line after "total over __CUDA_ARCH__ ..." sums every arch's run of the C++ checks.
    let mut lines = text
        .lines()
        .skip_while(|l| !l.starts_with("total over __CUDA_ARCH__"));
    let archs: Vec<String> = lines
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(3)
        .map(String::from)
        .collect();
    let total = lines.next().unwrap_or("");
    assert!(total.ends_with(" passed, 0 failed"), "[{tag}] {text}");
    for arch in want_runs {
        assert!(text.contains(arch), "[{tag}] no run for {arch}:\n{text}");
    }
    assert!(!archs.is_empty(), "[{tag}] {text}");
    // Each arch's outputs, judged side by side.
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = archs
            .iter()
            .map(|a| {
                let path = dir.join(format!("sm{a}.bin"));
                s.spawn(move || exchange::judge(&path, cases))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("judging"))
            .collect()
    });
    let _ = std::fs::remove_dir_all(&dir);
    let mut failed = Vec::new();
    for (arch, groups) in archs.iter().zip(&results) {
        // `arch` is `__CUDA_ARCH__` (`800`); the target is sm_80.
        let sm = &arch[..arch.len() - 1];
        for (g, c) in groups {
            println!(
                "[{tag}] sm_{sm}: {g:<6} {:>6} checks passed, {} failed",
                c.passed, c.failed
            );
            if c.failed > 0 {
                failed.push(format!(
                    "[{tag}] sm_{sm} {g}: {} failed:\n  {}",
                    c.failed,
                    c.shown.join("\n  ")
                ));
            }
        }
    }
    println!(
        "[{tag}] {} cases; written in {:.1} s, emulated by {:.1} s, judged by {:.1} s",
        cases.len(),
        written.as_secs_f64(),
        emulated.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn every_kernel_runs_correctly_on_the_host() {
    if !have_compiler() {
        return;
    }
    let want = ["== sm_75", "== sm_80", "== sm_90"];
    emulate_and_judge("default", &cases(), &[], &want);
}

/// Non-default tunings (`KernelTuning`), each changing every kernel family's knobs: the
/// kernels are built with the tuning's defines (`EMU_DEFINES`) and the cases launched as the
/// host launches under it, then judged as the default tuning's are. One architecture (sm_80,
/// the A100/H100 path) and every `TUNED_STRIDE`-th case of each group, to bound the time.
#[test]
fn tuned_kernels_run_correctly_on_the_host() {
    use mixup_kernels::cuda::KernelTuning;
    if !have_compiler() {
        return;
    }
    let d = KernelTuning::default();
    // (name, tuning, SMs of the device the launches are made for)
    let tunings = [
        (
            // Small blocks, little unrolling, a grid of 2 blocks looping over every item.
            "narrow",
            KernelTuning {
                mix_threads: 96,
                mix_unroll: 2,
                mix_box_hoist: true,
                soft_threads: 64,
                soft_unroll: 1,
                ce_warp_threads: 64,
                ce_slots: 2,
                ce_online_unroll: 2,
                ce_block_max_threads: 512,
                ce_warp_max_row_bytes: 1024,
                // Rows over 80 KB go online (5120 slots still in ce_block, 18 432 not).
                ce_block_max_row_bytes: 80 * 1024,
                bce_warp_threads: 64,
                bce_block_max_threads: 256,
                bce_slots: 2,
                mn_threads: 96,
                mn_tile: 1024,
                mn_direct: 300,
                grid_sm_multiple: 1,
            },
            2,
        ),
        (
            // Large blocks, deep unrolling, 8 register slots: CE warps up to 4 KB rows.
            "wide",
            KernelTuning {
                mix_threads: 512,
                mix_unroll: 8,
                mix_box_hoist: true,
                soft_threads: 512,
                soft_unroll: 2,
                ce_warp_threads: 512,
                ce_slots: 8,
                ce_online_unroll: 8,
                ce_warp_max_row_bytes: 4096,
                bce_warp_threads: 512,
                bce_block_max_threads: 512,
                bce_slots: 8,
                mn_threads: 512,
                mn_tile: 6144,
                mn_direct: 4096,
                grid_sm_multiple: 3,
                ..d
            },
            1,
        ),
    ];
    const TUNED_STRIDE: usize = 3;
    for (name, t, sms) in tunings {
        t.validate().unwrap();
        assert_ne!(t, d);
        let all = exchange::with_tuning(t, sms, cases);
        let mut kept: Vec<Case> = Vec::new();
        let mut seen: Vec<(&str, usize)> = Vec::new();
        for c in all {
            let n = match seen.iter_mut().find(|(g, _)| *g == c.group) {
                Some((_, n)) => n,
                None => {
                    seen.push((c.group, 0));
                    &mut seen.last_mut().unwrap().1
                }
            };
            *n += 1;
            if (*n - 1) % TUNED_STRIDE == 0 {
                kept.push(c);
            }
        }
        let env = [
            ("EMU_DEFINES", t.all_defines()),
            ("EMU_ARCHS", "800".to_string()),
        ];
        emulate_and_judge(name, &kept, &env, &["== sm_80"]);
    }
}
