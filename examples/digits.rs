//! Training with and without mixup on real data: the 8×8 handwritten digits (UCI optdigits, as
//! shipped by scikit-learn; `data/README.md`), a small CNN in candle, the same seed, split,
//! initial weights, batch order and epochs three times: without mixing, with MixUp and with
//! CutMix (fastai's presets, drawn by this crate's `Sampler`, mixed and scored by its candle
//! ops). Prints one row per epoch like the fastai documents, a comparison at the end, and writes
//! two pictures: mixed samples with their soft labels, and the training curves.
//!
//! ```sh
//! cargo run --release --example digits --features candle                      # CPU
//! cargo run --release --example digits --no-default-features --features candle-cuda  # GPU
//! cargo run --release --example digits --features candle -- --help
//! ```

// The helpers live in examples/digits/ (a crate root resolves `mod x;` beside itself).
#[path = "digits/data.rs"]
mod data;
#[path = "digits/font.rs"]
mod font;
#[path = "digits/model.rs"]
mod model;
#[path = "digits/plot.rs"]
mod plot;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use mixup_kernels::candle::{mix_images, mixup_cross_entropy, soft_targets, ImageLayout};
use mixup_kernels::{CeSpec, MixConfig, MixPlan, Reduction, Sampler, TargetSpec};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use data::Digits;
use model::Net;

const HELP: &str = "\
digits: train a small CNN on the 8x8 digits without mixup, with MixUp and with CutMix

USAGE: cargo run --release --example digits --features candle -- [OPTIONS]

OPTIONS:
  --epochs N       epochs per run (default 30)
  --batch N        batch size (default 64)
  --lr X           peak learning rate of AdamW, one-cycle schedule (default 0.003)
  --seed N         initial weights, batch order and mixing draws (default 0)
  --seeds N        repeat everything for seeds seed..seed+N-1 and compare means (default 1)
  --train N        images in the training split, the rest validate (default 1000 of 1797)
  --runs LIST      comma-separated subset of none,mixup,cutmix (default all three)
  --device D       auto | cpu | cuda (default auto: the GPU when built with the candle-cuda
                   feature and one is present, else the CPU)
  --out DIR        where the pictures go (default target/digits)
  --data FILE      read the digits from FILE instead of the copy built into the binary
  --progress       always show the progress line on stderr (default: only on a terminal)
  --no-progress    never show it
  -h, --help       this text
";

/// The split is fixed (not `--seed`): every run and every seed sees the same images.
const SPLIT_SEED: u64 = 0x5EED_D161;

#[derive(Debug, Clone)]
struct Args {
    epochs: usize,
    batch: usize,
    lr: f64,
    seed: u64,
    seeds: u64,
    train: usize,
    runs: Vec<Method>,
    device: String,
    out: PathBuf,
    data: Option<PathBuf>,
    progress: Option<bool>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        epochs: 30,
        batch: 64,
        lr: 3e-3,
        seed: 0,
        seeds: 1,
        train: 1000,
        runs: vec![Method::None, Method::MixUp, Method::CutMix],
        device: "auto".into(),
        out: PathBuf::from("target/digits"),
        data: None,
        progress: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--epochs" => a.epochs = value()?.parse().context("--epochs")?,
            "--batch" => a.batch = value()?.parse().context("--batch")?,
            "--lr" => a.lr = value()?.parse().context("--lr")?,
            "--seed" => a.seed = value()?.parse().context("--seed")?,
            "--seeds" => a.seeds = value()?.parse().context("--seeds")?,
            "--train" => a.train = value()?.parse().context("--train")?,
            "--runs" => {
                a.runs = value()?
                    .split(',')
                    .map(Method::parse)
                    .collect::<Result<_>>()?
            }
            "--device" => a.device = value()?,
            "--out" => a.out = value()?.into(),
            "--data" => a.data = Some(value()?.into()),
            "--progress" => a.progress = Some(true),
            "--no-progress" => a.progress = Some(false),
            "-h" | "--help" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n\n{HELP}"),
        }
    }
    if a.epochs == 0 || a.batch == 0 || a.seeds == 0 || a.runs.is_empty() {
        bail!("--epochs, --batch, --seeds and --runs must not be zero or empty");
    }
    Ok(a)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Method {
    None,
    MixUp,
    CutMix,
}

