// The mix and soft-target entries (kernels/mix.cu, kernels/soft_targets.cu), built per arch.
#include "entries.h"

#include "../common.cuh"
#define MIXUP_ALL 1
#include "../mix.cu"
#include "../soft_targets.cu"

EMU_ENTRY(mix_gather_f32, MixArgs)
EMU_ENTRY(mix_gather_f16, MixArgs)
EMU_ENTRY(mix_gather_bf16, MixArgs)
EMU_ENTRY(mix_gather_u8, MixArgs)
EMU_ENTRY(mix_pairs_f32, MixArgs)
EMU_ENTRY(mix_pairs_f16, MixArgs)
EMU_ENTRY(mix_pairs_bf16, MixArgs)
EMU_ENTRY(mix_pairs_u8, MixArgs)
EMU_ENTRY(soft_targets_f32, SoftArgs)
EMU_ENTRY(soft_targets_f16, SoftArgs)
EMU_ENTRY(soft_targets_bf16, SoftArgs)
