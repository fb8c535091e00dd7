//! The unfused baseline (`benches/gpu/naive.cu`): the same operations written the way a first
//! port (or PyTorch eager) computes them, one launch per step and every intermediate in device
//! memory. Part of the benchmark only, not of the library; benches/gpu.rs checks each op's
//! output against the fused kernel's before timing it.
//!
//! - mix: gather `tmp[i] = x[partner(i)]`, lerp (CutMix samples copy `x`), paste the boxes.
//! - soft targets: two f32 one-hot tensors, then a blend.
//! - mixup CE: soft targets as above (f32), log-softmax, per-row loss, reduction, gradient.

use std::collections::HashMap;
use std::sync::Arc;

use mixup_kernels::cuda::cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};
use mixup_kernels::cuda::cudarc::nvrtc::Ptx;
use mixup_kernels::cuda::kernels::{ModuleSource, Target, compile, options};
use mixup_kernels::{
    CeSpec, Element, MemoryFormat, MixPlan, Reduction, SampleShape, ScalarType, TargetSpec,
};

use super::Res;

static NAIVE: ModuleSource = ModuleSource {
    name: "naive",
    source: concat!(
        include_str!("../../kernels/common.cuh"),
        "\n#line 1 \"naive.cu\"\n",
        include_str!("naive.cu")
    ),
    hash: 0,
};

