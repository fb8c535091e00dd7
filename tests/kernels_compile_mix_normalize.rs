//! kernels/mix_normalize.cu through NVRTC: every entry for sm_75, sm_80, sm_89 and sm_90 (the
//! inline PTX assembled by NVRTC's ptxas, so the sm_80 bf16 conversion on sm_75 would fail
//! here), no spills on sm_90, and each `MIXUP_ONLY_<entry>` unit defining exactly its entry.
//! No GPU needed. NVRTC: `export LD_LIBRARY_PATH=$(bash scripts/nvrtc.sh)`; without it the
//! tests print SKIPPED and pass, unless `MIXUP_REQUIRE_NVRTC=1` (CI).
//!
//! The module is built here from the sources as build.rs builds the others (common.cuh, a
//! `#line`, the module); it joins build.rs's module table with its host launch.
#![cfg(feature = "cuda")]

use mixup_kernels::cuda::kernels::{
    ModuleSource, Target, compile, defines_entry, options, version,
};
use std::io::Write;

static MODULE: ModuleSource = ModuleSource {
    name: "mix_normalize",
    source: concat!(
        include_str!("../kernels/common.cuh"),
        "\n#line 1 \"mix_normalize.cu\"\n",
        include_str!("../kernels/mix_normalize.cu")
    ),
    hash: 0,
};

const TYPES_IN: [&str; 4] = ["u8", "f32", "f16", "bf16"];
const TYPES_OUT: [&str; 3] = ["f32", "f16", "bf16"];

fn entries() -> Vec<String> {
    TYPES_IN
        .iter()
        .flat_map(|i| {
            TYPES_OUT
                .iter()
                .map(move |o| format!("mix_normalize_{i}_{o}"))
        })
        .collect()
}

fn nvrtc_present() -> bool {
    match version() {
        Ok(_) => true,
        Err(e) => {
            if std::env::var("MIXUP_REQUIRE_NVRTC").as_deref() == Ok("1") {
                panic!("MIXUP_REQUIRE_NVRTC=1 but NVRTC is not usable: {e}");
            }
            let _ = writeln!(std::io::stderr(), "SKIPPED: NVRTC not found ({e})");
            false
        }
    }
}

#[test]
fn every_entry_compiles_for_every_arch_without_spills() {
    if !nvrtc_present() {
        return;
    }
    let mut failures = Vec::new();
    for arch in [75, 80, 89, 90] {
        let opts = options(
            Target::Sm(arch),
            "MIXUP_ALL",
            &["--ptxas-options=-v".to_string()],
        );
        match compile(&MODULE, "mix_normalize", Target::Sm(arch), &opts) {
            Err(e) => failures.push(format!("sm_{arch}: {e}")),
            Ok(c) => {
                for e in entries() {
                    if !defines_entry(&c.image, &e) {
                        failures.push(format!("sm_{arch} lacks `{e}`"));
                    }
                }
                if c.log.contains("bytes spill stores") {
                    for line in c.log.lines().filter(|l| l.contains("spill stores")) {
                        if !line.contains(" 0 bytes spill stores") {
                            failures.push(format!("sm_{arch}: {line}"));
                        }
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn each_unit_defines_only_its_entry() {
    if !nvrtc_present() {
        return;
    }
    let all = entries();
    for unit in &all {
        let opts = options(Target::Sm(80), &format!("MIXUP_ONLY_{unit}"), &[]);
        let c = compile(&MODULE, unit, Target::Sm(80), &opts).unwrap();
        for e in &all {
            assert_eq!(
                defines_entry(&c.image, e),
                e == unit,
                "unit {unit}, entry {e}"
            );
        }
    }
}
