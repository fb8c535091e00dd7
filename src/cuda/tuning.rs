//! [`KernelTuning`]: every tuning knob of the CUDA kernels in one place. The host's launch code
//! reads it (threads per block, work per item, strategy thresholds, grid cap) and the kernels
//! get the same values as NVRTC defines (`-DMIX_NT=256`, ...; each `.cu` file keeps today's
//! value under `#ifndef`), so the two cannot disagree. The defines are part of the NVRTC
//! options, hence of the disk cache key: each tuning compiles (once) to its own cached files.

use crate::error::{MixError, Result};

/// Largest grid the kernels are launched with; they loop over the remaining work.
pub(crate) const MAX_GRID: u64 = (1 << 31) - 1;

/// The kernels' tuning knobs, as CUDA people name them. [`Default`] is the tuning the crate
/// ships (the values the kernels were written with); the GPU benchmark's sweep
/// (`bench-gpu --sweep`, docs/gpu.md) times a small grid of others.
///
/// Set it through [`CudaMixerOptions::tuning`](super::CudaMixerOptions::tuning);
/// [`CudaMixer::with_options`](super::CudaMixer::with_options) checks it
/// ([`validate`](Self::validate)). Each kernel is compiled once per mixer with these values
/// (nothing is recompiled or allocated per launch).
///
/// # Examples
///
/// ```
/// use mixup_kernels::cuda::KernelTuning;
/// let t = KernelTuning { mix_threads: 512, mix_unroll: 2, grid_sm_multiple: 8, ..Default::default() };
/// t.validate()?;
/// assert!(t.defines("mix").contains(&"-DMIX_NT=512".to_string()));
/// let bad = KernelTuning { ce_warp_threads: 100, ..Default::default() };
/// let e = bad.validate().unwrap_err();
/// assert!(e.to_string().contains("ce_warp_threads"), "{e}");
/// # Ok::<(), mixup_kernels::MixError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KernelTuning {
    /// Threads per block of `mix_gather` / `mix_pairs` (`MIX_NT`): a multiple of 32, at most
    /// 1024. Default 256.
    pub mix_threads: u32,
    /// 16-byte slots each mix thread loads per work item (`MIX_UNROLL`; a work item is
    /// `mix_threads × mix_unroll` slots of one row): 1 to 16. Default 4.
    pub mix_unroll: u32,
    /// CutMix: decide a 16-byte slot inside or outside the box from its first and last pixel
    /// (one test per slot) and walk its elements only when it straddles a vertical edge of the
    /// box (`MIX_BOX_HOIST=1`); `false` walks every element of every CutMix slot. Default false.
    pub mix_box_hoist: bool,
    /// Threads per block of `soft_targets` (`SOFT_NT`): a multiple of 32, at most 1024.
    /// Default 256.
    pub soft_threads: u32,
    /// 16-byte slots each soft-target thread writes per work item (`SOFT_UNROLL`): 1 to 16.
    /// Default 4.
    pub soft_unroll: u32,
    /// Threads per block of `ce_warp` (`CE_WARP_NT`); a block holds `ce_warp_threads / G` rows
    /// of G lanes each (the rows per warp group): a multiple of 32, at most 1024. Default 256.
    pub ce_warp_threads: u32,
    /// 16-byte register slots per thread of `ce_warp` and `ce_block` (`CE_K`): 1 to 8. A row of
    /// `32 × ce_slots` slots fits a warp; `1024 × ce_slots` a block. Default 4.
    pub ce_slots: u32,
    /// 16-byte slots each `ce_online` thread loads per step (`CE_ONLINE_U`): 1 to 16. Default 4.
    pub ce_online_unroll: u32,
    /// Largest block of `ce_block` and `ce_online` (`CE_BLOCK_NT`, also their
    /// `__launch_bounds__`): a multiple of 32, 64 to 1024. Default 1024.
    pub ce_block_max_threads: u32,
    /// CE strategy threshold: rows of at most this many bytes (C × element size) run
    /// `ce_warp`; a multiple of 16, at most `32 × ce_slots × 16`. Default 2048 (C ≤ 512 f32).
    pub ce_warp_max_row_bytes: u32,
    /// CE strategy threshold: rows larger than this many bytes run `ce_online` (two reads)
    /// even where `ce_block` (registers, then shared memory) could hold them; `u64::MAX`: as
    /// far as the device's shared memory allows. Default `u64::MAX`.
    pub ce_block_max_row_bytes: u64,
    /// Threads per block of `bce_warp` (`BCE_NT`; `bce_warp_threads / G` rows per block): a
    /// multiple of 32, at most 1024. Default 256.
    pub bce_warp_threads: u32,
    /// Largest block of `bce_block` (`BCE_BLOCK_NT`, its `__launch_bounds__`): a multiple of
    /// 32, 64 to 1024. Default 1024.
    pub bce_block_max_threads: u32,
    /// 16-byte slots per thread the host sizes BCE blocks (and the warp/block threshold:
    /// `32 × bce_slots` slots per row) for: 1 to 64. Default 4.
    pub bce_slots: u32,
    /// Threads per block of `mix_normalize` (`MN_NT`): a multiple of 32, at most 1024.
    /// Default 256.
    pub mn_threads: u32,
    /// f32 results per sample tile in shared memory (`MN_TILE`; two tiles per block, so
    /// `8 × mn_tile` bytes): 64 to 6144 (48 KiB of static shared memory). Default 4096.
    pub mn_tile: u32,
    /// Output elements per work item of the direct (untiled) `mix_normalize` launch
    /// (`MN_DIRECT`): at least 1. Default 2048.
    pub mn_direct: u32,
    /// Grid cap as a multiple of the SM count: every kernel is launched with at most
    /// `grid_sm_multiple × SMs` blocks and loops over the remaining work items (rows); 0: no
    /// cap (one block per work item up to 2^31 - 1). Default 0.
    pub grid_sm_multiple: u32,
}

