/* wpack.h - packed weight layouts (kernels/ops.h, NVLM_WL_P8): which kernel levels read them,
 * which matrices can take them, and the packing itself. A model's LLM matrices are packed when an
 * engine is created on it (nvlm_model_pack, model/quant.h); docs/performance.md "Packed rows".
 * Internal. */
#ifndef NVLM_KERNELS_WPACK_H
#define NVLM_KERNELS_WPACK_H
#include "kernels/ops.h"

/* 1 when the matrix products of kernel level `level` read NVLM_WL_P8 matrices of format dt (the
 * AVX-512 levels, plain formats F32/F16/BF16). */
int nvlm_wpack_reads(int level, nvlm_dtype dt);
/* 1 when w can be packed for `level`: row-major, a format that level reads packed, the whole
 * matrix here (not a tensor-parallel slice), rows % 8 == 0 and cols % 16 == 0. */
int nvlm_wpack_can(const nvlm_wmat *w, int level);
/* dst (rows * cols elements of es bytes, not overlapping src) = src's rows in NVLM_WL_P8; rows %
 * 8 == 0, cols % 16 == 0. Split over the pool by groups of 8 rows; only bytes move. */
void nvlm_wpack_p8(nvlm_pool *pool, void *dst, const void *src, size_t es, int rows, int cols);
#endif
