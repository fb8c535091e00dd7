//! The kernels by name: one enum of kernel families, each with the dtypes it is instantiated
//! for, gives every `extern "C"` entry name as a `&'static str` (no `format!`, no search) and
//! the unit NVRTC compiles it in. The table below is the only list of kernels on the host; a
//! test reads `kernels/*.cu` and checks that it names exactly the entries the sources define,
//! unit by unit.

use crate::dtype::DType;

use super::nvrtc::{ModuleSource, MODULES};

/// `dt!(f32)` → `DType::F32`, for the table's lowercase dtype names.
macro_rules! dt {
    (f32) => {
        DType::F32
    };
    (f16) => {
        DType::F16
    };
    (bf16) => {
        DType::BF16
    };
    (u8) => {
        DType::U8
    };
}

/// Defines [`Kernel`] from the table: each family's entry prefix, source module and dtypes.
/// `suffixed` entries are named `<prefix>_<dtype>` (one per dtype); `bare` ones have no dtype in
/// their name and are compiled into every naive unit.
macro_rules! kernels {
    (
        suffixed { $($k:ident = $p:literal in $m:literal for [$($d:ident),+];)+ }
        bare { $($bk:ident = $bp:literal in $bm:literal for [$($bd:ident),+];)+ }
    ) => {
        /// A kernel family: one `extern "C"` entry per dtype it supports.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Kernel {
            $(
                #[doc = concat!("`", $p, "_<dtype>` in kernels/", $m, ".cu")]
                $k,
            )+
            $(
                #[doc = concat!("`", $bp, "` in kernels/", $bm, ".cu")]
                $bk,
            )+
        }

        impl Kernel {
            /// Every family, in declaration order (`Kernel::ALL[k as usize] == k`).
            pub const ALL: &'static [Kernel] = &[$(Kernel::$k,)+ $(Kernel::$bk,)+];

            /// The entry name of this family for `dtype`, or `None` if the family has no
            /// `dtype` instance.
            pub const fn name(self, dtype: DType) -> Option<&'static str> {
                match (self, dtype) {
                    $($( (Kernel::$k, dt!($d)) => Some(concat!($p, "_", stringify!($d))), )+)+
                    $($( (Kernel::$bk, dt!($bd)) => Some($bp), )+)+
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }

            /// The family's name without the dtype (`ce_warp`).
            pub const fn prefix(self) -> &'static str {
                match self {
                    $(Kernel::$k => $p,)+
                    $(Kernel::$bk => $bp,)+
                }
            }

            /// The module (`kernels/<module>.cu`) that defines it.
            pub const fn module_name(self) -> &'static str {
                match self {
                    $(Kernel::$k => $m,)+
                    $(Kernel::$bk => $bm,)+
                }
            }
        }
    };
}

kernels! {
    suffixed {
        MixGather = "mix_gather" in "mix" for [f32, f16, bf16, u8];
        MixPairs = "mix_pairs" in "mix" for [f32, f16, bf16, u8];
        SoftTargets = "soft_targets" in "soft_targets" for [f32, f16, bf16];
        CeWarp = "ce_warp" in "mixup_ce" for [f32, f16, bf16];
        CeBlock = "ce_block" in "mixup_ce" for [f32, f16, bf16];
        CeOnline = "ce_online" in "mixup_ce" for [f32, f16, bf16];
        BceWarp = "bce_warp" in "mixup_bce" for [f32, f16, bf16];
        BceBlock = "bce_block" in "mixup_bce" for [f32, f16, bf16];
        NaiveGather = "naive_gather" in "naive" for [f32, f16, bf16, u8];
        NaiveLerp = "naive_lerp" in "naive" for [f32, f16, bf16, u8];
        NaivePaste = "naive_paste" in "naive" for [f32, f16, bf16, u8];
        NaiveBlend = "naive_blend" in "naive" for [f32, f16, bf16];
        NaiveLogSoftmax = "naive_log_softmax" in "naive" for [f32, f16, bf16];
        NaiveGrad = "naive_grad" in "naive" for [f32, f16, bf16];
    }
    bare {
        NaiveOneHot = "naive_one_hot" in "naive" for [f32, f16, bf16, u8];
        NaiveRowLoss = "naive_row_loss" in "naive" for [f32, f16, bf16, u8];
        NaiveReduce = "naive_reduce" in "naive" for [f32, f16, bf16, u8];
    }
}

/// Number of kernel families.
pub const KERNELS: usize = Kernel::ALL.len();

const DTYPES: [DType; 4] = [DType::F32, DType::F16, DType::BF16, DType::U8];

impl Kernel {
    /// Whether this is an unfused baseline (`kernels/naive.cu`).
    pub const fn is_naive(self) -> bool {
        matches!(self.module_name().as_bytes(), b"naive")
    }
}

/// One NVRTC compilation: a fused kernel for one dtype (compiled alone, so a first call compiles
/// only what it runs), or all naive kernels of one dtype together. The sources guard each unit
/// with `#if MIXUP_ALL || MIXUP_ONLY_<unit name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// One fused entry.
    Entry(Kernel, DType),
    /// The naive kernels of a dtype.
    Naive(DType),
}

/// Number of units: every (fused family, dtype) plus one naive unit per dtype.
const UNITS: usize = {
    let mut n = 0;
    let mut k = 0;
    while k < KERNELS {
        let mut d = 0;
        while d < DTYPES.len() {
            if !Kernel::ALL[k].is_naive() && Kernel::ALL[k].name(DTYPES[d]).is_some() {
                n += 1;
            }
            d += 1;
        }
        k += 1;
    }
    n + DTYPES.len()
};

