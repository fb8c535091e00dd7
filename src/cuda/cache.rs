//! The on-disk cache of compiled kernels, so a second process loads CUBINs instead of running
//! NVRTC again.
//!
//! - Folder: `$MIXUP_KERNELS_CACHE`, else `$XDG_CACHE_HOME/mixup-kernels`, else
//!   `$HOME/.cache/mixup-kernels`. `MIXUP_KERNELS_CACHE=off` (or `0`, or empty) disables it.
//! - Key (the file name): unit, hash of the module source, target architecture, NVRTC version,
//!   hash of the compile options. Any change to a kernel, the header, the options or NVRTC
//!   gives a new file; stale files are simply never read again.
//! - File: magic, payload length and FNV-1a checksum, then the payload. A file that is short,
//!   has another magic or a wrong checksum is ignored (and overwritten by the rebuilt image).
//! - Writes go to a temporary file in the same folder, then `rename` (atomic on POSIX), so a
//!   reader never sees half a file, even with several processes starting at once. Failures to
//!   write (read-only home, full disk) are ignored: the cache is an optimisation.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::nvrtc::{Target, fnv1a64};

const MAGIC: &[u8; 8] = b"MXKC0001";
const HEADER: usize = 8 + 8 + 8;

/// Where compiled kernels are kept (`None`: no disk cache).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskCache {
    dir: Option<PathBuf>,
}

impl DiskCache {
    /// The folder from the environment (see the module docs).
    pub fn from_env() -> Self {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let dir = match std::env::var("MIXUP_KERNELS_CACHE") {
            Ok(v) if v.is_empty() || v == "0" || v.eq_ignore_ascii_case("off") => None,
            Ok(v) => Some(PathBuf::from(v)),
            Err(_) => env("XDG_CACHE_HOME")
                .map(|x| PathBuf::from(x).join("mixup-kernels"))
                .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".cache/mixup-kernels"))),
        };
        Self { dir }
    }

    /// A cache in `dir` (`None` disables it).
    pub fn at(dir: Option<PathBuf>) -> Self {
        Self { dir }
    }

    /// The folder, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The file a unit compiled with these inputs lives in.
    pub fn path(
        &self,
        unit: &str,
        source_hash: u64,
        target: Target,
        nvrtc: (i32, i32),
        options: &[String],
    ) -> Option<PathBuf> {
        let opts = fnv1a64(options.join("\u{1f}").as_bytes());
        self.dir.as_ref().map(|d| {
            d.join(format!(
                "{unit}-{source_hash:016x}-{}-nvrtc{}.{}-{opts:016x}.bin",
                target.arch(),
                nvrtc.0,
                nvrtc.1
            ))
        })
    }

    /// The cached image at `path`, if present and intact.
    pub fn load(path: &Path) -> Option<Vec<u8>> {
        let bytes = fs::read(path).ok()?;
        decode(&bytes).map(<[u8]>::to_vec)
    }

    /// Stores `image` at `path` atomically; errors are ignored (see the module docs).
    pub fn store(path: &Path, image: &[u8]) {
        let _ = try_store(path, image);
    }
}

fn encode(image: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + image.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(image.len() as u64).to_le_bytes());
    out.extend_from_slice(&fnv1a64(image).to_le_bytes());
    out.extend_from_slice(image);
    out
}

fn decode(bytes: &[u8]) -> Option<&[u8]> {
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return None;
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().ok()?);
    let sum = u64::from_le_bytes(bytes[16..24].try_into().ok()?);
    let payload = &bytes[HEADER..];
    (payload.len() as u64 == len && fnv1a64(payload) == sum && len > 0).then_some(payload)
}

fn try_store(path: &Path, image: &[u8]) -> std::io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("unit"),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&encode(image))?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "mixup-kernels-cache-test-{tag}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn key_changes_with_every_input() {
        let c = DiskCache::at(Some(PathBuf::from("/c")));
        let o = vec!["--gpu-architecture=sm_90".to_string()];
        let base = c
            .path("mix_gather_f32", 1, Target::Sm(90), (13, 0), &o)
            .unwrap();
        assert_eq!(
            base,
            c.path("mix_gather_f32", 1, Target::Sm(90), (13, 0), &o)
                .unwrap()
        );
        let others = [
            c.path("mix_gather_f16", 1, Target::Sm(90), (13, 0), &o),
            c.path("mix_gather_f32", 2, Target::Sm(90), (13, 0), &o),
            c.path("mix_gather_f32", 1, Target::Sm(80), (13, 0), &o),
            c.path("mix_gather_f32", 1, Target::Compute(90), (13, 0), &o),
            c.path("mix_gather_f32", 1, Target::Sm(90), (13, 1), &o),
            c.path(
                "mix_gather_f32",
                1,
                Target::Sm(90),
                (13, 0),
                &["-lineinfo".to_string()],
            ),
        ];
        for p in others {
            assert_ne!(p.unwrap(), base);
        }
        assert_eq!(
            DiskCache::at(None).path("x", 1, Target::Sm(90), (13, 0), &o),
            None
        );
    }

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempdir("rt");
        let c = DiskCache::at(Some(dir.clone()));
        let p = c.path("u", 7, Target::Sm(90), (13, 0), &[]).unwrap();
        assert_eq!(DiskCache::load(&p), None, "absent");
        let image: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        DiskCache::store(&p, &image);
        assert_eq!(DiskCache::load(&p).as_deref(), Some(&image[..]));
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");

        // Truncated, flipped byte, wrong magic, empty: all ignored.
        let good = fs::read(&p).unwrap();
        for bad in [
            good[..good.len() - 1].to_vec(),
            {
                let mut b = good.clone();
                b[HEADER + 10] ^= 1;
                b
            },
            {
                let mut b = good.clone();
                b[0] = b'X';
                b
            },
            Vec::new(),
        ] {
            fs::write(&p, &bad).unwrap();
            assert_eq!(DiskCache::load(&p), None);
        }
        // A rebuilt image replaces the corrupt file.
        DiskCache::store(&p, &image);
        assert_eq!(DiskCache::load(&p).as_deref(), Some(&image[..]));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn unwritable_folder_is_not_an_error() {
        let dir = tempdir("ro");
        fs::write(&dir, b"a file where the folder should be").unwrap();
        let c = DiskCache::at(Some(dir.join("sub")));
        let p = c.path("u", 1, Target::Sm(90), (13, 0), &[]).unwrap();
        DiskCache::store(&p, b"image");
        assert_eq!(DiskCache::load(&p), None);
        let _ = fs::remove_file(&dir);
    }
}
