//! The two data sets of the demo, read, checked, split and put on the device:
//! - `data/digits.bin` (see `data/README.md`), built into the binary;
//! - Fashion-MNIST as Debian's `dataset-fashion-mnist` installs it (four idx files, gzip).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
#[cfg(feature = "candle")]
use candle_core::{Device, Tensor};
use mixup_kernels::Normalize;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// The digits file, embedded so the binary runs from anywhere (`--data FILE` reads another copy).
pub const EMBEDDED: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/data/digits.bin"));

/// Where Debian's package puts Fashion-MNIST.
pub const FASHION_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The Fashion-MNIST class names, in label order.
pub const FASHION_CLASSES: [&str; 10] = [
    "T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot",
];

const DIGIT_NAMES: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Square grey-scale images on the host, pixels 0..=max, row-major, image after image.
pub struct Images {
    pub count: usize,
    pub side: usize,
    pub max: u8,
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
}

/// A training and a validation set of one kind of image.
pub struct DataSet {
    /// "8x8 digits (UCI optdigits via scikit-learn)" or "Fashion-MNIST 28x28".
    pub title: &'static str,
    pub classes: usize,
    pub class_names: &'static [&'static str],
    pub side: usize,
    pub train: Images,
    pub valid: Images,
}

impl Images {
    /// The images at `idx`, in that order.
    pub fn select(&self, idx: &[usize]) -> Images {
        let px = self.side * self.side;
        Images {
            count: idx.len(),
            side: self.side,
            max: self.max,
            pixels: idx
                .iter()
                .flat_map(|&i| &self.pixels[i * px..(i + 1) * px])
                .copied()
                .collect(),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    /// The first `n` images of a seeded shuffle (a fixed subset: the seed is not `--seed`).
    pub fn subset(&self, n: usize, seed: u64) -> Images {
        let mut idx: Vec<usize> = (0..self.count).collect();
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        idx.truncate(n.min(self.count));
        self.select(&idx)
    }

    /// All images as a `[n, 1, side, side]` u8 tensor of their pixels on the CPU (where a data
    /// loader keeps decoded images; `mix_normalize` turns each batch into the model's input),
    /// and their labels (u32) on `dev`. (The burn demo, `digits_burn`, builds its own tensors.)
    #[cfg(feature = "candle")]
    pub fn tensors(&self, dev: &Device) -> Result<(Tensor, Tensor)> {
        let y: Vec<u32> = self.labels.iter().map(|&l| u32::from(l)).collect();
        Ok((
            Tensor::from_vec(
                self.pixels.clone(),
                (self.count, 1, self.side, self.side),
                &Device::Cpu,
            )?,
            Tensor::from_vec(y, self.count, dev)?,
        ))
    }

    /// The constants that bring pixels `0..=max` to `0..=1`: mean 0 and std 1 in `[0, 1]`
    /// units, scaled by `max` (the model was designed for inputs in `[0, 1]`).
    pub fn normalize(&self) -> Result<Normalize> {
        Ok(Normalize::new(&[0.0], &[1.0], f64::from(self.max))?)
    }
}

// ---------------------------------------------------------------------------------------------
// digits.bin

const MAGIC: &[u8; 8] = b"MXDIGIT1";
const HEADER: usize = 24;

fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    })
}

/// Parses a `MXDIGIT1` file (layout in `data/README.md`): the images and the class count.
pub fn parse_digits(bytes: &[u8]) -> Result<(Images, usize)> {
    ensure!(
        bytes.len() >= HEADER && &bytes[..8] == MAGIC,
        "not a MXDIGIT1 file"
    );
    let count = u32::from_le_bytes(bytes[8..12].try_into()?) as usize;
    let (h, w, max, classes) = (bytes[12], bytes[13], bytes[14], bytes[15]);
    let checksum = u64::from_le_bytes(bytes[16..24].try_into()?);
    ensure!(h == w && h > 0, "images must be square, got {h}x{w}");
    ensure!(
        (1..=10).contains(&classes),
        "{classes} classes: the demo names at most 10"
    );
    let side = h as usize;
    let n_px = count * side * side;
    ensure!(
        bytes.len() == HEADER + n_px + count,
        "file has {} bytes, the header announces {}",
        bytes.len(),
        HEADER + n_px + count
    );
    let payload = &bytes[HEADER..];
    ensure!(
        fnv1a64(payload) == checksum,
        "checksum mismatch: the file is damaged"
    );
    let (pixels, labels) = payload.split_at(n_px);
    if let Some(p) = pixels.iter().find(|&&p| p > max) {
        bail!("pixel value {p} above the announced maximum {max}");
    }
    if let Some(l) = labels.iter().find(|&&l| l >= classes) {
        bail!("label {l} outside 0..{classes}");
    }
    let images = Images {
        count,
        side,
        max,
        pixels: pixels.to_vec(),
        labels: labels.to_vec(),
    };
    Ok((images, classes as usize))
}

