//! Mix a small batch on the CPU, print the plan, the soft targets and the mixup loss.
//!
//! `cargo run --release --example quickstart`

use mixup_kernels::{
    GradOutput, ImageSize, MixConfig, Mode, Reduction, SampleShape, Sampler, cpu, reference,
};

fn main() -> anyhow::Result<()> {
    let (batch, channels, height, width, classes) = (8usize, 3usize, 8usize, 8usize, 10usize);
    // timm-style: MixUp or CutMix per sample, flip partner, label smoothing 0.1.
    let config = MixConfig {
        mixup_alpha: 0.8,
        cutmix_alpha: 1.0,
        mode: Mode::Elem,
        ..MixConfig::timm(classes)
    };
    let sampler = Sampler::new(config.clone(), 42)?;
    let plan = sampler.plan_images(0, batch, ImageSize { height, width })?;
    println!("plan for rank 0, step 0:\n{plan}");

    // A deterministic batch: sample i is filled with the value i (so the mix is easy to read).
    let shape = SampleShape::channels_first(channels, height, width);
    let per_sample = channels * height * width;
    let x: Vec<f32> = (0..batch * per_sample)
        .map(|k| (k / per_sample) as f32)
        .collect();
    let mut mixed = vec![0.0f32; x.len()];
    cpu::mix(&plan, &shape, &x, &mut mixed)?;
    for i in 0..batch {
        let row = &mixed[i * per_sample..(i + 1) * per_sample];
        let mean = row.iter().sum::<f32>() / per_sample as f32;
        println!("sample {i}: mean of mixed pixels {mean:.3}");
    }

    let labels: Vec<u32> = (0..batch as u32).map(|i| i % classes as u32).collect();
    let mut targets = vec![0.0f32; batch * classes];
    // The plan carries the config's classes and label smoothing; the spec must say the same.
    cpu::soft_targets(&plan, &config.target_spec()?, &labels, &mut targets)?;
    println!("\nsoft target of sample 0: {:?}", &targets[..classes]);

    let logits: Vec<f32> = (0..batch * classes)
        .map(|k| ((k * 37 % 17) as f32 - 8.0) / 4.0)
        .collect();
    let spec = config.ce_spec(Reduction::Mean)?;
    let mut grad = vec![0.0f32; logits.len()];
    let loss = cpu::mixup_ce(
        &plan,
        &spec,
        &logits,
        &labels,
        GradOutput::default(),
        None,
        &mut grad,
    )?;
    let oracle = reference::mixup_ce(&plan, &spec, &logits, &labels, GradOutput::default())?;
    let grad_err = grad
        .iter()
        .zip(&oracle.grad)
        .map(|(g, r)| (*g as f64 - r).abs())
        .fold(0.0, f64::max);
    // `Some` for Mean and Sum; Reduction::None would return None and fill `losses`.
    let (loss, want) = (loss.unwrap_or(f32::NAN), oracle.loss.unwrap_or(f64::NAN));
    println!("\nmixup cross-entropy (mean): {loss:.6} (f64 reference {want:.6})");
    println!("largest gradient difference from the reference: {grad_err:.2e}");
    Ok(())
}
