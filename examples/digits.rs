//! Training with and without mixup on real data: the same seed, split, initial weights, batch
//! order and epochs three times: without mixing, with MixUp and with CutMix (fastai's presets,
//! drawn by this crate's `Sampler`, mixed and scored by its candle ops).
//!
//! Two data sets:
//! - the 8×8 handwritten digits (UCI optdigits, as shipped by scikit-learn; `data/README.md`),
//!   built into the binary, with a small CNN (the default);
//! - Fashion-MNIST (`--data fashion-mnist`, 28×28, from Debian's `dataset-fashion-mnist`) with a
//!   small ResNet.
//!
//! Prints one row per epoch like the fastai documents, a comparison over seeds at the end
//! (accuracy with its standard error, validation loss, calibration, images per second and the
//! time spent mixing), and writes two pictures: mixed samples with their soft labels, and the
//! validation curves.
//!
//! ```sh
//! cargo run --release --example digits --features candle                      # CPU
//! cargo run --release --example digits --features candle -- --data fashion-mnist
//! cargo run --release --example digits --no-default-features --features candle-cuda  # GPU
//! cargo run --release --example digits --features candle -- --help
//! ```

// The helpers live in examples/digits/ (a crate root resolves `mod x;` beside itself).
#[path = "digits/common.rs"]
mod common;
#[path = "digits/data.rs"]
mod data;
#[path = "digits/model.rs"]
mod model;
#[path = "digits/plot.rs"]
mod plot;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{D, DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mixup_kernels::candle::{mix_normalize, mixup_cross_entropy, soft_targets};
use mixup_kernels::{CeSpec, MemoryFormat, MixPlan, Normalize, TargetSpec};

use common::{Epoch, Method, Row, Validation};
use data::DataSet;
use model::{Arch, Model};

/// The split is fixed (not `--seed`): every run and every seed sees the same images.
const SPLIT_SEED: u64 = 0x5EED_D161;

/// Train a small network without mixing, with MixUp and with CutMix, and compare.
///
/// Defaults depend on the data set and the device; the first lines of the output say what was
/// chosen. Digits: CNN, 1000 train / 797 valid, batch 64, lr 0.003, 30 epochs, 1 seed.
/// Fashion-MNIST on the CPU: ResNet of width 8, 4000 train / 2000 valid (fixed subsets),
/// batch 32, lr 0.01, 4 epochs, 3 seeds (about 10 minutes on 2 busy cores); on a GPU: width 16,
/// all 60000 / 10000, batch 128, lr 0.01, 15 epochs, 5 seeds.
#[derive(Parser, Debug)]
#[command(name = "digits")]
struct Args {
    /// digits (built in), fashion-mnist (Debian's package), or a FILE in the digits.bin format
    #[arg(long, default_value = "digits", value_name = "DATA")]
    data: String,
    /// Folder of the four Fashion-MNIST idx .gz files [default: /usr/share/datasets/fashion-mnist]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Epochs per run
    #[arg(long)]
    epochs: Option<usize>,
    /// Batch size
    #[arg(long)]
    batch: Option<usize>,
    /// Peak learning rate of AdamW, one-cycle schedule [default: 0.003 digits, 0.01 Fashion-MNIST]
    #[arg(long)]
    lr: Option<f64>,
    /// Initial weights, batch order and mixing draws of the first seed
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Repeat everything for seeds seed..seed+N-1; the comparison shows mean ± standard error
    #[arg(long, value_name = "N")]
    seeds: Option<u64>,
    /// Training images (digits: the rest validate; Fashion-MNIST: a fixed subset of the 60000)
    #[arg(long, value_name = "N")]
    train: Option<usize>,
    /// Validation images (Fashion-MNIST: a fixed subset of the 10000 test images)
    #[arg(long, value_name = "N")]
    valid: Option<usize>,
    #[command(flatten)]
    runs: common::Runs,
    /// The network [default: cnn for the digits, resnet for Fashion-MNIST]
    #[arg(long, value_enum)]
    model: Option<Arch>,
    /// Channels of the ResNet's first stage, then 2x and 4x [default: 8 on the CPU, 16 on a GPU]
    #[arg(long)]
    width: Option<usize>,
    /// auto: the GPU when built with the candle-cuda feature and one is present, else the CPU
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
    /// Where the two PNGs go [default: target/digits or target/fashion-mnist]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Never show the progress bar (it is only shown when stderr is a terminal anyway)
    #[arg(long)]
    no_progress: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DeviceChoice {
    Auto,
    Cpu,
    Cuda,
}

/// The settings once the data set's and device's defaults are filled in.
struct Settings {
    epochs: usize,
    batch: usize,
    lr: f64,
    seeds: Vec<u64>,
    arch: Arch,
    width: usize,
    out: PathBuf,
}

struct Run {
    method: Method,
    seed: u64,
    rows: Vec<Row>,
    /// The first mixed batch (for the picture).
    sample: Vec<plot::Cell>,
}

/// Everything a run needs, built once and shared by all runs.
struct Setup {
    dev: Device,
    data: DataSet,
    /// The training images' u8 pixels, on the CPU: each batch goes through `mix_normalize`.
    train_px: Tensor,
    /// Pixels 0..=max to 0..=1.
    norm: Normalize,
    train_y: Tensor,
    valid_x: Tensor,
    valid_y: Tensor,
    valid_labels: Vec<u32>,
}

fn pick_device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda => {
            if cfg!(feature = "candle-cuda") {
                Device::new_cuda(0).context("--device cuda: no usable CUDA device")
            } else {
                bail!("--device cuda: this binary was built without the `candle-cuda` feature")
            }
        }
        DeviceChoice::Auto => {
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
    }
}

/// Mean confidence and expected calibration error (10 equal-width bins) of `[n, C]` logits.
fn calibration(logits: &Tensor, labels: &[u32]) -> Result<(f64, f64)> {
    let probs =
        candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?.to_vec2::<f32>()?;
    let predictions = probs.iter().zip(labels);
    Ok(common::calibration(
        predictions.map(|(p, &y)| common::prediction(p, y as usize)),
    ))
}

/// Waits for the device (a no-op on the CPU, where candle's ops are synchronous), so that the
/// mixing time measured around it is the mixing's own.
fn sync(dev: &Device) -> Result<()> {
    if !dev.is_cpu() {
        dev.synchronize()?;
    }
    Ok(())
}

/// The progress bar of one run on stderr; hidden when stderr is not a terminal or with
/// `--no-progress`. Table rows go to stdout through `suspend`, so they never mix with it.
fn progress_bar(steps: usize, label: String, hidden: bool) -> ProgressBar {
    let target = if hidden {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(Some(steps as u64), target);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:28}] {pos}/{len} steps, epoch {msg} ({elapsed}, about {eta} left)",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(label);
    bar
}

