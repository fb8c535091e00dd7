//! The classifiers, initialised from a seeded generator so the three runs of a seed start from
//! the same weights (candle's CPU `rand` is not seedable):
//! - `Cnn`: a small CNN for the 8×8 digits;
//! - `ResNet`: a small ResNet (a stem, three stages of one basic block each, batch norm, global
//!   average pooling) for 28×28 images such as Fashion-MNIST.

use anyhow::Result;
use candle_core::{DType, Device, Module, ModuleT, Tensor, Var};
use candle_nn::{BatchNorm, Conv2d, Conv2dConfig, Linear};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The trainable variables of a model being built, and the seeded generator that fills them.
struct Init<'a> {
    rng: ChaCha8Rng,
    dev: &'a Device,
    vars: Vec<Var>,
}

impl<'a> Init<'a> {
    fn new(seed: u64, dev: &'a Device) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            dev,
            vars: Vec::new(),
        }
    }

    fn var(&mut self, v: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        let var = Var::from_tensor(&Tensor::from_vec(v, shape, self.dev)?.to_dtype(DType::F32)?)?;
        let t = var.as_tensor().clone();
        self.vars.push(var);
        Ok(t)
    }

    /// PyTorch's default initialisation: uniform in `±1/sqrt(fan_in)`.
    fn uniform(&mut self, shape: &[usize], fan_in: usize) -> Result<Tensor> {
        let bound = 1.0 / (fan_in as f32).sqrt();
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| self.rng.random_range(-bound..bound))
            .collect();
        self.var(v, shape)
    }

    fn constant(&mut self, value: f32, n: usize) -> Result<Tensor> {
        self.var(vec![value; n], &[n])
    }

    fn conv(&mut self, cin: usize, cout: usize, k: usize, stride: usize) -> Result<Conv2d> {
        let cfg = Conv2dConfig {
            padding: k / 2,
            stride,
            ..Default::default()
        };
        Ok(Conv2d::new(
            self.uniform(&[cout, cin, k, k], cin * k * k)?,
            None,
            cfg,
        ))
    }

    /// Batch norm with γ = `gamma`, β = 0 (trainable) and running statistics (not trained).
    fn bn(&mut self, c: usize, gamma: f32) -> Result<BatchNorm> {
        let weight = self.constant(gamma, c)?;
        let bias = self.constant(0.0, c)?;
        Ok(BatchNorm::new(
            c,
            Tensor::zeros(c, DType::F32, self.dev)?,
            Tensor::ones(c, DType::F32, self.dev)?,
            weight,
            bias,
            1e-5,
        )?)
    }

    fn linear(&mut self, cin: usize, cout: usize) -> Result<Linear> {
        Ok(Linear::new(
            self.uniform(&[cout, cin], cin)?,
            Some(self.uniform(&[cout], cin)?),
        ))
    }
}

/// conv 3×3 (1→16) · ReLU · conv 3×3 (16→32) · ReLU · max-pool 2 · linear 512→64 · ReLU ·
/// linear 64→classes. About 40 k parameters.
pub struct Cnn {
    conv1: Conv2d,
    conv2: Conv2d,
    fc1: Linear,
    fc2: Linear,
}

