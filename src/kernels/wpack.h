/* wpack.h - packed weight layouts (kernels/ops.h: NVLM_WL_P8 for F32/F16/BF16 at the AVX-512
 * levels, NVLM_WL_Q16 for Q8_0/Q4/Q4_0 at the AVX512-VNNI levels): which kernel levels read them,
 * which matrices can take them, and the packing itself. A model's LLM matrices are packed when an
 * engine is created (nvlm_model_pack, model/quant.h: Q16 always, P8 for one generating sequence);
 * docs/performance.md "Packed rows". The layout of each format is its traits row's (kernels/dtype.h).
 * Internal. */
#ifndef NVLM_KERNELS_WPACK_H
#define NVLM_KERNELS_WPACK_H
#include "kernels/ops.h"

/* The packed layout of format dt (NVLM_WL_P8 or NVLM_WL_Q16), or NVLM_WL_ROWS for none. */
int nvlm_wpack_layout(nvlm_dtype dt);
/* 1 when the matrix products of kernel level `level` read format dt's packed layout (P8: the
 * AVX-512 levels; Q16: avx512vnni and above). */
int nvlm_wpack_reads(int level, nvlm_dtype dt);
/* 1 when w can be packed for `level`: row-major, a format that level reads packed, the rows held
 * here (a tensor-parallel rank's slice, or all) a whole number of groups (8 / 16), cols % 16 == 0.
 * A slice is packed as a matrix of its own rows (src/dist hands the kernels that matrix). */
int nvlm_wpack_can(const nvlm_wmat *w, int level);
/* 1 when an engine on `pool` packs w: nvlm_wpack_can at the pool's level, and for block formats only
 * when generation takes int8 activations (nvlm_pool_int8_act_for), which the packed kernel uses. */
int nvlm_wpack_for(const nvlm_pool *pool, const nvlm_wmat *w);
/* dst (the matrix's bytes; w->data itself packs in place) = w's held rows in nvlm_wpack_layout(w->dtype),
 * which it returns; -1 when its staging memory (one group or panel per thread) cannot be had, and
 * then nothing was written. nvlm_wpack_can(w, ...) must hold, but for a format without a packed
 * layout dst is a copy and NVLM_WL_ROWS the answer. Split over the pool; only bytes move. */
int nvlm_wpack(nvlm_pool *pool, void *dst, const nvlm_wmat *w);

/* NVLM_WL_Q16: bytes of one panel block (16 row blocks: 544 for Q8_0, 320 for Q4, 288 for Q4_0). */
size_t nvlm_q16_block_bytes(nvlm_dtype t);
/* The panel of rows src + r * rb (r < R <= 16; rows past R zero) as nb Q16 panel blocks. */
void nvlm_q16_pack_panel(nvlm_dtype t, const uint8_t *src, size_t rb, int R, int nb, uint8_t *dst);
/* Row r's blocks b0 .. b0 + nb of a Q16 matrix, back in the stored row-major block format
 * (exactly the bytes it was packed from). */
void nvlm_q16_row_blocks(const nvlm_wmat *w, int r, int b0, int nb, uint8_t *dst);
#endif
