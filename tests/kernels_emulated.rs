//! Runs every kernel of `kernels/*.cu` on the CPU (scripts/emulate.sh, kernels/emu): the threads
//! of a block as fibers, so barriers, warp shuffles, shared memory, `cp.async` and the
//! last-block-done loss reduction behave as on a GPU; under AddressSanitizer and UBSan, 16-byte
//! accesses checked for alignment; against independently computed expected values. The fused
//! cross-entropy kernels (and the binary cross-entropy ones) run with the launch configurations
//! this crate chooses (`ce_launch` / `bce_launch`, the functions the CUDA path launches with),
//! passed to the emulator in a file.
//!
//! The emulation is built and run once per device generation the kernels branch on
//! (`__CUDA_ARCH__` 750: T4; 800: A100; 900: H100/H200), so the sm_80+ paths (`cp.async`, the
//! bf16 and packed conversions) run too; an arch whose kernels preprocess to the same text as an
//! earlier one's (sm_90 = sm_80 today) is reported as covered by that run instead of run again.
//!
//! Needs a C++17 compiler with `_Float16` (g++ >= 12, clang >= 15; `CXX` picks it); without one
//! it prints SKIPPED and passes. About 1.5 minutes of CPU to build (cached after), then about
//! 55 s of CPU per arch run (two runs, side by side; the CE group about 40 s of it, the BCE
//! group 3 s).
//!
//! Built with the `cuda` feature only (the default set): the launches come from the crate's host
//! code, so the other feature sets would only run the same kernels again.
#![cfg(feature = "cuda")]

use std::io::Write;
use std::path::Path;
use std::process::Command;

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

/// The crate's launch for each query line `ce <classes> <elem_size> <smem_optin> <fwd> <batch>`
/// or `bce <classes> <elem_size> <batch>`, as the line the emulator reads back (see
/// kernels/emu/main.cpp).
fn launches(queries: &str) -> String {
    use mixup_kernels::cuda::kernels::{bce_launch, ce_launch};
    let mut out = String::new();
    for line in queries.lines().filter(|l| l.starts_with("bce ")) {
        let f: Vec<u64> = line[4..]
            .split_whitespace()
            .map(|v| v.parse().expect("a number"))
            .collect();
        assert_eq!(f.len(), 3, "query `{line}`");
        let (kernel, group, cfg) = bce_launch(f[0], f[1] as usize, f[2]);
        assert_eq!(cfg.shared_mem_bytes, 0);
        out += &format!(
            "{line} {kernel} {group} {} {}\n",
            cfg.grid_dim.0, cfg.block_dim.0
        );
    }
    for line in queries.lines().filter(|l| l.starts_with("ce ")) {
        let f: Vec<u64> = line[3..]
            .split_whitespace()
            .map(|v| v.parse().expect("a number"))
            .collect();
        assert_eq!(f.len(), 5, "query `{line}`");
        let (kernel, group, smem_slots, cfg) =
            ce_launch(f[0], f[1] as usize, f[2] as u32, f[3] != 0, f[4]);
        assert_eq!((cfg.grid_dim.1, cfg.grid_dim.2), (1, 1));
        assert_eq!((cfg.block_dim.1, cfg.block_dim.2), (1, 1));
        out += &format!(
            "{line} {kernel} {group} {smem_slots} {} {} {}\n",
            cfg.grid_dim.0, cfg.block_dim.0, cfg.shared_mem_bytes
        );
    }
    out
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
    let (ok, text) = emulate(root, &["--queries"]);
    assert!(ok, "building the kernel emulation failed:\n{text}");

    let table = launches(&text);
    assert!(table.lines().count() > 100, "too few launches:\n{table}");
    let path = std::env::temp_dir().join(format!(
        "mixup-kernels-ce-launches-{}.txt",
        std::process::id()
    ));
    std::fs::write(&path, &table).expect("writing the launch table");
    let args = ["--launches", path.to_str().expect("a UTF-8 temp path")];
    let (ok, text) = emulate(root, &args);
    if Path::new(&path).exists() {
        let _ = std::fs::remove_file(&path);
    }
    println!("{text}");
    assert!(ok, "kernel emulation failed:\n{text}");
    // The line after "total over __CUDA_ARCH__ ..." sums every arch's run.
    let mut lines = text
        .lines()
        .skip_while(|l| !l.starts_with("total over __CUDA_ARCH__"));
    let total = lines.nth(1).unwrap_or("");
    assert!(total.ends_with(" passed, 0 failed"), "{text}");
    for arch in ["== sm_75", "== sm_80", "== sm_90"] {
        assert!(text.contains(arch), "no run for {arch}:\n{text}");
    }
    assert!(text.contains(" from the crate"), "{text}");
    assert!(!text.contains("host_launch_mirror differs"), "{text}");
}
