//! NVRTC through cudarc's `nvrtc::result` layer: compiles a kernel to CUBIN (or PTX when the
//! device is newer than this NVRTC knows), every failure a `Result` carrying NVRTC's result code.
//! Raw `sys` calls only for what that layer lacks: the CUBIN, the version and the supported
//! architectures. (cudarc's safe `compile_ptx` cannot produce a CUBIN.)

use std::ffi::{CString, c_char, c_int};

use cudarc::nvrtc::{result, sys};

use crate::error::{MixError, Result};

use super::context::{CudaError, nvrtc_err, require_nvrtc};

/// The kernel modules embedded by build.rs: `{ name, source, hash }`.
#[derive(Debug, Clone, Copy)]
pub struct ModuleSource {
    /// Module name (`kernels/<name>.cu`).
    pub name: &'static str,
    /// `kernels/common.cuh` + the module, as NVRTC compiles it.
    pub source: &'static str,
    /// FNV-1a 64 of `source` (part of the on-disk cache key).
    pub hash: u64,
}

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// What to compile for: a real architecture (CUBIN, assembled by NVRTC's ptxas, so inline PTX
/// is checked now and the driver does not JIT), or a virtual one (PTX, JIT-compiled by the
/// driver) for devices newer than this NVRTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// `sm_XY`: CUBIN.
    Sm(u32),
    /// `compute_XY`: PTX.
    Compute(u32),
}

impl Target {
    /// The `--gpu-architecture` value.
    pub fn arch(&self) -> String {
        match self {
            Target::Sm(a) => format!("sm_{a}"),
            Target::Compute(a) => format!("compute_{a}"),
        }
    }
}

/// A compiled unit: the image to load (`cubin` or NUL-terminated PTX) and NVRTC's log (with
/// ptxas's resource report when `--ptxas-options=-v` was given).
#[derive(Debug, Clone)]
pub struct Compiled {
    /// CUBIN, or PTX text with a trailing NUL.
    pub image: Vec<u8>,
    /// NVRTC's log (warnings, `-v` output).
    pub log: String,
}

/// NVRTC's version, `(major, minor)`.
pub fn version() -> Result<(i32, i32)> {
    require_nvrtc()?;
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: two valid out-pointers.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(nvrtc_err("asking NVRTC its version"))?;
    Ok((major, minor))
}

/// The real architectures this NVRTC can target, ascending (e.g. 75, 80, ..., 120).
pub fn supported_archs() -> Result<Vec<u32>> {
    require_nvrtc()?;
    let what = "asking NVRTC its architectures";
    let mut n: c_int = 0;
    // SAFETY: valid out-pointer; the second call writes exactly `n` ints.
    unsafe { sys::nvrtcGetNumSupportedArchs(&mut n) }
        .result()
        .map_err(nvrtc_err(what))?;
    let mut archs = vec![0 as c_int; n.max(0) as usize];
    unsafe { sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) }
        .result()
        .map_err(nvrtc_err(what))?;
    let mut archs: Vec<u32> = archs.into_iter().map(|a| a as u32).collect();
    archs.sort_unstable();
    Ok(archs)
}

/// Picks the target for a device of compute capability `cc` (e.g. 90): its own `sm_XY` when
/// NVRTC supports it, else PTX for the newest architecture below it.
pub fn target_for(cc: u32, supported: &[u32]) -> Result<Target> {
    if supported.contains(&cc) {
        return Ok(Target::Sm(cc));
    }
    match supported.iter().copied().filter(|&a| a <= cc).max() {
        Some(a) => Ok(Target::Compute(a)),
        None => Err(MixError::CudaUnavailable(format!(
            "the device is sm_{cc}, older than every architecture this NVRTC supports ({supported:?}); \
             NVRTC 13 needs sm_75 or newer"
        ))),
    }
}

/// The options every unit is compiled with (also part of the cache key).
pub fn options(target: Target, define: &str, extra: &[String]) -> Vec<String> {
    let mut o = vec![
        format!("--gpu-architecture={}", target.arch()),
        "--std=c++17".to_string(),
        // No built-in headers: ours need none, and parsing them costs every compilation.
        "--minimal".to_string(),
        // No contraction of a separate multiply and add into an FMA: every float expression
        // rounds as written, as in the host emulation (built with -ffp-contract=off), where the
        // kernels' bits are checked; the FMAs the kernels want are written as fmaf.
        "--fmad=false".to_string(),
        format!("-D{define}=1"),
    ];
    o.extend(extra.iter().cloned());
    o
}

/// RAII guard destroying an NVRTC program.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by `create_program` and is destroyed once. A failure
        // here leaks the program and is not actionable.
        let _ = unsafe { result::destroy_program(self.0) };
    }
}

/// NVRTC's characters (NUL-terminated) as bytes.
fn bytes(chars: Vec<c_char>) -> Vec<u8> {
    chars.into_iter().map(|c| c as u8).collect()
}

