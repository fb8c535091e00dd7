//! The kernels by name: one enum of kernel families, each with the dtypes it is instantiated
//! for, gives every `extern "C"` entry name as a `&'static str` (no `format!`, no search), its
//! source module and its slot in the mixer's table of loaded functions. The table below is the
//! only list of kernels on the host; a test reads `kernels/*.cu` and checks that it names
//! exactly the entries the sources define.
//!
//! Each entry is compiled alone (`-DMIXUP_ONLY_<entry>`; the sources guard each with
//! `#if MIXUP_ALL || MIXUP_ONLY_<entry>`), so a first call compiles only the kernel it runs:
//! one module's entries of a dtype compiled together take about the sum of their times, so
//! compiling per (module, dtype) would make a first call 2–3 times slower (`BENCHMARKS.md`,
//! "Measurements behind code choices").

use crate::dtype::ScalarType;

use super::nvrtc::{MODULES, ModuleSource};

/// `dt!(f32)` → `ScalarType::F32`, for the table's lowercase dtype names.
macro_rules! dt {
    (f32) => {
        ScalarType::F32
    };
    (f16) => {
        ScalarType::F16
    };
    (bf16) => {
        ScalarType::BF16
    };
    (u8) => {
        ScalarType::U8
    };
}

/// Defines [`Kernel`] from the table: each family's entry prefix, source module and dtypes.
/// Entries are named `<prefix>_<dtype>`. A kernel of two dtypes (`mix_normalize_<in>_<out>`)
/// is one family per input dtype, its slots the output dtypes.
macro_rules! kernels {
    ($($k:ident = $p:literal in $m:literal for [$($d:ident),+];)+) => {
        /// A kernel family: one `extern "C"` entry per dtype it supports.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Kernel {
            $(
                #[doc = concat!("`", $p, "_<dtype>` in kernels/", $m, ".cu")]
                $k,
            )+
        }

        impl Kernel {
            /// Every family, in declaration order (`Kernel::ALL[k as usize] == k`).
            pub const ALL: &'static [Kernel] = &[$(Kernel::$k,)+];

            /// The entry name of this family for `dtype`, or `None` if the family has no
            /// `dtype` instance.
            pub const fn name(self, dtype: ScalarType) -> Option<&'static str> {
                match (self, dtype) {
                    $($( (Kernel::$k, dt!($d)) => Some(concat!($p, "_", stringify!($d))), )+)+
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }

            /// The family's name without the dtype (`ce_warp`).
            pub const fn prefix(self) -> &'static str {
                match self {
                    $(Kernel::$k => $p,)+
                }
            }

            /// The name of the module (`kernels/<module>.cu`) that defines it.
            pub const fn module_name(self) -> &'static str {
                match self {
                    $(Kernel::$k => $m,)+
                }
            }
        }
    };
}

kernels! {
    MixGather = "mix_gather" in "mix" for [f32, f16, bf16, u8];
    MixPairs = "mix_pairs" in "mix" for [f32, f16, bf16, u8];
    SoftTargets = "soft_targets" in "soft_targets" for [f32, f16, bf16];
    CeWarp = "ce_warp" in "mixup_ce" for [f32, f16, bf16];
    CeBlock = "ce_block" in "mixup_ce" for [f32, f16, bf16];
    CeOnline = "ce_online" in "mixup_ce" for [f32, f16, bf16];
    BceWarp = "bce_warp" in "mixup_bce" for [f32, f16, bf16];
    BceBlock = "bce_block" in "mixup_bce" for [f32, f16, bf16];
    MixNormalizeU8 = "mix_normalize_u8" in "mix_normalize" for [f32, f16, bf16];
    MixNormalizeF32 = "mix_normalize_f32" in "mix_normalize" for [f32, f16, bf16];
    MixNormalizeF16 = "mix_normalize_f16" in "mix_normalize" for [f32, f16, bf16];
    MixNormalizeBf16 = "mix_normalize_bf16" in "mix_normalize" for [f32, f16, bf16];
}

/// Every dtype, in slot order.
pub const DTYPES: [ScalarType; 4] = [
    ScalarType::F32,
    ScalarType::F16,
    ScalarType::BF16,
    ScalarType::U8,
];

/// Slots of the mixer's function table: one per (kernel, dtype), used or not.
pub const SLOTS: usize = Kernel::ALL.len() * DTYPES.len();

impl Kernel {
    /// The module (`kernels/<module>.cu`, with the shared header) that defines it.
    pub fn module(self) -> &'static ModuleSource {
        match MODULES.iter().find(|m| m.name == self.module_name()) {
            Some(m) => m,
            None => unreachable!("build.rs embeds every kernels/<module>.cu"),
        }
    }

    /// Index of (`self`, `dtype`) in a table of [`SLOTS`].
    pub const fn slot(self, dtype: ScalarType) -> usize {
        let d = match dtype {
            ScalarType::F32 => 0,
            ScalarType::F16 => 1,
            ScalarType::BF16 => 2,
            ScalarType::U8 => 3,
        };
        self as usize * DTYPES.len() + d
    }
}