fn train(method: Method, seed: u64, s: &Setup, a: &Args, cfg: &Settings) -> Result<Run> {
    let classes = s.data.classes;
    let side = s.data.side;
    let n_train = s.data.train.count;
    let (net, vars) = Model::new(cfg.arch, side, classes, cfg.width, seed, &s.dev)?;
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr: cfg.lr,
            ..Default::default()
        },
    )?;
    let (sampler, spec) = method.sampler_and_spec(classes, seed)?;
    let batches = n_train.div_ceil(cfg.batch);
    let total_steps = cfg.epochs * batches;

    let seed_note = if cfg.seeds.len() > 1 {
        format!(" (seed {seed})")
    } else {
        String::new()
    };
    println!("\n{}{seed_note} — {}", method.name(), method.describe());
    common::print_epoch_header();
    let bar = progress_bar(
        total_steps,
        format!("{}{seed_note}", method.name()),
        a.no_progress,
    );
    let mut rows = Vec::with_capacity(cfg.epochs);
    let mut sample = Vec::new();
    let mut step = 0u64;
    for epoch in 0..cfg.epochs {
        bar.set_message(format!("{}/{}", epoch + 1, cfg.epochs));
        let mut ep = Epoch::start();
        for chunk in common::batch_order(n_train, seed, epoch).chunks(cfg.batch) {
            let n = chunk.len();
            let idx = Tensor::from_slice(chunk, n, &s.dev)?;
            let pixels = s
                .train_px
                .index_select(&Tensor::from_slice(chunk, n, &Device::Cpu)?, 0)?;
            let yb = s.train_y.index_select(&idx, 0)?;
            // Pixels to the model's input, timed on its own: the plan drawn on the host, then
            // one fused op on the CPU (mix, normalize, u8 -> f32) as a data loader runs it, and
            // the upload. Without mixing the plan is the identity: normalize only.
            sync(&s.dev)?;
            let tm = Instant::now();
            let plan = common::draw_plan(sampler.as_ref(), step, n, side)?;
            let first = MemoryFormat::ChannelsFirst;
            let x = mix_normalize(&plan, first, &s.norm, &pixels, first, DType::F32)?
                .to_device(&s.dev)?;
            sync(&s.dev)?;
            ep.mixing += tm.elapsed();
            if step == 0 && sampler.is_some() {
                sample = picture_cells(&plan, &x, &yb, &s.data)?;
            }
            opt.set_learning_rate(common::one_cycle(cfg.lr, step as usize, total_steps));
            let logits = net.forward(&x, true)?;
            // The fused loss; with the identity plan it is the plain cross-entropy.
            let loss = mixup_cross_entropy(&plan, &spec, &logits, &yb)?;
            opt.backward_step(&loss)?;
            ep.loss_sum += f64::from(loss.to_scalar::<f32>()?) * n as f64;
            step += 1;
            bar.inc(1);
        }
        let validate = || evaluate(&net, s, &spec);
        rows.push(ep.finish(epoch, n_train, validate, |line| {
            bar.suspend(|| println!("{line}"))
        })?);
    }
    bar.finish_and_clear();
    Ok(Run {
        method,
        seed,
        rows,
        sample,
    })
}