/// The digits (embedded, or from `path`), split by a seeded shuffle: `train` images for
/// training, the rest for validation.
pub fn digits(path: Option<&Path>, train: usize, split_seed: u64) -> Result<DataSet> {
    let (all, classes) = match path {
        None => parse_digits(EMBEDDED)?,
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            parse_digits(&bytes).with_context(|| format!("parsing {}", p.display()))?
        }
    };
    if train == 0 || train >= all.count {
        bail!(
            "--train must be between 1 and {} for the digits",
            all.count - 1
        );
    }
    let mut idx: Vec<usize> = (0..all.count).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(split_seed));
    let valid_idx = idx.split_off(train);
    Ok(DataSet {
        title: "8x8 digits (UCI optdigits via scikit-learn)",
        classes,
        class_names: &DIGIT_NAMES[..classes],
        side: all.side,
        train: all.select(&idx),
        valid: all.select(&valid_idx),
    })
}

// ---------------------------------------------------------------------------------------------
// Fashion-MNIST (idx format: big-endian magic 0x0000_08_NN with NN dimensions, the dimensions
// as u32, then u8 values)

/// Reads one gzip-compressed idx file of u8 values: its dimensions and its values.
fn read_idx_gz(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::io::BufReader::new(file))
        .read_to_end(&mut bytes)
        .with_context(|| format!("decompressing {}", path.display()))?;
    parse_idx(&bytes).with_context(|| format!("parsing {}", path.display()))
}

fn parse_idx(bytes: &[u8]) -> Result<(Vec<usize>, Vec<u8>)> {
    ensure!(bytes.len() >= 4, "{} bytes: too short for idx", bytes.len());
    ensure!(
        bytes[0] == 0 && bytes[1] == 0,
        "not an idx file (magic {:02x?})",
        &bytes[..4]
    );
    ensure!(
        bytes[2] == 0x08,
        "idx type 0x{:02x}, expected unsigned bytes (0x08)",
        bytes[2]
    );
    let rank = bytes[3] as usize;
    let head = 4 + 4 * rank;
    ensure!(bytes.len() >= head, "idx header cut short");
    let dims: Vec<usize> = bytes[4..head]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .context("idx dimensions overflow")?;
    ensure!(
        bytes.len() == head + n,
        "idx holds {} values, its header announces {n} ({dims:?})",
        bytes.len() - head
    );
    Ok((dims, bytes[head..].to_vec()))
}

fn fashion_part(dir: &Path, prefix: &str) -> Result<Images> {
    let (idims, pixels) = read_idx_gz(&dir.join(format!("{prefix}-images-idx3-ubyte.gz")))?;
    let (ldims, labels) = read_idx_gz(&dir.join(format!("{prefix}-labels-idx1-ubyte.gz")))?;
    ensure!(
        idims.len() == 3 && idims[1] == idims[2],
        "{prefix} images: dimensions {idims:?}, expected [n, side, side]"
    );
    ensure!(
        ldims == [idims[0]],
        "{prefix}: {} images but labels {ldims:?}",
        idims[0]
    );
    if let Some(l) = labels.iter().find(|&&l| l >= 10) {
        bail!("{prefix}: label {l} outside 0..10");
    }
    Ok(Images {
        count: idims[0],
        side: idims[1],
        max: 255,
        pixels,
        labels,
    })
}

/// Fashion-MNIST from `dir` (default: where Debian's package puts it): fixed seeded subsets of
/// `train` images of the 60 000 training images and `valid` of the 10 000 test images.
pub fn fashion_mnist(
    dir: Option<&Path>,
    train: usize,
    valid: usize,
    split_seed: u64,
) -> Result<DataSet> {
    let dir: PathBuf = dir.map_or_else(|| PathBuf::from(FASHION_DIR), Path::to_path_buf);
    let files = [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ];
    let missing: Vec<&str> = files
        .iter()
        .copied()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if !missing.is_empty() {
        bail!(
            "Fashion-MNIST is not in {} (missing {}).\n\
             Install it with:  sudo apt-get install dataset-fashion-mnist   (Debian/Ubuntu: the full \
             set, MIT license)\n\
             or point --data-dir to a folder holding the four idx .gz files of \
             github.com/zalandoresearch/fashion-mnist.",
            dir.display(),
            missing.join(", ")
        );
    }
    let train_all = fashion_part(&dir, "train")?;
    let test_all = fashion_part(&dir, "t10k")?;
    ensure!(
        train_all.side == test_all.side,
        "training and test images differ in size"
    );
    if train == 0 || valid == 0 {
        bail!("--train and --valid must be at least 1");
    }
    Ok(DataSet {
        title: "Fashion-MNIST 28x28",
        classes: 10,
        class_names: &FASHION_CLASSES,
        side: train_all.side,
        train: train_all.subset(train, split_seed),
        valid: test_all.subset(valid, split_seed ^ 1),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn idx_round_trip() {
        let mut b = vec![0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3];
        b.extend(0..6u8);
        let (d, v) = super::parse_idx(&b).unwrap();
        assert_eq!(d, [2, 3]);
        assert_eq!(v, [0, 1, 2, 3, 4, 5]);
        b.pop();
        assert!(super::parse_idx(&b).is_err());
    }
}