/// Compiles `module` with `options`. A source NVRTC rejects gives [`MixError::Compile`] with
/// the log and `unit` as the kernel name; its source is NVRTC's result code.
pub fn compile(
    module: &ModuleSource,
    unit: &str,
    target: Target,
    options: &[String],
) -> Result<Compiled> {
    require_nvrtc()?;
    let nul = |what: &str| MixError::InvalidArgument {
        what: "kernel source",
        reason: format!("{what} of `{}` contains a NUL byte", module.name),
    };
    let src = CString::new(module.source).map_err(|_| nul("the source"))?;
    let name = CString::new(format!("{}.cu", module.name)).map_err(|_| nul("the name"))?;
    // User options (`CudaMixerOptions::nvrtc_options`) may hold anything; `compile_program`
    // would panic on a NUL.
    if let Some(o) = options.iter().find(|o| o.contains('\0')) {
        return Err(MixError::InvalidArgument {
            what: "nvrtc_options",
            reason: format!("an NVRTC option contains a NUL byte: {o:?}"),
        });
    }
    // `src` and `name` outlive the program (declared before it, dropped after it).
    let prog = Program(
        result::create_program(&src, Some(&name))
            .map_err(nvrtc_err("creating an NVRTC program"))?,
    );
    // SAFETY: a live program; the options hold no NUL (checked above).
    let compiled = unsafe { result::compile_program(prog.0, options) };
    // SAFETY: a live program.
    let log = unsafe { result::get_program_log(prog.0) }.map_or_else(|_| Vec::new(), bytes);
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let log = String::from_utf8_lossy(&log[..end]).into_owned();
    if let Err(e) = compiled {
        return Err(MixError::Compile {
            module: unit.to_string(),
            log: format!("{:?} (options: {})\n{log}", e.0, options.join(" ")),
            source: CudaError::Nvrtc(e),
        });
    }
    let image = match target {
        Target::Sm(_) => {
            let what = "reading the CUBIN from NVRTC";
            let mut size = 0usize;
            // SAFETY: a compiled program; the buffer has the reported size. (`result` has no
            // CUBIN getter.)
            unsafe { sys::nvrtcGetCUBINSize(prog.0, &mut size) }
                .result()
                .map_err(nvrtc_err(what))?;
            let mut buf = vec![0u8; size];
            unsafe { sys::nvrtcGetCUBIN(prog.0, buf.as_mut_ptr() as *mut c_char) }
                .result()
                .map_err(nvrtc_err(what))?;
            buf
        }
        // SAFETY: a compiled program. The PTX keeps its NUL terminator, as the driver wants.
        Target::Compute(_) => bytes(
            unsafe { result::get_ptx(prog.0) }.map_err(nvrtc_err("reading the PTX from NVRTC"))?,
        ),
    };
    Ok(Compiled { image, log })
}

/// Whether a compiled image defines kernel `entry` (a CUBIN names each kernel's code section
/// `.text.<entry>`; PTX has `.entry <entry>(`).
pub fn defines_entry(image: &[u8], entry: &str) -> bool {
    let needles = [format!(".text.{entry}\0"), format!(".entry {entry}(")];
    needles
        .iter()
        .any(|n| image.windows(n.len()).any(|w| w == n.as_bytes()))
}

/// FNV-1a 64, for cache keys and checksums (the same function build.rs hashes sources with).
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_prefers_the_devices_own_arch() {
        let s = [75, 80, 86, 89, 90, 100, 120];
        assert_eq!(target_for(90, &s).unwrap(), Target::Sm(90));
        assert_eq!(target_for(89, &s).unwrap().arch(), "sm_89");
        // A device newer than NVRTC: PTX for the newest known arch below it.
        assert_eq!(target_for(130, &s).unwrap(), Target::Compute(120));
        assert_eq!(target_for(87, &s).unwrap().arch(), "compute_86");
        assert!(matches!(
            target_for(70, &s),
            Err(MixError::CudaUnavailable(_))
        ));
    }

    #[test]
    fn options_carry_arch_and_unit() {
        let o = options(Target::Sm(90), "MIXUP_ONLY_mix_gather_f32", &[]);
        assert!(o.contains(&"--gpu-architecture=sm_90".to_string()));
        assert!(o.contains(&"-DMIXUP_ONLY_mix_gather_f32=1".to_string()));
        assert!(o.contains(&"--fmad=false".to_string()));
    }

    #[test]
    fn entries_are_found_in_images() {
        let cubin = b"\x7fELF....\0.text.mix_gather_f32\0.nv.info\0";
        assert!(defines_entry(cubin, "mix_gather_f32"));
        assert!(!defines_entry(cubin, "mix_gather_f3"));
        let ptx = b".visible .entry ce_warp_bf16(\n";
        assert!(defines_entry(ptx, "ce_warp_bf16"));
    }

    #[test]
    fn embedded_sources_match_their_hashes() {
        assert_eq!(MODULES.len(), 5);
        for m in MODULES {
            assert_eq!(fnv1a64(m.source.as_bytes()), m.hash, "{}", m.name);
            assert!(
                m.source.contains("struct PlanEntry"),
                "common.cuh is prepended"
            );
        }
    }
}
