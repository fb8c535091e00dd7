//! `data/digits.bin` (see `data/README.md`): read, checked, split and put on the device.

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The file, embedded so the binary runs from anywhere (`--data` reads another copy).
pub const EMBEDDED: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/data/digits.bin"));

const MAGIC: &[u8; 8] = b"MXDIGIT1";
const HEADER: usize = 24;

/// The whole set on the host: pixels 0..=max, row-major, image after image.
pub struct Digits {
    pub count: usize,
    pub side: usize,
    pub max: u8,
    pub classes: usize,
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
}

fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    })
}

impl Digits {
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        ensure!(
            bytes.len() >= HEADER && &bytes[..8] == MAGIC,
            "not a MXDIGIT1 file"
        );
        let count = u32::from_le_bytes(bytes[8..12].try_into()?) as usize;
        let (h, w, max, classes) = (bytes[12], bytes[13], bytes[14], bytes[15]);
        let checksum = u64::from_le_bytes(bytes[16..24].try_into()?);
        ensure!(h == w && h > 0, "images must be square, got {h}x{w}");
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
        Ok(Self {
            count,
            side,
            max,
            classes: classes as usize,
            pixels: pixels.to_vec(),
            labels: labels.to_vec(),
        })
    }

    pub fn load(path: Option<&std::path::Path>) -> Result<Self> {
        match path {
            None => Self::parse(EMBEDDED),
            Some(p) => {
                let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
                Self::parse(&bytes).with_context(|| format!("parsing {}", p.display()))
            }
        }
    }

    /// A fixed split, the same for every run: a seeded shuffle, then the first `train` images
    /// for training and the rest for validation.
    pub fn split(&self, train: usize, seed: u64) -> (Vec<usize>, Vec<usize>) {
        let mut idx: Vec<usize> = (0..self.count).collect();
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let valid = idx.split_off(train.min(self.count));
        (idx, valid)
    }

    /// The images at `idx` as a `[n, 1, side, side]` f32 tensor in 0..=1, and their labels.
    pub fn tensors(&self, idx: &[usize], dev: &Device) -> Result<(Tensor, Tensor)> {
        let px = self.side * self.side;
        let scale = 1.0 / f32::from(self.max);
        let x: Vec<f32> = idx
            .iter()
            .flat_map(|&i| {
                self.pixels[i * px..(i + 1) * px]
                    .iter()
                    .map(move |&p| f32::from(p) * scale)
            })
            .collect();
        let y: Vec<u32> = idx.iter().map(|&i| u32::from(self.labels[i])).collect();
        Ok((
            Tensor::from_vec(x, (idx.len(), 1, self.side, self.side), dev)?,
            Tensor::from_vec(y, idx.len(), dev)?,
        ))
    }
}
