// The fused binary cross-entropy entries (kernels/mixup_bce.cu), built per arch.
#include "entries.h"

#include "../common.cuh"
#define MIXUP_ALL 1
#include "../mixup_bce.cu"

EMU_ENTRY(bce_warp_f32, BceArgs)
EMU_ENTRY(bce_warp_f16, BceArgs)
EMU_ENTRY(bce_warp_bf16, BceArgs)
EMU_ENTRY(bce_block_f32, BceArgs)
EMU_ENTRY(bce_block_f16, BceArgs)
EMU_ENTRY(bce_block_bf16, BceArgs)