/// Validation: no mixing, no gradient, batch norms on their running statistics; in chunks so
/// the activations of a large validation set never sit in memory at once.
fn evaluate(net: &Model, s: &Setup, spec: &CeSpec) -> Result<Validation> {
    let n = s.data.valid.count;
    let mut parts = Vec::new();
    for start in (0..n).step_by(1000) {
        let len = 1000.min(n - start);
        parts.push(
            net.forward(&s.valid_x.narrow(0, start, len)?, false)?
                .detach(),
        );
    }
    let logits = Tensor::cat(&parts, 0)?;
    // Detached logits take the fused loss's forward-only path.
    let valid_loss = mixup_cross_entropy(&MixPlan::identity(n)?, spec, &logits, &s.valid_y)?
        .to_scalar::<f32>()?;
    let correct = logits
        .argmax(D::Minus1)?
        .eq(&s.valid_y)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    let (confidence, ece) = calibration(&logits, &s.valid_labels)?;
    Ok(Validation {
        loss: f64::from(valid_loss),
        accuracy: f64::from(correct) / n as f64,
        confidence,
        ece,
    })
}

/// The first 12 samples of a mixed batch, with their soft labels from the crate's
/// `soft_targets`.
fn picture_cells(
    plan: &MixPlan,
    xm: &Tensor,
    yb: &Tensor,
    data: &DataSet,
) -> Result<Vec<plot::Cell>> {
    let spec = match plan.targets() {
        Some(t) => *t, // a drawn plan: its config's spec
        None => TargetSpec::new(data.classes, 0.0)?,
    };
    let t = soft_targets(plan, &spec, yb, DType::F32)?.to_vec2::<f32>()?;
    let px = xm.flatten_from(1)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    Ok(px
        .into_iter()
        .zip(t)
        .take(12)
        .map(|(pixels, row)| {
            let mut label: Vec<(String, f32)> = row
                .iter()
                .enumerate()
                .filter(|&(_, &w)| w > 0.005)
                .map(|(c, &w)| (data.class_names[c].to_string(), w))
                .collect();
            label.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            plot::Cell { pixels, label }
        })
        .collect())
}