impl Default for KernelTuning {
    fn default() -> Self {
        Self {
            mix_threads: 256,
            mix_unroll: 4,
            mix_box_hoist: false,
            soft_threads: 256,
            soft_unroll: 4,
            ce_warp_threads: 256,
            ce_slots: 4,
            ce_online_unroll: 4,
            ce_block_max_threads: 1024,
            ce_warp_max_row_bytes: 2048,
            ce_block_max_row_bytes: u64::MAX,
            bce_warp_threads: 256,
            bce_block_max_threads: 1024,
            bce_slots: 4,
            mn_threads: 256,
            mn_tile: 4096,
            mn_direct: 2048,
            grid_sm_multiple: 0,
        }
    }
}

fn invalid(what: &'static str, reason: String) -> MixError {
    MixError::InvalidArgument { what, reason }
}

/// A block size: a multiple of 32 in `min..=1024`.
fn check_threads(what: &'static str, v: u32, min: u32) -> Result<()> {
    if !v.is_multiple_of(32) || !(min..=1024).contains(&v) {
        return Err(invalid(
            what,
            format!(
                "{v} threads per block: must be a multiple of 32 (whole warps) from {min} to 1024"
            ),
        ));
    }
    Ok(())
}

fn check_range(what: &'static str, v: u64, lo: u64, hi: u64) -> Result<()> {
    if !(lo..=hi).contains(&v) {
        return Err(invalid(what, format!("{v}: must be from {lo} to {hi}")));
    }
    Ok(())
}

impl KernelTuning {
    /// Checks every knob against what the kernels assume (whole warps, register arrays of a
    /// sane size, shared memory within the static limit, thresholds the kernels can hold).
    ///
    /// # Errors
    /// [`MixError::InvalidArgument`] whose `what` names the first field out of range, and why.
    pub fn validate(&self) -> Result<()> {
        check_threads("mix_threads", self.mix_threads, 32)?;
        check_range("mix_unroll", self.mix_unroll.into(), 1, 16)?;
        check_threads("soft_threads", self.soft_threads, 32)?;
        check_range("soft_unroll", self.soft_unroll.into(), 1, 16)?;
        check_threads("ce_warp_threads", self.ce_warp_threads, 32)?;
        check_range("ce_slots", self.ce_slots.into(), 1, 8)?;
        check_range("ce_online_unroll", self.ce_online_unroll.into(), 1, 16)?;
        check_threads("ce_block_max_threads", self.ce_block_max_threads, 64)?;
        let warp_max = 32 * 16 * self.ce_slots;
        if !self.ce_warp_max_row_bytes.is_multiple_of(16) || self.ce_warp_max_row_bytes > warp_max {
            return Err(invalid(
                "ce_warp_max_row_bytes",
                format!(
                    "{}: must be a multiple of 16 bytes and at most 32 lanes × ce_slots ({}) × 16 \
                     = {warp_max} (what a warp holds in registers)",
                    self.ce_warp_max_row_bytes, self.ce_slots
                ),
            ));
        }
        if self.ce_block_max_row_bytes < u64::from(self.ce_warp_max_row_bytes) {
            return Err(invalid(
                "ce_block_max_row_bytes",
                format!(
                    "{}: must be at least ce_warp_max_row_bytes ({})",
                    self.ce_block_max_row_bytes, self.ce_warp_max_row_bytes
                ),
            ));
        }
        check_threads("bce_warp_threads", self.bce_warp_threads, 32)?;
        check_threads("bce_block_max_threads", self.bce_block_max_threads, 64)?;
        check_range("bce_slots", self.bce_slots.into(), 1, 64)?;
        check_threads("mn_threads", self.mn_threads, 32)?;
        check_range("mn_tile", self.mn_tile.into(), 64, 6144)?;
        check_range("mn_direct", self.mn_direct.into(), 1, 1 << 24)?;
        check_range("grid_sm_multiple", self.grid_sm_multiple.into(), 0, 1 << 16)?;
        Ok(())
    }