impl Cnn {
    fn new(side: usize, classes: usize, init: &mut Init) -> Result<Self> {
        let pad = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv1 = Conv2d::new(
            init.uniform(&[16, 1, 3, 3], 9)?,
            Some(init.uniform(&[16], 9)?),
            pad,
        );
        let conv2 = Conv2d::new(
            init.uniform(&[32, 16, 3, 3], 144)?,
            Some(init.uniform(&[32], 144)?),
            pad,
        );
        let fc1 = init.linear(32 * (side / 2) * (side / 2), 64)?;
        let fc2 = init.linear(64, classes)?;
        Ok(Self {
            conv1,
            conv2,
            fc1,
            fc2,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.conv1.forward(x)?.relu()?;
        let x = self.conv2.forward(&x)?.relu()?.max_pool2d(2)?;
        let x = self.fc1.forward(&x.flatten_from(1)?)?.relu()?;
        Ok(self.fc2.forward(&x)?)
    }
}

/// A basic residual block: conv 3×3 · BN · ReLU · conv 3×3 · BN, plus the input (through a
/// strided 1×1 conv and BN when the shape changes), then ReLU. The second BN starts at γ = 0
/// (Goyal et al. 2017), so each block starts as the identity.
struct Block {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    shortcut: Option<(Conv2d, BatchNorm)>,
}

impl Block {
    fn new(cin: usize, cout: usize, stride: usize, init: &mut Init) -> Result<Self> {
        let shortcut = if stride != 1 || cin != cout {
            Some((init.conv(cin, cout, 1, stride)?, init.bn(cout, 1.0)?))
        } else {
            None
        };
        Ok(Self {
            conv1: init.conv(cin, cout, 3, stride)?,
            bn1: init.bn(cout, 1.0)?,
            conv2: init.conv(cout, cout, 3, 1)?,
            bn2: init.bn(cout, 0.0)?,
            shortcut,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.bn1.forward_t(&self.conv1.forward(x)?, train)?.relu()?;
        let y = self.bn2.forward_t(&self.conv2.forward(&y)?, train)?;
        let skip = match &self.shortcut {
            Some((conv, bn)) => bn.forward_t(&conv.forward(x)?, train)?,
            None => x.clone(),
        };
        Ok((y + skip)?.relu()?)
    }
}

/// The stem, conv 3×3 (1→w) · BN · ReLU · max-pool 2, then blocks w→w (stride 1), w→2w
/// (stride 2), 2w→4w (stride 2), global average pooling, linear 4w→classes. For 28×28 inputs
/// the stages run at 14×14, 7×7 and 4×4 (the pooling in the stem, as in ResNet's own stem,
/// makes it four times cheaper than stages at full size: candle's CPU convolutions are slow).
pub struct ResNet {
    stem: Conv2d,
    stem_bn: BatchNorm,
    blocks: Vec<Block>,
    fc: Linear,
}

impl ResNet {
    fn new(width: usize, classes: usize, init: &mut Init) -> Result<Self> {
        let w = width;
        Ok(Self {
            stem: init.conv(1, w, 3, 1)?,
            stem_bn: init.bn(w, 1.0)?,
            blocks: vec![
                Block::new(w, w, 1, init)?,
                Block::new(w, 2 * w, 2, init)?,
                Block::new(2 * w, 4 * w, 2, init)?,
            ],
            fc: init.linear(4 * w, classes)?,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = self
            .stem_bn
            .forward_t(&self.stem.forward(x)?, train)?
            .relu()?
            .max_pool2d(2)?;
        for b in &self.blocks {
            x = b.forward(&x, train)?;
        }
        Ok(self.fc.forward(&x.mean((2, 3))?)?)
    }
}

/// Which network (the `--model` flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// The small CNN (the digits' default).
    Cnn,
    /// The small ResNet (Fashion-MNIST's default).
    Resnet,
}

pub enum Model {
    Cnn(Cnn),
    ResNet(ResNet),
}

impl Model {
    /// The network and its trainable variables (batch-norm running statistics are not among
    /// them: they are updated by the forward pass in training mode).
    pub fn new(
        arch: Arch,
        side: usize,
        classes: usize,
        width: usize,
        seed: u64,
        dev: &Device,
    ) -> Result<(Self, Vec<Var>)> {
        let mut init = Init::new(seed, dev);
        let model = match arch {
            Arch::Cnn => Model::Cnn(Cnn::new(side, classes, &mut init)?),
            Arch::Resnet => Model::ResNet(ResNet::new(width, classes, &mut init)?),
        };
        Ok((model, init.vars))
    }

    /// Logits `[B, classes]` of images `[B, 1, side, side]`; `train` selects batch statistics
    /// (and updates the running ones) in the batch norms.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Model::Cnn(m) => m.forward(x),
            Model::ResNet(m) => m.forward(x, train),
        }
    }

    /// One line for the log: "ResNet (width 16), 77 690 parameters".
    pub fn describe(&self, vars: &[Var]) -> String {
        let n: usize = vars.iter().map(|v| v.elem_count()).sum();
        match self {
            Model::Cnn(_) => format!("CNN, {n} parameters"),
            Model::ResNet(m) => format!(
                "ResNet (3 basic blocks, widths {}/{}/{}, batch norm), {n} parameters",
                m.blocks[0].conv2.weight().dim(0).unwrap_or(0),
                m.blocks[1].conv2.weight().dim(0).unwrap_or(0),
                m.blocks[2].conv2.weight().dim(0).unwrap_or(0),
            ),
        }
    }
}