/// Reads the data named by `--data` with the data set's defaults filled in.
fn load(a: &Args, dev: &Device) -> Result<(DataSet, Settings)> {
    let gpu = !dev.is_cpu();
    let fashion = a.data == "fashion-mnist";
    let data = if fashion {
        let (train, valid) = if gpu {
            (60_000, 10_000)
        } else {
            (4_000, 2_000)
        };
        data::fashion_mnist(
            a.data_dir.as_deref(),
            a.train.unwrap_or(train),
            a.valid.unwrap_or(valid),
            SPLIT_SEED,
        )?
    } else {
        if a.valid.is_some() {
            bail!("--valid is for Fashion-MNIST; the digits validate on what --train leaves");
        }
        let path = (a.data != "digits").then(|| PathBuf::from(&a.data));
        if let Some(p) = path.as_deref().filter(|p| !p.exists()) {
            bail!(
                "--data {}: no such file; use digits, fashion-mnist or a digits.bin file",
                p.display()
            );
        }
        data::digits(path.as_deref(), a.train.unwrap_or(1000), SPLIT_SEED)?
    };
    let (epochs, batch, lr, seeds, arch, width, out) = match (fashion, gpu) {
        (false, _) => (30, 64, 3e-3, 1, Arch::Cnn, 16, "target/digits"),
        (true, false) => (4, 32, 1e-2, 3, Arch::Resnet, 8, "target/fashion-mnist"),
        (true, true) => (15, 128, 1e-2, 5, Arch::Resnet, 16, "target/fashion-mnist"),
    };
    let cfg = Settings {
        epochs: a.epochs.unwrap_or(epochs),
        batch: a.batch.unwrap_or(batch),
        lr: a.lr.unwrap_or(lr),
        seeds: (a.seed..a.seed + a.seeds.unwrap_or(seeds)).collect(),
        arch: a.model.unwrap_or(arch),
        width: a.width.unwrap_or(width),
        out: a.out.clone().unwrap_or_else(|| PathBuf::from(out)),
    };
    if cfg.epochs == 0 || cfg.batch == 0 || cfg.seeds.is_empty() || a.runs.methods.is_empty() {
        bail!("--epochs, --batch, --seeds and --runs must not be zero or empty");
    }
    if cfg.arch == Arch::Cnn && data.side % 2 != 0 {
        bail!("the CNN needs an even image side");
    }
    Ok((data, cfg))
}

