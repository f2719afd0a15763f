/* qblock.h - block-quantized weight formats (llama.cpp's Q8_0 and Q4_1 layouts,
 * docs/quantization.md):
 *   Q8_0: blocks of 32 weights = f16 scale d + 32 int8 q;           w = d * q       (34 bytes)
 *   Q4  : blocks of 32 weights = f16 scale d, f16 minimum m + 16 bytes of nibbles; byte j
 *         holds weight j in its low nibble and weight j+16 in its high one; w = d * q + m
 *         (20 bytes, llama.cpp's Q4_1; dtype string "Q4_1" on disk)
 *   Q4_0: blocks of 32 weights = f16 scale d + 16 bytes of nibbles as Q4; w = d * (q - 8)
 *         (18 bytes, 4.5 bits a weight: llama.cpp's Q4_0, the same bytes)
 * A row of a matrix is cols/32 consecutive blocks. The matrix-matrix kernels multiply float32
 * activations by the dequantized weights (the float model with the weight error alone); the
 * matrix-vector kernels of both formats use llama.cpp's int8-activation dot products by default
 * (nvlm_vec_dot_q, activations quantized to Q8A blocks; kernels/pool.h's
 * nvlm_pool_int8_act_for, NVLM_QACT=f32 for the float path). Internal. */
#ifndef NVLM_KERNELS_QBLOCK_H
#define NVLM_KERNELS_QBLOCK_H
#include "model/safetensors.h"
#include <stddef.h>
#include <stdint.h>

#define NVLM_QK 32

typedef struct nvlm_block_q8_0 {
    uint16_t d; /* f16 bits */
    int8_t q[NVLM_QK];
} nvlm_block_q8_0;

typedef struct nvlm_block_q4 {
    uint16_t d, m; /* f16 bits: scale and minimum */
    uint8_t q[NVLM_QK / 2];
} nvlm_block_q4;

typedef struct nvlm_block_q4_0 {
    uint16_t d; /* f16 bits: scale */
    uint8_t q[NVLM_QK / 2];
} nvlm_block_q4_0;

/* Activation blocks (never stored on disk). */
typedef struct nvlm_block_q8a {
    float d;
    int8_t q[NVLM_QK];
} nvlm_block_q8a;

_Static_assert(sizeof(nvlm_block_q8_0) == 34, "Q8_0 block is 34 bytes");
_Static_assert(sizeof(nvlm_block_q4) == 20, "Q4 block is 20 bytes");
_Static_assert(sizeof(nvlm_block_q4_0) == 18, "Q4_0 block is 18 bytes");

/* From the traits table (kernels/dtype.h): 1 for block formats (Q8_0, Q4, Q4_0); bytes of one row of
 * `cols` values (cols must divide into blocks for block formats). */
int nvlm_dtype_is_block(nvlm_dtype t);
size_t nvlm_row_bytes(nvlm_dtype t, int64_t cols);

/* Quantize n values (n % 32 == 0). Q8_0 and Q4 choose each block's scale (and minimum) by
 * least squared error over a few candidates, with the f16-rounded values. */
void nvlm_quantize_row_q8_0(const float *x, void *dst, int n);
void nvlm_quantize_row_q4(const float *x, void *dst, int n);
void nvlm_quantize_row_q4_0(const float *x, void *dst, int n);
void nvlm_quantize_row_q8a(const float *x, nvlm_block_q8a *dst, int n);
void nvlm_dequantize_row_q8_0(float *dst, const void *src, int n);
void nvlm_dequantize_row_q4(float *dst, const void *src, int n);
void nvlm_dequantize_row_q4_0(float *dst, const void *src, int n);
/* Scalar reference: sum over the row of w * x, w a Q8_0 / Q4 / Q4_0 row, x quantized
 * activations. Q4_0 takes Q8_0's float steps: per block the integer sum of (q - 8) * x, then
 * acc += s * (d * dx). */
float nvlm_vec_dot_q8_0(const void *w, const nvlm_block_q8a *x, int n);
float nvlm_vec_dot_q4(const void *w, const nvlm_block_q8a *x, int n);
float nvlm_vec_dot_q4_0(const void *w, const nvlm_block_q8a *x, int n);

/* Through the traits table, for any format: n float32 values to a row of F32/F16/BF16
 * (rounded to nearest even) or Q8_0/Q4 (quantized as above), the inverse of nvlm_row_to_f32
 * up to that rounding; any format to float32; the scalar int8 dot product of a block format. */
void nvlm_row_from_f32(void *dst, const float *x, nvlm_dtype t, int n);
void nvlm_row_to_f32(float *dst, const void *src, nvlm_dtype t, int n);
float nvlm_vec_dot_q(nvlm_dtype t, const void *w, const nvlm_block_q8a *x, int n);
#endif
