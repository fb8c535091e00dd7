//! What the candle demo (`examples/digits.rs`) and the burn demo (`examples/digits_burn.rs`)
//! share, so that both train the same way and print the same tables: the three runs, the
//! learning-rate schedule, the batch order, the mixing plans, the calibration scores and the
//! per-epoch and comparison tables. Nothing here knows the framework.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::ValueEnum;
use mixup_kernels::{CeSpec, ImageSize, MixConfig, MixPlan, Reduction, Sampler};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// The `--runs` flag of both demos.
#[derive(clap::Args, Debug)]
pub struct Runs {
    /// Which runs, comma-separated
    #[arg(
        long = "runs",
        value_name = "RUNS",
        value_enum,
        value_delimiter = ',',
        default_value = "none,mixup,cutmix"
    )]
    pub methods: Vec<Method>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// Plain cross-entropy on the unmixed batch
    None,
    /// fastai v2 MixUp(alpha=0.4)
    #[value(name = "mixup")]
    MixUp,
    /// fastai v2 CutMix(alpha=1.0)
    #[value(name = "cutmix")]
    CutMix,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::None => "no mixup",
            Method::MixUp => "MixUp",
            Method::CutMix => "CutMix",
        }
    }

    pub fn describe(self) -> &'static str {
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

    /// The run's sampler (none without mixing) and its loss's spec. The loss takes the
    /// sampler's classes and label smoothing (one source of truth); without mixing it is the
    /// plain cross-entropy.
    pub fn sampler_and_spec(self, classes: usize, seed: u64) -> Result<(Option<Sampler>, CeSpec)> {
        let config = match self {
            Method::None => None,
            Method::MixUp => Some(MixConfig::fastai_v2_mixup(classes)),
            Method::CutMix => Some(MixConfig::fastai_v2_cutmix(classes)),
        };
        let sampler = config.map(|c| Sampler::new(c, seed)).transpose()?;
        let spec = match &sampler {
            Some(sm) => sm.config().ce_spec(Reduction::Mean)?,
            None => CeSpec::new(classes, 0.0, Reduction::Mean)?,
        };
        Ok((sampler, spec))
    }
}

/// The plan of training step `step`'s `n` images (`side`×`side`): drawn by the sampler, or the
/// identity without mixing (the fused ops then only normalize, and the loss is the plain
/// cross-entropy).
pub fn draw_plan(sampler: Option<&Sampler>, step: u64, n: usize, side: usize) -> Result<MixPlan> {
    Ok(match sampler {
        Some(sm) => sm.plan_images(
            step,
            n,
            ImageSize {
                height: side,
                width: side,
            },
        )?,
        None => MixPlan::identity(n)?,
    })
}

/// The order of the training images in an epoch. It depends on (seed, epoch) only: the same for
/// every run.
pub fn batch_order(n_train: usize, seed: u64, epoch: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n_train as u32).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(
        seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9),
    ));
    order
}