fn main() -> std::process::ExitCode {
    let a = Args::parse();
    match run(a) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(a: Args) -> Result<()> {
    let start = Instant::now();
    let dev = pick_device(a.device)?;
    let (data, cfg) = load(&a, &dev)?;
    let (train_px, train_y) = data.train.tensors(&dev)?;
    let (valid_px, valid_y) = data.valid.tensors(&dev)?;
    let norm = data.train.normalize()?;
    let first = MemoryFormat::ChannelsFirst;
    let identity = MixPlan::identity(data.valid.count)?;
    let valid_x =
        mix_normalize(&identity, first, &norm, &valid_px, first, DType::F32)?.to_device(&dev)?;
    let s = Setup {
        valid_labels: valid_y.to_vec1()?,
        dev,
        data,
        train_px,
        norm,
        train_y,
        valid_x,
        valid_y,
    };
    let (probe, vars) = Model::new(
        cfg.arch,
        s.data.side,
        s.data.classes,
        cfg.width,
        a.seed,
        &Device::Cpu,
    )?;
    let device_name = match &s.dev {
        Device::Cpu => format!(
            "CPU ({} threads)",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
        d => format!("{:?}", d.location()),
    };
    println!(
        "{}: {} train / {} valid images, {} classes",
        s.data.title, s.data.train.count, s.data.valid.count, s.data.classes
    );
    println!(
        "model: {}; AdamW, one-cycle lr {}, batch {}, {} epochs, seed{} {}; device: {}",
        probe.describe(&vars),
        cfg.lr,
        cfg.batch,
        cfg.epochs,
        if cfg.seeds.len() > 1 { "s" } else { "" },
        seed_list(&cfg.seeds),
        device_name
    );

    let mut runs = Vec::new();
    for &seed in &cfg.seeds {
        for &m in &a.runs.methods {
            runs.push(train(m, seed, &s, &a, &cfg)?);
        }
    }
    compare(&runs, &a, &cfg, s.data.train.count, s.data.valid.count);
    pictures(&mut runs, &a, &cfg, &s)?;
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

/// The comparison table (`common::print_comparison`), then what its columns mean and how far
/// one run's accuracy can be trusted.
fn compare(runs: &[Run], a: &Args, cfg: &Settings, n_train: usize, n_valid: usize) {
    let multi = cfg.seeds.len() > 1;
    let by_method: Vec<(Method, Vec<&[Row]>)> = a
        .runs
        .methods
        .iter()
        .map(|&m| {
            let mine = runs.iter().filter(|r| r.method == m);
            (m, mine.map(|r| r.rows.as_slice()).collect())
        })
        .collect();
    common::print_comparison(&by_method, cfg.epochs, cfg.seeds.len(), n_train, n_valid);
    let p = runs
        .iter()
        .map(|r| r.rows.last().expect("an epoch").valid.accuracy)
        .sum::<f64>()
        / runs.len() as f64;
    println!(
        "\nerrors = misclassified validation images. At this accuracy one binomial standard \
         error of a single run is about {:.1} images{}. ECE: expected calibration error \
         (10 bins); confidence: mean probability of the predicted class. img/s: training only \
         (no validation); mixing: drawing the plan and the fused mix + normalize (u8 -> f32, \
         `mix_normalize`) with the upload, timed on its own.",
        (p * (1.0 - p) * n_valid as f64).sqrt(),
        if multi {
            ""
        } else {
            " (one seed: try --seeds 5)"
        }
    );
}

/// The two PNGs: mixed samples of the first seed's first batch, and the validation curves
/// (mean over seeds, ± one standard error shaded).
fn pictures(runs: &mut [Run], a: &Args, cfg: &Settings, s: &Setup) -> Result<()> {
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("creating {}", cfg.out.display()))?;
    let mut written = Vec::new();
    let first = cfg.seeds[0];
    let blocks: Vec<plot::Block> = runs
        .iter_mut()
        .filter(|r| r.seed == first && !r.sample.is_empty())
        .map(|r| plot::Block {
            title: format!(
                "{}, first training batch (seed {first}); caption: the soft label",
                match r.method {
                    Method::MixUp => "MixUp: fastai MixUp(alpha=0.4)",
                    _ => "CutMix: fastai CutMix(alpha=1.0)",
                }
            ),
            cells: std::mem::take(&mut r.sample),
        })
        .collect();
    if !blocks.is_empty() {
        let path = cfg.out.join("mixed_samples.png");
        plot::sample_grid(&blocks, 6, s.data.side, &path)?;
        written.push(path);
    }
    let series = |f: &dyn Fn(&Row) -> f64| -> Vec<plot::Series> {
        a.runs
            .methods
            .iter()
            .map(|&m| {
                let mine: Vec<&Run> = runs.iter().filter(|r| r.method == m).collect();
                let (mean, se) = (0..cfg.epochs)
                    .map(|e| {
                        common::mean_se(&mine.iter().map(|r| f(&r.rows[e])).collect::<Vec<_>>())
                    })
                    .unzip();
                plot::Series {
                    name: m.name(),
                    mean,
                    se,
                }
            })
            .collect()
    };
    let panels = [
        plot::Panel {
            title: "validation accuracy",
            series: series(&|r| r.valid.accuracy),
        },
        plot::Panel {
            title: "validation loss",
            series: series(&|r| r.valid.loss),
        },
        plot::Panel {
            title: "calibration error (ECE)",
            series: series(&|r| r.valid.ece),
        },
    ];
    let title = format!(
        "{}, {} train / {} valid, {}, batch {}, {}",
        s.data.title,
        s.data.train.count,
        s.data.valid.count,
        match cfg.arch {
            Arch::Cnn => "CNN",
            Arch::Resnet => "ResNet",
        },
        cfg.batch,
        if cfg.seeds.len() > 1 {
            format!("mean of seeds {} (band: ± 1 s.e.)", seed_list(&cfg.seeds))
        } else {
            format!("seed {}", cfg.seeds[0])
        }
    );
    let path = cfg.out.join("training_curves.png");
    plot::curves(&panels, &title, &path)?;
    written.push(path);
    for p in &written {
        println!("wrote {}", p.display());
    }
    Ok(())
}