    /// The NVRTC defines of module `module` (`"mix"`, `"soft_targets"`, `"mixup_ce"`,
    /// `"mixup_bce"`, `"mix_normalize"`; none for another name), as `-DNAME=value` options.
    /// Only a module's own knobs, so retuning one kernel family leaves the others' cached
    /// images valid.
    pub fn defines(&self, module: &str) -> Vec<String> {
        let d = |name: &str, v: u64| format!("-D{name}={v}");
        match module {
            "mix" => vec![
                d("MIX_NT", self.mix_threads.into()),
                d("MIX_UNROLL", self.mix_unroll.into()),
                d("MIX_BOX_HOIST", self.mix_box_hoist.into()),
            ],
            "soft_targets" => vec![
                d("SOFT_NT", self.soft_threads.into()),
                d("SOFT_UNROLL", self.soft_unroll.into()),
            ],
            "mixup_ce" => vec![
                d("CE_WARP_NT", self.ce_warp_threads.into()),
                d("CE_K", self.ce_slots.into()),
                d("CE_ONLINE_U", self.ce_online_unroll.into()),
                d("CE_BLOCK_NT", self.ce_block_max_threads.into()),
            ],
            "mixup_bce" => vec![
                d("BCE_NT", self.bce_warp_threads.into()),
                d("BCE_BLOCK_NT", self.bce_block_max_threads.into()),
            ],
            "mix_normalize" => vec![
                d("MN_NT", self.mn_threads.into()),
                d("MN_TILE", self.mn_tile.into()),
                d("MN_DIRECT", self.mn_direct.into()),
            ],
            _ => Vec::new(),
        }
    }

    /// Every module's defines, space-separated (what the host emulation compiles the kernels
    /// with, `EMU_DEFINES`).
    pub fn all_defines(&self) -> String {
        [
            "mix",
            "soft_targets",
            "mixup_ce",
            "mixup_bce",
            "mix_normalize",
        ]
        .iter()
        .flat_map(|m| self.defines(m))
        .collect::<Vec<_>>()
        .join(" ")
    }

    /// The grid for `blocks` blocks of work on a device of `sms` SMs: at least 1, at most
    /// `grid_sm_multiple × sms` (when set) and 2^31 - 1.
    pub(crate) fn grid(&self, blocks: u64, sms: u32) -> u32 {
        let cap = match self.grid_sm_multiple {
            0 => MAX_GRID,
            k => (u64::from(k) * u64::from(sms.max(1))).min(MAX_GRID),
        };
        blocks.clamp(1, cap) as u32
    }
}

/// What a launch's shape depends on besides the call: the tuning and the device.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LaunchEnv<'a> {
    pub tuning: &'a KernelTuning,
    /// Streaming multiprocessors (the grid cap's unit).
    pub sms: u32,
    /// `CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN` (CE's shared-memory strategy).
    pub smem_optin: u32,
}