/// The one-cycle schedule (fastai's `fit_one_cycle` in spirit): linear warm-up over the first
/// 25% of the steps from lr/25, then cosine decay to lr/1e4.
pub fn one_cycle(lr: f64, step: usize, total: usize) -> f64 {
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

/// The predicted class of one image's class probabilities: its probability (the confidence)
/// and whether it is `label`.
pub fn prediction(probs: &[f32], label: usize) -> (f32, bool) {
    let (k, &conf) = probs
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .expect("at least one class");
    (conf, k == label)
}

/// Mean confidence and expected calibration error (10 equal-width confidence bins) of the
/// predictions `(confidence, right)`, one per image.
pub fn calibration(predictions: impl IntoIterator<Item = (f32, bool)>) -> (f64, f64) {
    let mut bins = [(0usize, 0f64, 0f64); 10]; // (count, Σ confidence, Σ correct)
    let mut n = 0usize;
    for (conf, right) in predictions {
        let bin = &mut bins[((conf * 10.0) as usize).min(9)];
        bin.0 += 1;
        bin.1 += f64::from(conf);
        bin.2 += f64::from(u8::from(right));
        n += 1;
    }
    let n = n.max(1) as f64;
    let confidence = bins.iter().map(|b| b.1).sum::<f64>() / n;
    let ece = bins.iter().map(|b| (b.1 - b.2).abs()).sum::<f64>() / n;
    (confidence, ece)
}

/// The scores on the validation set after an epoch.
pub struct Validation {
    pub loss: f64,
    pub accuracy: f64,
    /// Mean probability of the predicted class (how sure the model is).
    pub confidence: f64,
    /// Expected calibration error over 10 equal-width confidence bins.
    pub ece: f64,
}

/// One epoch of a run.
pub struct Row {
    pub train_loss: f64,
    pub valid: Validation,
    /// Training time of the epoch (no validation).
    pub train_secs: f64,
    /// Of which drawing the plan and turning the batch's pixels into the model's input.
    pub mix_secs: f64,
}

/// The clock and the sums of one training epoch, started before its first batch.
pub struct Epoch {
    start: Instant,
    /// Time spent drawing plans and turning pixels into the model's input.
    pub mixing: Duration,
    /// Σ over the batches of the batch's mean loss × its size.
    pub loss_sum: f64,
}

impl Epoch {
    pub fn start() -> Self {
        Epoch {
            start: Instant::now(),
            mixing: Duration::ZERO,
            loss_sum: 0.0,
        }
    }

    /// Ends epoch `epoch` after its last batch: validates, then prints the epoch's row of the
    /// table under [`print_epoch_header`] through `print` (which may step around a progress bar).
    pub fn finish(
        self,
        epoch: usize,
        n_train: usize,
        validate: impl FnOnce() -> Result<Validation>,
        print: impl FnOnce(&str),
    ) -> Result<Row> {
        let train_secs = self.start.elapsed().as_secs_f64();
        let row = Row {
            train_loss: self.loss_sum / n_train as f64,
            valid: validate()?,
            train_secs,
            mix_secs: self.mixing.as_secs_f64(),
        };
        print(&format!(
            "{:<6} {:>11.6} {:>11.6} {:>9.6} {:>6.2}s {:>8.0}",
            epoch,
            row.train_loss,
            row.valid.loss,
            row.valid.accuracy,
            self.start.elapsed().as_secs_f64(),
            n_train as f64 / row.train_secs
        ));
        Ok(row)
    }
}

/// The head of a run's per-epoch table.
pub fn print_epoch_header() {
    println!(
        "{:<6} {:>11} {:>11} {:>9} {:>7} {:>8}",
        "epoch", "train_loss", "valid_loss", "accuracy", "time", "img/s"
    );
}

/// Mean and standard error of the mean (sample standard deviation / √n; 0 for one value).
pub fn mean_se(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, (var / n).sqrt())
}

/// The comparison, as a Markdown table: one line per method with the final-epoch scores of its
/// runs (mean ± standard error when there are several seeds), training speed and the share of
/// it spent mixing. `runs`: each method's runs, one per seed, each its rows.
pub fn print_comparison(
    runs: &[(Method, Vec<&[Row]>)],
    epochs: usize,
    seeds: usize,
    n_train: usize,
    n_valid: usize,
) {
    let multi = seeds > 1;
    println!(
        "\ncomparison after {} epochs (same split, initial weights, batch order and epochs; \
         validation is never mixed{})\n",
        epochs,
        if multi {
            format!("; mean ± standard error over {seeds} seeds")
        } else {
            String::new()
        }
    );
    println!(
        "| run | accuracy | errors of {n_valid} | valid loss | ECE | confidence | train img/s | mixing ms/epoch (share) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (m, mine) in runs {
        let last = |f: &dyn Fn(&Row) -> f64| -> Vec<f64> {
            mine.iter()
                .map(|rows| f(rows.last().expect("an epoch")))
                .collect()
        };
        let cell = |v: Vec<f64>, digits: usize| {
            let (mu, se) = mean_se(&v);
            if multi {
                format!("{mu:.digits$} ± {se:.digits$}")
            } else {
                format!("{mu:.digits$}")
            }
        };
        let all_rows = || mine.iter().flat_map(|rows| rows.iter());
        let train_secs: f64 = all_rows().map(|r| r.train_secs).sum();
        let mix_secs: f64 = all_rows().map(|r| r.mix_secs).sum();
        let epochs = all_rows().count() as f64;
        let images = epochs * n_train as f64;
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.0} | {:.1} ({:.2}%) |",
            m.name(),
            cell(last(&|r| r.valid.accuracy), 4),
            cell(last(&|r| (1.0 - r.valid.accuracy) * n_valid as f64), 1),
            cell(last(&|r| r.valid.loss), 4),
            cell(last(&|r| r.valid.ece), 4),
            cell(last(&|r| r.valid.confidence), 3),
            images / train_secs,
            1e3 * mix_secs / epochs,
            100.0 * mix_secs / train_secs,
        );
    }
}