impl Method {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s.trim() {
            "none" => Method::None,
            "mixup" => Method::MixUp,
            "cutmix" => Method::CutMix,
            other => bail!("unknown run {other:?}: use none, mixup or cutmix"),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Method::None => "no mixup",
            Method::MixUp => "MixUp",
            Method::CutMix => "CutMix",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Method::None => "plain cross-entropy on the unmixed batch",
            Method::MixUp => {
                "fastai v2 MixUp(alpha=0.4): per-sample λ ~ Beta(0.4, 0.4), λ = max(λ, 1-λ), random permutation"
            }
            Method::CutMix => {
                "fastai v2 CutMix(alpha=1.0): one λ ~ Beta(1, 1) and one box per batch, λ = kept area, random permutation"
            }
        }
    }

    fn config(self, classes: usize) -> Option<MixConfig> {
        match self {
            Method::None => None,
            Method::MixUp => Some(MixConfig::fastai_v2_mixup(classes)),
            Method::CutMix => Some(MixConfig::fastai_v2_cutmix(classes)),
        }
    }
}

/// The progress line on stderr: redrawn in place, erased before each table row so the table on
/// stdout stays clean when both go to one terminal.
struct Progress {
    on: bool,
}

impl Progress {
    fn show(&self, run: &str, epoch: usize, epochs: usize, batch: usize, batches: usize) {
        if !self.on {
            return;
        }
        const WIDTH: usize = 24;
        let done = (batch * WIDTH) / batches.max(1);
        let bar: String = "#".repeat(done) + &"-".repeat(WIDTH - done);
        eprint!(
            "\r\x1b[2K[{run}] epoch {}/{epochs} [{bar}] batch {batch}/{batches}",
            epoch + 1
        );
        let _ = std::io::stderr().flush();
    }

    fn clear(&self) {
        if self.on {
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
        }
    }
}

struct Row {
    epoch: usize,
    train_loss: f64,
    valid_loss: f64,
    accuracy: f64,
    /// Mean probability of the predicted class (how sure the model is).
    confidence: f64,
    /// Expected calibration error over 10 equal-width confidence bins.
    ece: f64,
    secs: f64,
}

struct Run {
    method: Method,
    seed: u64,
    rows: Vec<Row>,
    secs: f64,
    /// The first mixed batch (for the picture): pixels `[n, 64]`, captions.
    sample: Vec<plot::Cell>,
}

/// Everything a run needs, built once and shared by the three runs.
struct Setup {
    dev: Device,
    digits: Digits,
    train_x: Tensor,
    train_y: Tensor,
    valid_x: Tensor,
    valid_y: Tensor,
    valid_labels: Vec<u32>,
    n_train: usize,
    n_valid: usize,
}

fn pick_device(choice: &str) -> Result<Device> {
    match choice {
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            if cfg!(feature = "candle-cuda") {
                Device::new_cuda(0).context("--device cuda: no usable CUDA device")
            } else {
                bail!("--device cuda: this binary was built without the `candle-cuda` feature")
            }
        }
        "auto" => {
            if cfg!(feature = "candle-cuda") {
                match Device::new_cuda(0) {
                    Ok(d) => Ok(d),
                    Err(e) => {
                        eprintln!("no CUDA device ({e}); training on the CPU");
                        Ok(Device::Cpu)
                    }
                }
            } else {
                Ok(Device::Cpu)
            }
        }
        other => bail!("--device {other:?}: use auto, cpu or cuda"),
    }
}