/// `count` blocks of 256 threads (at least one, at most the grid's limit).
fn blocks(count: u64) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (count.clamp(1, (1 << 31) - 1) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One thread per element.
fn elementwise(n: u64) -> LaunchConfig {
    blocks(n.div_ceil(256))
}

/// One block per row.
fn per_row(rows: u64) -> LaunchConfig {
    blocks(rows)
}

/// `launch!(stream, kernel, config; args...)`: one launch, the arguments pushed in the order of
/// the kernel's parameters in benches/gpu/naive.cu. Unsafe as `launch` is: the caller checks
/// that the list matches the kernel's.
macro_rules! launch {
    ($s:expr, $f:expr, $cfg:expr; $($arg:expr),+ $(,)?) => {
        $s.launch_builder($f)$(.arg(&$arg))+.launch($cfg)
    };
}

/// The naive kernels, compiled once for the device (all dtypes in one NVRTC compilation).
pub struct Naive {
    stream: Arc<CudaStream>,
    funcs: HashMap<String, CudaFunction>,
}

/// The functions of one dtype, looked up before timing.
pub struct Kernels<'a> {
    gather: &'a CudaFunction,
    lerp: &'a CudaFunction,
    paste: &'a CudaFunction,
    float: Option<[&'a CudaFunction; 3]>, // blend, log_softmax, grad (not for u8)
    one_hot: &'a CudaFunction,
    row_loss: &'a CudaFunction,
    reduce: &'a CudaFunction,
}

/// A plan as the naive kernels read it: 32 bytes per sample (`struct PlanEntry`).
pub struct NaivePlan {
    buf: CudaSlice<u32>,
    batch: usize,
    has_cutmix: bool,
}

/// f32 scratch of the naive soft targets and cross-entropy (`[B, C]` or `[B]`).
pub struct NaiveBuffers {
    /// The two one-hots of the soft targets.
    pub y: [CudaSlice<f32>; 2],
    t: CudaSlice<f32>,
    logp: CudaSlice<f32>,
    losses: CudaSlice<f32>,
}

impl NaiveBuffers {
    pub fn new(stream: &Arc<CudaStream>, batch: usize, classes: usize) -> Res<Self> {
        let n = (batch * classes).max(1);
        Ok(Self {
            y: [stream.alloc_zeros(n)?, stream.alloc_zeros(n)?],
            t: stream.alloc_zeros(n)?,
            logp: stream.alloc_zeros(n)?,
            losses: stream.alloc_zeros(batch.max(1))?,
        })
    }
}

impl Naive {
    /// Compiles benches/gpu/naive.cu for `sm_<cc>` and loads every entry.
    pub fn new(stream: &Arc<CudaStream>, cc: u32) -> Res<Self> {
        let target = Target::Sm(cc);
        let compiled = compile(&NAIVE, "naive", target, &options(target, "MIXUP_ALL", &[]))?;
        let module = stream
            .context()
            .load_module(Ptx::from_binary(compiled.image))?;
        let mut funcs = HashMap::new();
        for dt in ["f32", "f16", "bf16", "u8"] {
            for k in ["gather", "lerp", "paste", "blend", "log_softmax", "grad"] {
                let name = format!("naive_{k}_{dt}");
                if let Ok(f) = module.load_function(&name) {
                    funcs.insert(name, f);
                }
            }
        }
        for name in ["naive_one_hot", "naive_row_loss", "naive_reduce"] {
            funcs.insert(name.to_string(), module.load_function(name)?);
        }
        Ok(Self {
            stream: stream.clone(),
            funcs,
        })
    }

    /// The functions for `dtype`.
    pub fn kernels(&self, dtype: ScalarType) -> Res<Kernels<'_>> {
        let get = |name: &str| -> Res<&CudaFunction> {
            self.funcs
                .get(name)
                .ok_or_else(|| format!("benches/gpu/naive.cu has no `{name}`").into())
        };
        let dt = dtype.name();
        let float = match dtype {
            ScalarType::U8 => None,
            _ => Some([
                get(&format!("naive_blend_{dt}"))?,
                get(&format!("naive_log_softmax_{dt}"))?,
                get(&format!("naive_grad_{dt}"))?,
            ]),
        };
        Ok(Kernels {
            gather: get(&format!("naive_gather_{dt}"))?,
            lerp: get(&format!("naive_lerp_{dt}"))?,
            paste: get(&format!("naive_paste_{dt}"))?,
            float,
            one_hot: get("naive_one_hot")?,
            row_loss: get("naive_row_loss")?,
            reduce: get("naive_reduce")?,
        })
    }

    /// Uploads `plan` in the kernels' layout (`struct PlanEntry` in kernels/common.cuh).
    pub fn plan(&self, plan: &MixPlan) -> Res<NaivePlan> {
        let mut words = Vec::with_capacity(plan.len() * 8);
        for s in plan.samples() {
            let b = s.cut.unwrap_or_default();
            words.extend_from_slice(&[
                s.partner as u32,
                s.lam.to_bits(),
                u32::from(s.cut.is_some()),
                b.y0,
                b.y1,
                b.x0,
                b.x1,
                0,
            ]);
        }
        words.resize(words.len().max(8), 0);
        Ok(NaivePlan {
            buf: self.stream.clone_htod(&words)?,
            batch: plan.len(),
            has_cutmix: plan.has_cutmix(),
        })
    }

    /// Gather, lerp and paste: three launches (two for rows or MixUp-only plans). `tmp` is
    /// scratch of the size of `x`.
    pub fn mix<T: Element>(
        &self,
        k: &Kernels<'_>,
        plan: &NaivePlan,
        layout: &SampleShape,
        x: &CudaSlice<T>,
        tmp: &mut CudaSlice<T>,
        out: &mut CudaSlice<T>,
    ) -> Res<()> {
        let s = &self.stream;
        let n = x.len() as u64;
        let d = n / plan.batch.max(1) as u64;
        let (code, c, h, w) = match *layout {
            SampleShape::Rows(_) => (0u32, 0u32, 0u32, 0u32),
            SampleShape::Image {
                format,
                channels,
                height,
                width,
            } => {
                let code = match format {
                    MemoryFormat::ChannelsFirst => 1,
                    MemoryFormat::ChannelsLast => 2,
                };
                (code, channels as u32, height as u32, width as u32)
            }
        };
        let image = u32::from(code != 0);
        let (pp, _p) = plan.buf.device_ptr(s);
        let (xp, _a) = x.device_ptr(s);
        let (tp, _b) = tmp.device_ptr_mut(s);
        let (op, _c) = out.device_ptr_mut(s);
        // SAFETY: argument lists match benches/gpu/naive.cu; every buffer holds n elements.
        unsafe {
            launch!(s, k.gather, elementwise(n); xp, tp, pp, d, n)?;
            launch!(s, k.lerp, elementwise(n); xp, tp, op, pp, d, n, image)?;
            if image != 0 && plan.has_cutmix {
                launch!(s, k.paste, elementwise(n); tp, op, pp, d, n, code, c, h, w)?;
            }
        }
        Ok(())
    }

    /// Two f32 one-hots (of the labels and of the partners' labels, in `y`), then
    /// `out = λ y1 + (1-λ) y2` in `out`'s dtype (`k`'s blend): three launches.
    pub fn soft_targets<T: Element>(
        &self,
        k: &Kernels<'_>,
        plan: &NaivePlan,
        labels: &CudaSlice<u32>,
        spec: &TargetSpec,
        y: &mut [CudaSlice<f32>; 2],
        out: &mut CudaSlice<T>,
    ) -> Res<()> {
        let [blend, _, _] = k.float.ok_or("no naive soft targets for u8")?;
        let s = &self.stream;
        let (lp, _l) = labels.device_ptr(s);
        let (pp, _p) = plan.buf.device_ptr(s);
        let c = spec.num_classes() as u64;
        let n = plan.batch as u64 * c;
        // The crate's f32 forms: `f32(ε)/C` and `1 - f32(ε) + off`.
        let eps = spec.label_smoothing() as f32;
        let off = eps / spec.num_classes() as f32;
        let on = 1.0 - eps + off;
        let [y1, y2] = y;
        let (y1, _a) = y1.device_ptr_mut(s);
        let (y2, _b) = y2.device_ptr_mut(s);
        let (op, _o) = out.device_ptr_mut(s);
        // SAFETY: argument lists match benches/gpu/naive.cu; `y1`, `y2` and `out` hold B·C
        // elements.
        unsafe {
            for (yp, partner) in [(y1, 0u32), (y2, 1u32)] {
                launch!(s, k.one_hot, elementwise(n); yp, lp, pp, c, n, off, on, partner)?;
            }
            launch!(s, blend, elementwise(n); y1, y2, op, pp, c, n)?;
        }
        Ok(())
    }

    /// Soft targets (f32), log-softmax, per-row loss, reduction, gradient: seven launches.
    /// `k` holds the logits' dtype, `k32` the f32 kernels (the targets' blend).
    #[allow(clippy::too_many_arguments)]
    pub fn mixup_ce<T: Element>(
        &self,
        k: &Kernels<'_>,
        k32: &Kernels<'_>,
        plan: &NaivePlan,
        spec: &CeSpec,
        logits: &CudaSlice<T>,
        labels: &CudaSlice<u32>,
        bufs: &mut NaiveBuffers,
        loss: &mut CudaSlice<f32>,
        grad: &mut CudaSlice<T>,
    ) -> Res<()> {
        let [_, log_softmax, gradk] = k.float.ok_or("no naive CE for u8")?;
        let (b, c) = (plan.batch as u64, spec.num_classes() as u64);
        let n = b * c;
        // The targets in f32 (`k32`'s blend), whatever the logits' dtype.
        self.soft_targets(k32, plan, labels, spec.targets(), &mut bufs.y, &mut bufs.t)?;
        let s = &self.stream;
        let (lp, _l) = logits.device_ptr(s);
        let (gp, _g) = grad.device_ptr_mut(s);
        let (lossp, _ls) = loss.device_ptr_mut(s);
        let (tp, _t) = bufs.t.device_ptr_mut(s);
        let (logp, _p) = bufs.logp.device_ptr_mut(s);
        let (losses, _r) = bufs.losses.device_ptr_mut(s);
        let mean = u32::from(spec.reduction() == Reduction::Mean);
        let scale = if mean == 1 { 1.0 / b as f32 } else { 1.0f32 };
        let one_block = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: argument lists match benches/gpu/naive.cu; buffers hold B·C (or B) elements.
        unsafe {
            launch!(s, log_softmax, per_row(b); lp, logp, c, b)?;
            launch!(s, k.row_loss, per_row(b); logp, tp, losses, c, b)?;
            launch!(s, k.reduce, one_block; losses, lossp, b, mean)?;
            launch!(s, gradk, elementwise(n); logp, tp, gp, scale, n)?;
        }
        Ok(())
    }
}
