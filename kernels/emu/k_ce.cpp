// The fused cross-entropy entries (kernels/mixup_ce.cu), built per arch.
#include "entries.h"

#include "../common.cuh"
#define MIXUP_ALL 1
#include "../mixup_ce.cu"

EMU_ENTRY(ce_warp_f32, CeArgs)
EMU_ENTRY(ce_warp_f16, CeArgs)
EMU_ENTRY(ce_warp_bf16, CeArgs)
EMU_ENTRY(ce_block_f32, CeArgs)
EMU_ENTRY(ce_block_f16, CeArgs)
EMU_ENTRY(ce_block_bf16, CeArgs)
EMU_ENTRY(ce_online_f32, CeArgs)
EMU_ENTRY(ce_online_f16, CeArgs)
EMU_ENTRY(ce_online_bf16, CeArgs)