/// Every entry `(kernel, dtype, name)`, by family then dtype.
pub fn entries() -> impl Iterator<Item = (Kernel, ScalarType, &'static str)> {
    Kernel::ALL
        .iter()
        .flat_map(|&k| DTYPES.iter().filter_map(move |&d| Some((k, d, k.name(d)?))))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// The `extern "C"` entries each `#if MIXUP_ALL || MIXUP_ONLY_<unit>` block of a source
    /// defines (expanding the entry macros it invokes), and the entries outside any such block
    /// (compiled into every unit of the module) under the key "".
    fn entries_in_source(src: &str) -> BTreeMap<String, BTreeSet<String>> {
        // Join continued lines, as the preprocessor does.
        let joined = src.replace("\\\n", " ");
        // Entry macros: `#define NAME(E, dt) ... extern "C" ... prefix_##dt(`.
        let mut macros: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in joined.lines() {
            let Some(def) = line.trim_start().strip_prefix("#define ") else {
                continue;
            };
            let Some((name, _)) = def.split_once('(') else {
                continue;
            };
            let prefixes = entry_names(def);
            if !prefixes.is_empty() {
                macros.insert(name.trim().to_string(), prefixes);
            }
        }
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut unit = String::new();
        for line in joined.lines() {
            let t = line.trim();
            if let Some(rest) = t.strip_prefix("#if MIXUP_ALL || MIXUP_ONLY_") {
                unit = rest.trim().to_string();
                continue;
            }
            if t.starts_with("#endif") {
                unit.clear();
                continue;
            }
            if t.starts_with('#') || t.starts_with("//") {
                continue;
            }
            let found = out.entry(unit.clone()).or_default();
            // A direct definition.
            if t.contains("extern \"C\"") {
                found.extend(entry_names(t));
                continue;
            }
            // An entry macro invoked with (E, dt).
            if let Some((name, args)) = t.split_once('(')
                && let (Some(prefixes), Some(dt)) = (
                    macros.get(name.trim()),
                    args.trim_end_matches(')').split(',').nth(1),
                )
            {
                for p in prefixes {
                    found.insert(p.replace("##dt", dt.trim()));
                }
            }
        }
        out
    }

    /// Names defined by `extern "C" __global__ void [__launch_bounds__(..)] name(` in `text`.
    fn entry_names(text: &str) -> Vec<String> {
        let mut names = Vec::new();
        for part in text.split("extern \"C\"").skip(1) {
            let Some(after) = part.split_once(" void ").map(|(_, a)| a.trim_start()) else {
                continue;
            };
            let after = match after.strip_prefix("__launch_bounds__(") {
                Some(rest) => rest.split_once(')').map_or("", |(_, a)| a.trim_start()),
                None => after,
            };
            if let Some((name, _)) = after.split_once('(') {
                names.push(name.trim().to_string());
            }
        }
        names
    }

    #[test]
    fn every_entry_name_is_defined_in_its_own_block_and_nothing_else() {
        let mut seen = BTreeSet::new();
        for m in MODULES {
            let blocks = entries_in_source(m.source);
            let everywhere = blocks.get("").cloned().unwrap_or_default();
            assert!(
                everywhere.is_empty(),
                "{}.cu: unguarded {everywhere:?}",
                m.name
            );
            for (guard, defined) in blocks.iter().filter(|(u, _)| !u.is_empty()) {
                let (k, _, name) = entries()
                    .find(|e| e.2 == guard)
                    .unwrap_or_else(|| panic!("{}.cu guards `{guard}`, no such entry", m.name));
                assert_eq!(k.module_name(), m.name, "{guard}");
                let want: BTreeSet<String> = [name.to_string()].into();
                assert_eq!(
                    defined, &want,
                    "entries of block `{guard}` in {}.cu",
                    m.name
                );
                seen.insert(name);
            }
        }
        let all: BTreeSet<&str> = entries().map(|e| e.2).collect();
        assert_eq!(seen, all, "entries without a guarded block in kernels/");
    }

    #[test]
    fn names_are_static_and_consistent() {
        assert_eq!(Kernel::CeBlock.name(ScalarType::F16), Some("ce_block_f16"));
        assert_eq!(Kernel::SoftTargets.name(ScalarType::U8), None);
        for (i, k) in Kernel::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
        assert_eq!(entries().count(), 38);
        let names: BTreeSet<&str> = entries().map(|e| e.2).collect();
        assert_eq!(names.len(), 38, "entry names are unique");
        let slots: BTreeSet<usize> = entries().map(|(k, d, _)| k.slot(d)).collect();
        assert_eq!(slots.len(), 38, "slots are unique");
        assert!(slots.iter().all(|&s| s < SLOTS));
        for (k, d, name) in entries() {
            assert!(
                name.starts_with(k.prefix()) && name.ends_with(d.name()),
                "{name}"
            );
            assert_eq!(k.module().name, k.module_name());
        }
    }
}
