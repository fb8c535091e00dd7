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

fn emulate(root: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("bash")
        .arg(format!("{root}/scripts/emulate.sh"))
        .args(args)
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

#[test]
fn every_kernel_runs_correctly_on_the_host() {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    if Command::new(&cxx).arg("--version").output().is_err() {
        // Straight to stderr: libtest captures `println!` of a passing test.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: no C++ compiler ({cxx}) for the kernel emulation"
        );
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let t0 = Instant::now();
    let cases = cases();
    let dir = std::env::temp_dir().join(format!("mixup-kernels-emulated-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    let file = dir.join("cases.bin");
    exchange::write_cases(&file, &cases);
    let written = t0.elapsed();
    let args = [
        "--cases",
        file.to_str().expect("a UTF-8 temp path"),
        "--out",
        dir.to_str().expect("a UTF-8 temp path"),
    ];
    let (ok, text) = emulate(root, &args);
    let emulated = t0.elapsed();
    println!("{text}");
    assert!(ok, "kernel emulation failed:\n{text}");
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
    assert!(total.ends_with(" passed, 0 failed"), "{text}");
    for arch in ["== sm_75", "== sm_80", "== sm_90"] {
        assert!(text.contains(arch), "no run for {arch}:\n{text}");
    }
    assert!(archs.len() >= 2, "{text}");
    // Each arch's outputs, judged side by side.
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = archs
            .iter()
            .map(|a| {
                let path = dir.join(format!("sm{a}.bin"));
                let cases = &cases;
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
        for (g, c) in groups {
            println!(
                "sm_{}: {g:<6} {:>6} checks passed, {} failed",
                &arch[..arch.len() - 1],
                c.passed,
                c.failed
            );
            if c.failed > 0 {
                failed.push(format!(
                    "sm_{arch} {g}: {} failed:\n  {}",
                    c.failed,
                    c.shown.join("\n  ")
                ));
            }
        }
    }
    println!(
        "{} cases; written in {:.1} s, emulated by {:.1} s, judged by {:.1} s",
        cases.len(),
        written.as_secs_f64(),
        emulated.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
