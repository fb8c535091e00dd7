//! The classifier: a small CNN for 8×8 digits, initialised from a seeded generator so the three
//! runs start from the same weights (candle's CPU `rand` is not seedable).

use anyhow::Result;
use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{Conv2d, Conv2dConfig, Linear};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// conv 3×3 (1→16) · ReLU · conv 3×3 (16→32) · ReLU · max-pool 2 · linear 512→64 · ReLU ·
/// linear 64→classes. About 40 k parameters.
pub struct Net {
    conv1: Conv2d,
    conv2: Conv2d,
    fc1: Linear,
    fc2: Linear,
}

/// PyTorch's default initialisation: weights and biases uniform in `±1/sqrt(fan_in)`.
fn uniform(
    rng: &mut ChaCha8Rng,
    shape: &[usize],
    fan_in: usize,
    dev: &Device,
    vars: &mut Vec<Var>,
) -> Result<Tensor> {
    let bound = 1.0 / (fan_in as f32).sqrt();
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
    let var = Var::from_tensor(&Tensor::from_vec(v, shape, dev)?.to_dtype(DType::F32)?)?;
    let t = var.as_tensor().clone();
    vars.push(var);
    Ok(t)
}

impl Net {
    /// The network and its trainable variables.
    pub fn new(side: usize, classes: usize, seed: u64, dev: &Device) -> Result<(Self, Vec<Var>)> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut vars = Vec::new();
        let pad = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv1 = Conv2d::new(
            uniform(&mut rng, &[16, 1, 3, 3], 9, dev, &mut vars)?,
            Some(uniform(&mut rng, &[16], 9, dev, &mut vars)?),
            pad,
        );
        let conv2 = Conv2d::new(
            uniform(&mut rng, &[32, 16, 3, 3], 144, dev, &mut vars)?,
            Some(uniform(&mut rng, &[32], 144, dev, &mut vars)?),
            pad,
        );
        let flat = 32 * (side / 2) * (side / 2);
        let fc1 = Linear::new(
            uniform(&mut rng, &[64, flat], flat, dev, &mut vars)?,
            Some(uniform(&mut rng, &[64], flat, dev, &mut vars)?),
        );
        let fc2 = Linear::new(
            uniform(&mut rng, &[classes, 64], 64, dev, &mut vars)?,
            Some(uniform(&mut rng, &[classes], 64, dev, &mut vars)?),
        );
        Ok((
            Self {
                conv1,
                conv2,
                fc1,
                fc2,
            },
            vars,
        ))
    }

    /// Logits `[B, classes]` of images `[B, 1, side, side]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.conv1.forward(x)?.relu()?;
        let x = self.conv2.forward(&x)?.relu()?.max_pool2d(2)?;
        let x = self.fc1.forward(&x.flatten_from(1)?)?.relu()?;
        Ok(self.fc2.forward(&x)?)
    }

    /// Number of trainable parameters.
    pub fn count(vars: &[Var]) -> usize {
        vars.iter().map(|v| v.elem_count()).sum()
    }
}