impl Unit {
    /// Every unit: the fused ones by family, then the naive ones.
    pub const ALL: [Unit; UNITS] = {
        let mut all = [Unit::Naive(DType::F32); UNITS];
        let mut n = 0;
        let mut k = 0;
        while k < KERNELS {
            let mut d = 0;
            while d < DTYPES.len() {
                let kernel = Kernel::ALL[k];
                if !kernel.is_naive() && kernel.name(DTYPES[d]).is_some() {
                    all[n] = Unit::Entry(kernel, DTYPES[d]);
                    n += 1;
                }
                d += 1;
            }
            k += 1;
        }
        let mut d = 0;
        while d < DTYPES.len() {
            all[n] = Unit::Naive(DTYPES[d]);
            n += 1;
            d += 1;
        }
        all
    };

    /// The unit that holds `kernel` for `dtype`.
    pub const fn of(kernel: Kernel, dtype: DType) -> Unit {
        if kernel.is_naive() {
            Unit::Naive(dtype)
        } else {
            Unit::Entry(kernel, dtype)
        }
    }

    /// The unit's name: its entry's name, or `naive_<dtype>` (`MIXUP_ONLY_<name>` selects it).
    pub const fn name(self) -> &'static str {
        match self {
            Unit::Entry(k, d) => match k.name(d) {
                Some(n) => n,
                None => "invalid_unit",
            },
            Unit::Naive(DType::F32) => "naive_f32",
            Unit::Naive(DType::F16) => "naive_f16",
            Unit::Naive(DType::BF16) => "naive_bf16",
            Unit::Naive(DType::U8) => "naive_u8",
        }
    }

    /// The dtype it is compiled for.
    pub const fn dtype(self) -> DType {
        match self {
            Unit::Entry(_, d) | Unit::Naive(d) => d,
        }
    }

    /// The source module that defines it.
    pub fn module(self) -> &'static ModuleSource {
        let name = match self {
            Unit::Entry(k, _) => k.module_name(),
            Unit::Naive(_) => "naive",
        };
        match MODULES.iter().find(|m| m.name == name) {
            Some(m) => m,
            None => unreachable!("build.rs embeds every kernels/<module>.cu"),
        }
    }

    /// The kernels the unit defines, with their entry names.
    pub fn entries(self) -> impl Iterator<Item = (Kernel, &'static str)> {
        Kernel::ALL.iter().filter_map(move |&k| {
            let name = k.name(self.dtype())?;
            (Unit::of(k, self.dtype()) == self).then_some((k, name))
        })
    }
}

/// Every unit's name, in [`Unit::ALL`]'s order.
pub const UNIT_NAMES: [&str; UNITS] = {
    let mut names = [""; UNITS];
    let mut i = 0;
    while i < UNITS {
        names[i] = Unit::ALL[i].name();
        i += 1;
    }
    names
};

/// The unit named `name`, for tools that hold names (tests/kernels_compile.rs).
pub fn unit_named(name: &str) -> Option<Unit> {
    Unit::ALL.iter().copied().find(|u| u.name() == name)
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
            if let Some((name, args)) = t.split_once('(') {
                if let (Some(prefixes), Some(dt)) = (
                    macros.get(name.trim()),
                    args.trim_end_matches(')').split(',').nth(1),
                ) {
                    for p in prefixes {
                        found.insert(p.replace("##dt", dt.trim()));
                    }
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
    fn every_entry_name_is_defined_in_its_units_block_and_nothing_else() {
        let mut seen_units = BTreeSet::new();
        for m in MODULES {
            let blocks = entries_in_source(m.source);
            let everywhere = blocks.get("").cloned().unwrap_or_default();
            for (unit_name, defined) in blocks.iter().filter(|(u, _)| !u.is_empty()) {
                let unit = unit_named(unit_name)
                    .unwrap_or_else(|| panic!("{}.cu guards `{unit_name}`, no such unit", m.name));
                assert_eq!(unit.module().name, m.name, "{unit_name}");
                let want: BTreeSet<String> = unit.entries().map(|(_, n)| n.to_string()).collect();
                let got: BTreeSet<String> = defined.union(&everywhere).cloned().collect();
                assert_eq!(got, want, "entries of unit `{unit_name}` in {}.cu", m.name);
                seen_units.insert(unit_name.clone());
            }
        }
        let all: BTreeSet<String> = UNIT_NAMES.iter().map(|s| s.to_string()).collect();
        assert_eq!(seen_units, all, "units without a guarded block in kernels/");
    }

    #[test]
    fn names_are_static_and_consistent() {
        assert_eq!(Kernel::CeBlock.name(DType::F16), Some("ce_block_f16"));
        assert_eq!(Kernel::SoftTargets.name(DType::U8), None);
        assert_eq!(Kernel::NaiveReduce.name(DType::U8), Some("naive_reduce"));
        for (i, k) in Kernel::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
        assert_eq!(Unit::ALL.len(), 30);
        assert_eq!(UNIT_NAMES[0], "mix_gather_f32");
        assert_eq!(UNIT_NAMES[UNITS - 1], "naive_u8");
        let units: BTreeSet<&str> = UNIT_NAMES.iter().copied().collect();
        assert_eq!(units.len(), UNITS, "unit names are unique");
        for u in Unit::ALL {
            assert!(u.entries().count() > 0, "{u:?}");
            for (k, name) in u.entries() {
                assert_eq!(Unit::of(k, u.dtype()), u);
                assert!(name.starts_with(k.prefix()), "{name}");
            }
        }
        assert_eq!(Unit::Naive(DType::U8).entries().count(), 6);
        assert_eq!(Unit::Naive(DType::F16).entries().count(), 9);
        assert_eq!(
            unit_named("ce_online_bf16"),
            Some(Unit::Entry(Kernel::CeOnline, DType::BF16))
        );
        assert_eq!(unit_named("nothing"), None);
    }
}