/// "70% 3, 30% 8" from one row of soft targets (classes by weight, largest first).
fn caption(targets: &[f32]) -> String {
    let mut w: Vec<(usize, f32)> = targets
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, t)| t > 0.005)
        .collect();
    w.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    w.iter()
        .map(|(c, t)| format!("{:.0}% {c}", t * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The one-cycle schedule (fastai's `fit_one_cycle` in spirit): linear warm-up over the first
/// 25% of the steps from lr/25, then cosine decay to lr/1e4.
fn one_cycle(lr: f64, step: usize, total: usize) -> f64 {
    let t = step as f64 / total.max(1) as f64;
    let warm = 0.25;
    if t < warm {
        let start = lr / 25.0;
        start + (lr - start) * t / warm
    } else {
        let p = (t - warm) / (1.0 - warm);
        let end = lr / 1e4;
        end + (lr - end) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
    }
}

/// Mean confidence and expected calibration error (10 equal-width bins) of `[n, C]` logits.
fn calibration(logits: &Tensor, labels: &[u32]) -> Result<(f64, f64)> {
    let probs =
        candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?.to_vec2::<f32>()?;
    let mut bins = [(0usize, 0f64, 0f64); 10]; // (count, Σ confidence, Σ correct)
    for (p, &y) in probs.iter().zip(labels) {
        let (k, &conf) = p
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .expect("at least one class");
        let bin = &mut bins[((conf * 10.0) as usize).min(9)];
        bin.0 += 1;
        bin.1 += f64::from(conf);
        bin.2 += f64::from(u8::from(k == y as usize));
    }
    let n = labels.len().max(1) as f64;
    let conf = bins.iter().map(|b| b.1).sum::<f64>() / n;
    let ece = bins.iter().map(|b| (b.1 - b.2).abs()).sum::<f64>() / n;
    Ok((conf, ece))
}

fn train(method: Method, seed: u64, s: &Setup, a: &Args, progress: &Progress) -> Result<Run> {
    let classes = s.digits.classes;
    let side = s.digits.side;
    let (net, vars) = Net::new(side, classes, seed, &s.dev)?;
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr: a.lr,
            ..Default::default()
        },
    )?;
    let sampler = method
        .config(classes)
        .map(|cfg| Sampler::new(cfg, seed))
        .transpose()?;
    let spec = CeSpec::new(classes, 0.0, Reduction::Mean);
    let batches = s.n_train.div_ceil(a.batch);
    let total_steps = a.epochs * batches;
    let valid_plan = MixPlan::identity(s.n_valid)?;

    let seed_note = if a.seeds > 1 {
        format!(" (seed {seed})")
    } else {
        String::new()
    };
    println!("\n{}{seed_note} — {}", method.name(), method.describe());
    println!(
        "{:<6} {:>11} {:>11} {:>9} {:>7}",
        "epoch", "train_loss", "valid_loss", "accuracy", "time"
    );
    let run_start = Instant::now();
    let mut rows = Vec::with_capacity(a.epochs);
    let mut sample = Vec::new();
    let mut step = 0u64;
    for epoch in 0..a.epochs {
        let t0 = Instant::now();
        // The batch order depends on (seed, epoch) only: the same for every run.
        let mut order: Vec<u32> = (0..s.n_train as u32).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(
            seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9),
        ));
        let mut loss_sum = 0.0;
        for (b, chunk) in order.chunks(a.batch).enumerate() {
            progress.show(method.name(), epoch, a.epochs, b, batches);
            let n = chunk.len();
            let idx = Tensor::from_slice(chunk, n, &s.dev)?;
            let xb = s.train_x.index_select(&idx, 0)?;
            let yb = s.train_y.index_select(&idx, 0)?;
            let plan = match &sampler {
                Some(sm) => sm.plan(0, step, n, (side, side))?,
                None => MixPlan::identity(n)?,
            };
            let xm = mix_images(&plan, &xb, ImageLayout::Nchw)?;
            if step == 0 && sampler.is_some() {
                sample = picture_cells(&plan, &xm, &yb, classes, side)?;
            }
            opt.set_learning_rate(one_cycle(a.lr, step as usize, total_steps));
            let logits = net.forward(&xm)?;
            let loss = mixup_cross_entropy(&logits, &yb, &plan, &spec)?;
            opt.backward_step(&loss)?;
            loss_sum += f64::from(loss.to_scalar::<f32>()?) * n as f64;
            step += 1;
        }
        progress.show(method.name(), epoch, a.epochs, batches, batches);
        // Validation: no mixing, no gradient (detached logits take the op's forward-only path).
        let logits = net.forward(&s.valid_x)?.detach();
        let valid_loss =
            mixup_cross_entropy(&logits, &s.valid_y, &valid_plan, &spec)?.to_scalar::<f32>()?;
        let correct = logits
            .argmax(D::Minus1)?
            .eq(&s.valid_y)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()?;
        let (confidence, ece) = calibration(&logits, &s.valid_labels)?;
        let row = Row {
            confidence,
            ece,
            epoch,
            train_loss: loss_sum / s.n_train as f64,
            valid_loss: f64::from(valid_loss),
            accuracy: f64::from(correct) / s.n_valid as f64,
            secs: t0.elapsed().as_secs_f64(),
        };
        progress.clear();
        println!(
            "{:<6} {:>11.6} {:>11.6} {:>9.6} {:>6.2}s",
            row.epoch, row.train_loss, row.valid_loss, row.accuracy, row.secs
        );
        rows.push(row);
    }
    Ok(Run {
        method,
        seed,
        rows,
        secs: run_start.elapsed().as_secs_f64(),
        sample,
    })
}

