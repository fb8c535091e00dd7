//! The digits demo of `examples/digits.rs` trained with burn instead of candle: the same 8×8
//! digits, split, seed, initial weights, batch order, CNN, optimizer (AdamW, one-cycle lr) and
//! epochs, three times: without mixing, with fastai's MixUp and with fastai's CutMix, mixed and
//! scored by this crate's burn ops (`mixup_kernels::burn`). Prints the same per-epoch rows and
//! comparison table.
//!
//! ```sh
//! cargo run --release --example digits_burn --features burn
//! cargo run --release --example digits_burn --features burn -- --epochs 5 --runs none,mixup
//! ```
//!
//! As in the candle demo, each batch's u8 pixels (here a `Tensor<4, Int>` of dtype u8) become
//! the model's input through `mix_normalize` (mix, scale to `[0, 1]`, f32) in one pass.

#[path = "digits/common.rs"]
#[allow(dead_code)] // `Method::describe` is the candle demo's
mod common;
#[path = "digits/data.rs"]
#[allow(dead_code)] // the Fashion-MNIST reader and the candle tensors are the candle demo's
mod data;

use std::time::Instant;

use anyhow::{Result, bail};
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, PaddingConfig2d};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::{relu, softmax};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use clap::Parser;
use mixup_kernels::burn::{mix_normalize, mixup_cross_entropy};
use mixup_kernels::{CeSpec, MemoryFormat, MixPlan, Normalize};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use common::{Epoch, Method, Row, Validation};
use data::{DataSet, Images};

/// The split of the candle demo (not `--seed`).
const SPLIT_SEED: u64 = 0x5EED_D161;

/// Train the digits CNN with burn without mixing, with MixUp and with CutMix, and compare.
#[derive(Parser, Debug)]
#[command(name = "digits_burn")]
struct Args {
    /// Epochs per run
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    /// Batch size
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Peak learning rate of AdamW, one-cycle schedule
    #[arg(long, default_value_t = 0.003)]
    lr: f64,
    /// Initial weights, batch order and mixing draws
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Training images (the rest of the 1797 validate)
    #[arg(long, default_value_t = 1000)]
    train: usize,
    #[command(flatten)]
    runs: common::Runs,
}

/// conv 3×3 (1→16) · ReLU · conv 3×3 (16→32) · ReLU · max-pool 2 · linear 512→64 · ReLU ·
/// linear 64→classes: the candle demo's CNN.
#[derive(Module, Debug)]
struct Cnn {
    conv1: Conv2d,
    conv2: Conv2d,
    pool: MaxPool2d,
    fc1: Linear,
    fc2: Linear,
}

/// The candle demo's initialisation, value for value: PyTorch's uniform `±1/sqrt(fan_in)` drawn
/// from ChaCha8 seeded with the run's seed, in the same order (conv1, conv2, fc1, fc2; weight
/// then bias).
struct Init {
    rng: ChaCha8Rng,
    dev: Device,
}

impl Init {
    fn uniform(&mut self, n: usize, fan_in: usize) -> Vec<f32> {
        let bound = 1.0 / (fan_in as f32).sqrt();
        (0..n)
            .map(|_| self.rng.random_range(-bound..bound))
            .collect()
    }

    fn param<const D: usize>(&self, v: Vec<f32>, shape: [usize; D]) -> Param<Tensor<D>> {
        Param::from_tensor(Tensor::from_data(TensorData::new(v, shape), &self.dev))
    }

    fn conv(&mut self, cin: usize, cout: usize) -> Conv2d {
        let mut conv = Conv2dConfig::new([cin, cout], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(&self.dev);
        let w = self.uniform(cout * cin * 9, cin * 9);
        let b = self.uniform(cout, cin * 9);
        conv.weight = self.param(w, [cout, cin, 3, 3]);
        conv.bias = Some(self.param(b, [cout]));
        conv
    }

    fn linear(&mut self, cin: usize, cout: usize) -> Linear {
        // candle stores [out, in]; burn's Linear [in, out].
        let w = self.uniform(cout * cin, cin);
        let wt: Vec<f32> = (0..cin * cout)
            .map(|k| w[(k % cout) * cin + k / cout])
            .collect();
        let b = self.uniform(cout, cin);
        Linear {
            weight: self.param(wt, [cin, cout]),
            bias: Some(self.param(b, [cout])),
        }
    }
}

impl Cnn {
    fn new(side: usize, classes: usize, seed: u64, dev: &Device) -> Self {
        let mut init = Init {
            rng: ChaCha8Rng::seed_from_u64(seed),
            dev: dev.clone(),
        };
        Cnn {
            conv1: init.conv(1, 16),
            conv2: init.conv(16, 32),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            fc1: init.linear(32 * (side / 2) * (side / 2), 64),
            fc2: init.linear(64, classes),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = relu(self.conv1.forward(x));
        let x = self.pool.forward(relu(self.conv2.forward(x)));
        let x = relu(self.fc1.forward(x.flatten::<2>(1, 3)));
        self.fc2.forward(x)
    }
}

/// A split's u8 pixels and labels on the host.
struct Split {
    pixels: Vec<u8>,
    labels: Vec<i64>,
    count: usize,
    /// Pixels `0..=max` to `0..=1`.
    norm: Normalize,
}

impl Split {
    fn new(im: &Images) -> Result<Self> {
        Ok(Split {
            pixels: im.pixels.clone(),
            labels: im.labels.iter().map(|&l| i64::from(l)).collect(),
            count: im.count,
            norm: im.normalize()?,
        })
    }

