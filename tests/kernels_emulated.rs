//! Runs the mix and soft-target kernels on the CPU (scripts/emulate.sh: every CUDA thread in
//! turn, under AddressSanitizer, 16-byte accesses checked for alignment) against independently
//! written expected results. Needs a C++17 compiler with `_Float16` (g++ >= 12); without one it
//! prints SKIPPED and passes.
use std::process::Command;

#[test]
fn mix_and_soft_target_kernels_run_correctly_on_the_host() {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    if Command::new(&cxx).arg("--version").output().is_err() {
        println!("SKIPPED: no C++ compiler ({cxx}) for the kernel emulation");
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg(format!("{root}/scripts/emulate.sh"))
        .output()
        .expect("bash runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kernel emulation failed:\n{text}");
    assert!(text.contains(" passed, 0 failed"), "{text}");
}
