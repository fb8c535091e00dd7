//! CUDA storage for the candle ops (feature `candle-cuda`): filled in once the crate's CUDA
//! path has landed.

use candle_core::{CudaStorage, Error, Layout as CLayout, Result, Shape};

use super::{MixOp, MixupCeOp, SoftTargetsOp};
use crate::spec::Upstream;

fn pending(op: &str) -> Error {
    Error::Cuda(format!("{op}: the CUDA path of mixup-kernels is not wired to candle yet").into())
}

pub(super) fn mix(_op: &MixOp, _s: &CudaStorage, _l: &CLayout) -> Result<(CudaStorage, Shape)> {
    Err(pending("mix"))
}

pub(super) fn soft_targets(
    _op: &SoftTargetsOp,
    _s: &CudaStorage,
    _l: &CLayout,
) -> Result<(CudaStorage, Shape)> {
    Err(pending("soft_targets"))
}

pub(super) fn mixup_ce_fwd(
    _op: &MixupCeOp,
    _s1: &CudaStorage,
    _l1: &CLayout,
    _s2: &CudaStorage,
    _l2: &CLayout,
) -> Result<(CudaStorage, Shape)> {
    Err(pending("mixup_cross_entropy"))
}

pub(super) fn mixup_ce_grad(
    _op: &MixupCeOp,
    _upstream: Upstream<'_>,
    _s1: &CudaStorage,
    _l1: &CLayout,
    _s2: &CudaStorage,
    _l2: &CLayout,
) -> Result<(CudaStorage, Shape)> {
    Err(pending("mixup_cross_entropy backward"))
}