    /// The pixels `[n, 1, side, side]` (u8, an int tensor) and labels of `idx`.
    fn batch(&self, idx: &[u32], side: usize, dev: &Device) -> (Tensor<4, Int>, Tensor<1, Int>) {
        let px = side * side;
        let x: Vec<u8> = idx
            .iter()
            .flat_map(|&i| &self.pixels[i as usize * px..(i as usize + 1) * px])
            .copied()
            .collect();
        let y: Vec<i64> = idx.iter().map(|&i| self.labels[i as usize]).collect();
        let n = idx.len();
        (
            Tensor::from_data(TensorData::new(x, [n, 1, side, side]), (dev, DType::U8)),
            Tensor::from_data(TensorData::new(y, [n]), dev),
        )
    }
}

fn train(method: Method, a: &Args, data: &DataSet, tr: &Split, va: &Split) -> Result<Vec<Row>> {
    let dev = Device::flex().autodiff();
    let (classes, side, n_train) = (data.classes, data.side, tr.count);
    let mut model = Cnn::new(side, classes, a.seed, &dev);
    // candle-nn's AdamW defaults (burn's differ: ε 1e-5, weight decay 1e-4).
    let mut optim = AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(0.01)
        .init();
    let (sampler, spec) = method.sampler_and_spec(classes, a.seed)?;
    let total_steps = a.epochs * n_train.div_ceil(a.batch);
    println!("\n{}", method.name());
    common::print_epoch_header();
    let mut rows = Vec::new();
    let mut step = 0u64;
    for epoch in 0..a.epochs {
        let mut ep = Epoch::start();
        for chunk in common::batch_order(n_train, a.seed, epoch).chunks(a.batch) {
            let n = chunk.len();
            let (x, y) = tr.batch(chunk, side, &dev);
            let tm = Instant::now();
            let plan = common::draw_plan(sampler.as_ref(), step, n, side)?;
            // The lines a burn loop changes: pixels to the mixed input, the mixed-target loss.
            let first = MemoryFormat::ChannelsFirst;
            let x = mix_normalize(&plan, first, &tr.norm, x, first, DType::F32)?;
            ep.mixing += tm.elapsed();
            let logits = model.forward(x);
            let loss = mixup_cross_entropy(&plan, &spec, logits, y)?;
            let mean = loss.to_data().iter::<f32>().next().unwrap_or(f32::NAN);
            ep.loss_sum += f64::from(mean) * n as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let lr = common::one_cycle(a.lr, step as usize, total_steps);
            model = optim.step(lr, model, grads);
            step += 1;
        }
        let validate = || evaluate(&model.valid(), va, side, &spec);
        rows.push(ep.finish(epoch, n_train, validate, |line| println!("{line}"))?);
    }
    Ok(rows)
}

/// Validation without autodiff: loss (the fused op's forward-only path), accuracy, mean
/// confidence and expected calibration error (10 bins).
fn evaluate(model: &Cnn, va: &Split, side: usize, spec: &CeSpec) -> Result<Validation> {
    let dev = Device::flex();
    let n = va.count;
    let idx: Vec<u32> = (0..n as u32).collect();
    let (px, y) = va.batch(&idx, side, &dev);
    let (first, identity) = (MemoryFormat::ChannelsFirst, MixPlan::identity(n)?);
    let x = mix_normalize(&identity, first, &va.norm, px, first, DType::F32)?;
    let logits = model.forward(x);
    let loss = mixup_cross_entropy(&identity, spec, logits.clone(), y)?;
    let valid_loss = f64::from(loss.to_data().iter::<f32>().next().unwrap_or(f32::NAN));
    let probs: Vec<f32> = softmax(logits, 1).to_data().iter::<f32>().collect();
    let classes = probs.len() / n.max(1);
    let predictions: Vec<(f32, bool)> = probs
        .chunks(classes)
        .zip(&va.labels)
        .map(|(p, &label)| common::prediction(p, label as usize))
        .collect();
    let correct = predictions.iter().filter(|&&(_, right)| right).count();
    let (confidence, ece) = common::calibration(predictions);
    Ok(Validation {
        loss: valid_loss,
        accuracy: correct as f64 / n.max(1) as f64,
        confidence,
        ece,
    })
}

fn main() -> Result<()> {
    let a = Args::parse();
    if a.epochs == 0 || a.batch == 0 || a.runs.methods.is_empty() {
        bail!("--epochs, --batch and --runs must not be zero or empty");
    }
    let start = Instant::now();
    let data = data::digits(None, a.train, SPLIT_SEED)?;
    let (tr, va) = (Split::new(&data.train)?, Split::new(&data.valid)?);
    println!(
        "{}: {} train / {} valid images, {} classes",
        data.title, tr.count, va.count, data.classes
    );
    println!(
        "model: CNN (the candle demo's); burn 0.22 on Flex (CPU, {} threads), AdamW, one-cycle \
         lr {}, batch {}, {} epochs, seed {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        a.lr,
        a.batch,
        a.epochs,
        a.seed
    );
    let mut results = Vec::new();
    for &m in &a.runs.methods {
        results.push((m, train(m, &a, &data, &tr, &va)?));
    }
    let one_run_each: Vec<(Method, Vec<&[Row]>)> = results
        .iter()
        .map(|(m, rows)| (*m, vec![rows.as_slice()]))
        .collect();
    common::print_comparison(&one_run_each, a.epochs, 1, tr.count, va.count);
    println!(
        "\nerrors = misclassified validation images. ECE: expected calibration error (10 bins); \
         confidence: mean probability of the predicted class. img/s: training only; mixing: \
         drawing the plan and `mix_normalize` (u8 -> f32), timed on its own."
    );
    println!("total time {:.1}s", start.elapsed().as_secs_f64());
    Ok(())
}