/// The first 12 samples of a mixed batch, with captions from the crate's soft targets.
fn picture_cells(
    plan: &MixPlan,
    xm: &Tensor,
    yb: &Tensor,
    classes: usize,
    side: usize,
) -> Result<Vec<plot::Cell>> {
    let t =
        soft_targets(plan, yb, &TargetSpec::new(classes, 0.0)?, DType::F32)?.to_vec2::<f32>()?;
    let px = xm.flatten_from(1)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    Ok(px
        .into_iter()
        .zip(t)
        .take(12)
        .map(|(pixels, row)| {
            debug_assert_eq!(pixels.len(), side * side);
            plot::Cell {
                pixels,
                caption: caption(&row),
            }
        })
        .collect())
}

fn main() -> Result<()> {
    let start = Instant::now();
    let a = parse_args()?;
    let dev = pick_device(&a.device)?;
    let digits = Digits::load(a.data.as_deref())?;
    if a.train == 0 || a.train >= digits.count {
        bail!("--train must be between 1 and {}", digits.count - 1);
    }
    let (train_idx, valid_idx) = digits.split(a.train, SPLIT_SEED);
    let (train_x, train_y) = digits.tensors(&train_idx, &dev)?;
    let (valid_x, valid_y) = digits.tensors(&valid_idx, &dev)?;
    let s = Setup {
        valid_labels: valid_y.to_vec1()?,
        n_train: train_idx.len(),
        n_valid: valid_idx.len(),
        dev,
        digits,
        train_x,
        train_y,
        valid_x,
        valid_y,
    };
    let progress = Progress {
        on: a
            .progress
            .unwrap_or_else(|| std::io::stderr().is_terminal()),
    };
    let (_, vars) = Net::new(s.digits.side, s.digits.classes, a.seed, &Device::Cpu)?;
    let device_name = match &s.dev {
        Device::Cpu => "CPU".to_string(),
        d => format!("{:?}", d.location()),
    };
    let seeds: Vec<u64> = (a.seed..a.seed + a.seeds).collect();
    println!(
        "digits 8x8 (UCI optdigits via scikit-learn): {} train / {} valid images, {} classes",
        s.n_train, s.n_valid, s.digits.classes
    );
    println!(
        "model: CNN, {} parameters; AdamW, one-cycle lr {}, batch {}, {} epochs, seed{} {}; device: {}",
        Net::count(&vars),
        a.lr,
        a.batch,
        a.epochs,
        if seeds.len() > 1 { "s" } else { "" },
        seed_list(&seeds),
        device_name
    );

    let mut runs = Vec::new();
    for &seed in &seeds {
        for &m in &a.runs {
            runs.push(train(m, seed, &s, &a, &progress)?);
        }
    }
    compare(&runs, &a, s.n_valid, &seeds);
    pictures(&mut runs, &a, &s, &seeds)?;
    println!("total time {:.1}s", start.elapsed().as_secs_f64());
    Ok(())
}

fn seed_list(seeds: &[u64]) -> String {
    match seeds {
        [one] => one.to_string(),
        [first, .., last] => format!("{first}-{last}"),
        [] => String::new(),
    }
}

/// Mean and sample standard deviation.
fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

