// The fused mix + normalize entries (kernels/mix_normalize.cu), built per arch.
#include "entries.h"

#include "../common.cuh"
#define MIXUP_ALL 1
#include "../mix_normalize.cu"

EMU_ENTRY(mix_normalize_u8_f32, MixNormArgs)
EMU_ENTRY(mix_normalize_u8_f16, MixNormArgs)
EMU_ENTRY(mix_normalize_u8_bf16, MixNormArgs)
EMU_ENTRY(mix_normalize_f32_f32, MixNormArgs)
EMU_ENTRY(mix_normalize_f32_f16, MixNormArgs)
EMU_ENTRY(mix_normalize_f32_bf16, MixNormArgs)
EMU_ENTRY(mix_normalize_f16_f32, MixNormArgs)
EMU_ENTRY(mix_normalize_f16_f16, MixNormArgs)
EMU_ENTRY(mix_normalize_f16_bf16, MixNormArgs)
EMU_ENTRY(mix_normalize_bf16_f32, MixNormArgs)
EMU_ENTRY(mix_normalize_bf16_f16, MixNormArgs)
EMU_ENTRY(mix_normalize_bf16_bf16, MixNormArgs)