/// Checks the user's extra NVRTC options (`CudaMixerOptions::nvrtc_options`): none may define
/// or undefine a macro the crate sets itself, a tuning define (`MIX_NT`, `CE_K`, ...: the
/// launches read the same value from the tuning, so another value would desynchronize kernel
/// and launch) or a unit selector (`MIXUP_ONLY_*`, `MIXUP_ALL`). Forms: `-DNAME`, `-DNAME=v`,
/// `-UNAME`, `--define-macro=NAME...`, `--undefine-macro=NAME`, and the name as the next
/// argument (`-D`, `NAME`) or after a space (`-D NAME`). Nor may one change how float
/// arithmetic rounds (`--use_fast_math`, `--ftz=true`, `--prec-div=false`,
/// `--prec-sqrt=false`, with one dash or two, the value after `=` or as the next argument):
/// the kernels' results are checked against the CPU path and the reference with that
/// arithmetic, some bit for bit. `--fmad` in any form is the crate's: it always gives
/// `--fmad=false`, which a later `--fmad=true` would override (NVRTC 13.0 takes the last value,
/// with a warning).
///
/// # Errors
/// [`MixError::InvalidArgument`] naming `nvrtc_options`, the option and the macro or the
/// arithmetic it changes.
pub(crate) fn check_nvrtc_options(user: &[String]) -> Result<()> {
    for (i, opt) in user.iter().enumerate() {
        let o = opt.trim();
        let bare = o
            .strip_prefix("--")
            .or_else(|| o.strip_prefix('-'))
            .unwrap_or("");
        let (name, value) = match bare.split_once('=') {
            Some((n, v)) => (n, v.trim().to_ascii_lowercase()),
            // `--ftz true`: the value as the next argument.
            None => (
                bare,
                user.get(i + 1)
                    .map_or(String::new(), |v| v.trim().to_ascii_lowercase()),
            ),
        };
        if name == "fmad" {
            return Err(invalid(
                "nvrtc_options",
                format!(
                    "`{opt}`: the crate compiles with `--fmad=false` itself (no contracted \
                     multiply-adds, as in the host emulation that checks the kernels' bits)"
                ),
            ));
        }
        // NVRTC's booleans: `true`/`false`, or `1`/`0`.
        let off = value == "false" || value == "0";
        let loosened = match name {
            "use_fast_math" => Some("fast math"),
            "ftz" if !off => Some("flushed subnormals"),
            "prec-div" | "prec-sqrt" if off => Some("approximate division or sqrt"),
            _ => None,
        };
        if let Some(what) = loosened {
            return Err(invalid(
                "nvrtc_options",
                format!(
                    "`{opt}` changes how the kernels' float arithmetic rounds ({what}): their \
                     results are checked against the CPU path with IEEE rounding, some bit for \
                     bit"
                ),
            ));
        }
    }
    let all = KernelTuning::default().all_defines();
    let tuned: Vec<&str> = all
        .split(' ')
        .filter_map(|d| d.strip_prefix("-D"))
        .map(|d| d.split('=').next().unwrap_or(d))
        .collect();
    for (i, opt) in user.iter().enumerate() {
        let o = opt.trim();
        let Some(rest) = ["--define-macro", "--undefine-macro", "-D", "-U"]
            .iter()
            .find_map(|p| o.strip_prefix(p))
        else {
            continue;
        };
        // `--define-macro=NAME`, `--define-macro NAME`, `-DNAME`, `-D NAME`, or `-D` `NAME`.
        let rest = rest.strip_prefix('=').unwrap_or(rest).trim();
        let text = if rest.is_empty() {
            user.get(i + 1).map_or("", |s| s.trim())
        } else {
            rest
        };
        let name = text
            .split(|c: char| c == '=' || c == '(' || c.is_whitespace())
            .next()
            .unwrap_or("");
        if tuned.contains(&name) || name.starts_with("MIXUP_ONLY_") || name == "MIXUP_ALL" {
            return Err(invalid(
                "nvrtc_options",
                format!(
                    "`{opt}` sets `{name}`, a macro the crate defines itself (tuning defines \
                     and unit selectors): set kernel knobs with `CudaMixerOptions::tuning`, \
                     which the launches read too"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_matches_the_kernels_fallbacks() {
        let t = KernelTuning::default();
        t.validate().unwrap();
        // Each `-DNAME=value` of the default equals the `#define NAME value` under `#ifndef
        // NAME` in the module's source, so a build without the defines runs the same kernels.
        for m in super::super::nvrtc::MODULES {
            for def in t.defines(m.name) {
                let (name, value) = def[2..].split_once('=').unwrap();
                let fallback = format!("#ifndef {name}\n#define {name} {value}\n#endif");
                assert!(
                    m.source.contains(&fallback),
                    "{}.cu lacks `{fallback}`",
                    m.name
                );
            }
        }
        assert_eq!(t.all_defines().split(' ').count(), 14);
        assert!(t.defines("common").is_empty());
    }

    #[test]
    fn invalid_knobs_are_named() {
        let d = KernelTuning::default();
        let cases: Vec<(KernelTuning, &str)> = vec![
            (
                KernelTuning {
                    mix_threads: 0,
                    ..d
                },
                "mix_threads",
            ),
            (
                KernelTuning {
                    mix_threads: 100,
                    ..d
                },
                "mix_threads",
            ),
            (
                KernelTuning {
                    mix_threads: 2048,
                    ..d
                },
                "mix_threads",
            ),
            (KernelTuning { mix_unroll: 0, ..d }, "mix_unroll"),
            (
                KernelTuning {
                    soft_threads: 48,
                    ..d
                },
                "soft_threads",
            ),
            (
                KernelTuning {
                    soft_unroll: 17,
                    ..d
                },
                "soft_unroll",
            ),
            (
                KernelTuning {
                    ce_warp_threads: 16,
                    ..d
                },
                "ce_warp_threads",
            ),
            (KernelTuning { ce_slots: 0, ..d }, "ce_slots"),
            (
                KernelTuning {
                    ce_online_unroll: 0,
                    ..d
                },
                "ce_online_unroll",
            ),
            (
                KernelTuning {
                    ce_block_max_threads: 32,
                    ..d
                },
                "ce_block_max_threads",
            ),
            (
                KernelTuning {
                    ce_warp_max_row_bytes: 100,
                    ..d
                },
                "ce_warp_max_row_bytes",
            ),
            // 2 slots per lane hold 1 KB per warp, not 2.
            (KernelTuning { ce_slots: 2, ..d }, "ce_warp_max_row_bytes"),
            (
                KernelTuning {
                    ce_block_max_row_bytes: 1024,
                    ..d
                },
                "ce_block_max_row_bytes",
            ),
            (
                KernelTuning {
                    bce_warp_threads: 1056,
                    ..d
                },
                "bce_warp_threads",
            ),
            (
                KernelTuning {
                    bce_block_max_threads: 33,
                    ..d
                },
                "bce_block_max_threads",
            ),
            (KernelTuning { bce_slots: 0, ..d }, "bce_slots"),
            (
                KernelTuning {
                    mn_threads: 31,
                    ..d
                },
                "mn_threads",
            ),
            (KernelTuning { mn_tile: 8192, ..d }, "mn_tile"),
            (KernelTuning { mn_direct: 0, ..d }, "mn_direct"),
            (
                KernelTuning {
                    grid_sm_multiple: 1 << 20,
                    ..d
                },
                "grid_sm_multiple",
            ),
        ];
        for (t, field) in cases {
            match t.validate() {
                Err(MixError::InvalidArgument { what, reason }) => {
                    assert_eq!(what, field, "{reason}")
                }
                other => panic!("{field}: {other:?}"),
            }
        }
        // Edges that are fine.
        for t in [
            KernelTuning {
                mix_threads: 32,
                mix_unroll: 1,
                ..d
            },
            KernelTuning {
                mix_threads: 1024,
                mix_unroll: 16,
                ..d
            },
            KernelTuning {
                ce_slots: 2,
                ce_warp_max_row_bytes: 1024,
                ..d
            },
            KernelTuning {
                ce_warp_max_row_bytes: 0,
                ce_block_max_row_bytes: 0,
                ..d
            },
            KernelTuning {
                mn_tile: 6144,
                mn_direct: 1,
                grid_sm_multiple: 1,
                ..d
            },
        ] {
            t.validate().unwrap();
        }
    }

    #[test]
    fn grid_cap_is_a_multiple_of_the_sms() {
        let d = KernelTuning::default();
        assert_eq!(d.grid(0, 132), 1);
        assert_eq!(d.grid(1 << 20, 132), 1 << 20);
        assert_eq!(d.grid(u64::MAX, 132), (1u32 << 31) - 1);
        let c = KernelTuning {
            grid_sm_multiple: 4,
            ..d
        };
        assert_eq!(c.grid(100, 132), 100);
        assert_eq!(c.grid(1 << 20, 132), 528);
        assert_eq!(c.grid(1 << 20, 0), 4);
    }

    #[test]
    fn defines_follow_the_fields() {
        let t = KernelTuning {
            mix_box_hoist: true,
            ce_slots: 2,
            ce_warp_max_row_bytes: 1024,
            mn_tile: 2048,
            ..Default::default()
        };
        assert!(t.defines("mix").contains(&"-DMIX_BOX_HOIST=1".into()));
        assert!(t.defines("mixup_ce").contains(&"-DCE_K=2".into()));
        assert!(
            t.defines("mix_normalize")
                .contains(&"-DMN_TILE=2048".into())
        );
        // Host-only knobs (thresholds, the grid cap) are not defines.
        assert!(!t.all_defines().contains("GRID"));
        assert_ne!(t.defines("mix"), KernelTuning::default().defines("mix"));
        assert_eq!(
            t.defines("mixup_bce"),
            KernelTuning::default().defines("mixup_bce")
        );
    }

    #[test]
    fn nvrtc_options_may_not_set_the_crates_macros() {
        let o = |v: &[&str]| -> Vec<String> { v.iter().map(|s| s.to_string()).collect() };
        // (options, accepted)
        let cases: [(&[&str], bool); 17] = [
            (&["-lineinfo"], true),
            (&["-DMY_DEBUG=1", "--ftz=false"], true),
            (&["-D", "MIX_NTX"], true),
            (&["--define-macro=MIXUP_ONLYX"], true),
            (&["-default-device"], true),
            (&[], true),
            (&["-DMIX_NT=512"], false),
            (&["-lineinfo", "-DCE_K"], false),
            (&["-D", "MN_TILE=64"], false),
            (&["-D MN_DIRECT=1"], false),
            (&["--define-macro=SOFT_NT=128"], false),
            (&["--define-macro", "BCE_NT=64"], false),
            (&["-UCE_ONLINE_U"], false),
            (&["--undefine-macro=MIX_BOX_HOIST"], false),
            (&["-DMIXUP_ONLY_mix_pairs_f32=1"], false),
            (&["-DMIXUP_ALL"], false),
            (&["-DCE_BLOCK_NT(x)=x"], false),
        ];
        for (opts, ok) in cases {
            match check_nvrtc_options(&o(opts)) {
                Ok(()) => assert!(ok, "{opts:?} accepted"),
                Err(e) => {
                    let e = e.to_string();
                    assert!(!ok, "{opts:?}: {e}");
                    assert!(e.contains("nvrtc_options"), "{opts:?}: {e}");
                    assert!(e.contains("CudaMixerOptions::tuning"), "{opts:?}: {e}");
                }
            }
        }
        // Every define of every module is covered.
        for d in KernelTuning::default().all_defines().split(' ') {
            assert!(check_nvrtc_options(&o(&[d])).is_err(), "{d}");
        }
    }

    #[test]
    fn nvrtc_options_may_not_loosen_the_arithmetic() {
        let o = |v: &[&str]| -> Vec<String> { v.iter().map(|s| s.to_string()).collect() };
        let loose: [&[&str]; 10] = [
            &["--prec-div=0"],
            &["--use_fast_math"],
            &["-use_fast_math"],
            &["--ftz=true"],
            &["-ftz"],
            &["--ftz", "true"],
            &["--prec-div=false"],
            &["-prec-sqrt=False"],
            &["--prec-div", "false"],
            &["-lineinfo", "--prec-sqrt= false"],
        ];
        for opts in loose {
            let e = check_nvrtc_options(&o(opts))
                .expect_err("refused")
                .to_string();
            assert!(
                e.contains("nvrtc_options") && e.contains("rounds"),
                "{opts:?}: {e}"
            );
        }
        // The crate's own option, in any form (NVRTC would take a later value over it).
        for opts in [&["--fmad=false"][..], &["-fmad=true"], &["--fmad", "false"]] {
            let e = check_nvrtc_options(&o(opts))
                .expect_err("refused")
                .to_string();
            assert!(e.contains("--fmad=false"), "{opts:?}: {e}");
        }
        let kept: [&[&str]; 6] = [
            &["--ftz=0"],
            &["--ftz=false"],
            &["-prec-div=true"],
            &["--ftz", "false"],
            &["-lineinfo"],
            &["--fmadx"],
        ];
        for opts in kept {
            assert!(check_nvrtc_options(&o(opts)).is_ok(), "{opts:?}");
        }
    }
}