/// The comparison table: final-epoch metrics per method (mean ± sd over seeds when several).
fn compare(runs: &[Run], a: &Args, n_valid: usize, seeds: &[u64]) {
    println!(
        "\ncomparison after {} epochs (same split, initial weights, batch order and epochs; \
         validation is never mixed{})",
        a.epochs,
        if seeds.len() > 1 {
            format!("; mean ± sd over {} seeds", seeds.len())
        } else {
            String::new()
        }
    );
    let multi = seeds.len() > 1;
    let w = if multi { 17 } else { 9 };
    println!(
        "{:<9} {:>w$} {:>w$} {:>w$} {:>w$} {:>w$} {:>8}",
        "run", "accuracy", "errors", "valid_loss", "confidence", "ECE", "time"
    );
    for m in &a.runs {
        let mine: Vec<&Run> = runs.iter().filter(|r| r.method == *m).collect();
        let last = |f: &dyn Fn(&Row) -> f64| -> Vec<f64> {
            mine.iter()
                .map(|r| f(r.rows.last().expect("an epoch")))
                .collect()
        };
        let cell = |v: Vec<f64>, digits: usize| {
            let (mu, sd) = mean_sd(&v);
            if multi {
                format!("{mu:.digits$} ± {sd:.digits$}")
            } else {
                format!("{mu:.digits$}")
            }
        };
        let secs: f64 = mine.iter().map(|r| r.secs).sum::<f64>() / mine.len() as f64;
        println!(
            "{:<9} {:>w$} {:>w$} {:>w$} {:>w$} {:>w$} {:>7.1}s",
            m.name(),
            cell(last(&|r| r.accuracy), 4),
            cell(last(&|r| (1.0 - r.accuracy) * n_valid as f64), 1),
            cell(last(&|r| r.valid_loss), 4),
            cell(last(&|r| r.confidence), 4),
            cell(last(&|r| r.ece), 4),
            secs
        );
    }
    let p = runs
        .iter()
        .map(|r| r.rows.last().expect("an epoch").accuracy)
        .sum::<f64>()
        / runs.len() as f64;
    println!(
        "errors = misclassified validation images of {n_valid}. At this accuracy one binomial \
         standard error is about {:.1} images{}; smaller gaps are noise.",
        (p * (1.0 - p) * n_valid as f64).sqrt(),
        if multi {
            ""
        } else {
            " (one seed: try --seeds 5)"
        }
    );
}

/// The two PNGs: mixed samples of the first seed's first batch, and the curves (mean over seeds).
fn pictures(runs: &mut [Run], a: &Args, s: &Setup, seeds: &[u64]) -> Result<()> {
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut written = Vec::new();
    let blocks: Vec<plot::Block> = runs
        .iter_mut()
        .filter(|r| r.seed == seeds[0] && !r.sample.is_empty())
        .map(|r| plot::Block {
            title: match r.method {
                Method::MixUp => "MixUp: fastai MixUp(0.4), first training batch".to_string(),
                _ => "CutMix: fastai CutMix(1.0), first training batch".to_string(),
            },
            cells: std::mem::take(&mut r.sample),
        })
        .collect();
    if !blocks.is_empty() {
        let path = a.out.join("mixed_samples.png");
        plot::sample_grid(&blocks, 6, s.digits.side).save(&path)?;
        written.push(path);
    }
    let mean_curve = |m: Method, f: &dyn Fn(&Row) -> f64| -> Vec<f64> {
        let mine: Vec<&Run> = runs.iter().filter(|r| r.method == m).collect();
        (0..a.epochs)
            .map(|e| mine.iter().map(|r| f(&r.rows[e])).sum::<f64>() / mine.len() as f64)
            .collect()
    };
    let series = |f: &dyn Fn(&Row) -> f64| -> Vec<plot::Series> {
        a.runs
            .iter()
            .map(|&m| plot::Series {
                name: m.name(),
                values: mean_curve(m, f),
            })
            .collect()
    };
    let subtitle = format!(
        "8x8 digits, {} train / {} valid, CNN, AdamW one-cycle, batch {}, {}{}",
        s.n_train,
        s.n_valid,
        a.batch,
        if seeds.len() > 1 {
            "mean of seeds "
        } else {
            "seed "
        },
        seed_list(seeds)
    );
    let path = a.out.join("training_curves.png");
    plot::curves(
        &series(&|r| r.accuracy),
        &series(&|r| r.valid_loss),
        &subtitle,
    )
    .save(&path)?;
    written.push(path);
    for p in &written {
        println!("wrote {}", p.display());
    }
    Ok(())
}
