/* ops.h - the numeric kernels of the engine (float32 activations; weights F32, F16 or BF16
 * read in place from the checkpoint mapping). Each kernel has a portable scalar version;
 * matmul work is split over the thread pool by output rows so results do not depend on the
 * number of threads. Internal. */
#ifndef NVLM_KERNELS_OPS_H
#define NVLM_KERNELS_OPS_H
#include "kernels/pool.h"
#include "model/safetensors.h"
#include <stddef.h>
#include <stdint.h>

/* Weight layouts (docs/performance.md, "Packed rows").
 * NVLM_WL_ROWS: row-major, as nn.Linear stores it (every format; what every kernel reads).
 * NVLM_WL_P8: plain formats (F32/F16/BF16) only, rows % 8 == 0 and cols % 16 == 0: rows in groups
 *   of 8, each group's columns in runs of 16, the runs of the group's 8 rows side by side:
 *   W(r, k) is element (r / 8) * 8 * cols + (k / 16) * 128 + (r % 8) * 16 + k % 16. The one-token
 *   product then reads one sequential stream while it keeps 8 rows' FMA chains in flight (each
 *   output's chain unchanged, so the same bits): the AVX-512 levels' generation layout, made by
 *   nvlm_wpack (kernels/wpack.h) when an engine is created. Read by the AVX-512 kernels only.
 * NVLM_WL_Q16: Q8_0/Q4/Q4_0 only, rows % 16 == 0: panels of 16 rows; per block of 32 columns,
 *   the 16 rows' weights as vpdpbusd takes them (dword r of vector g = row r's bytes 4g .. 4g+3;
 *   Q8_0: 8 vectors of q ^ 0x80; Q4, Q4_0: 4 vectors of the nibble bytes as stored, whose low
 *   nibbles are group g and high nibbles group g + 4), then the 16 f16 scales (Q4: and the 16
 *   f16 minimums). A panel block is 16 row blocks' bytes (544 / 320 / 288), so the matrix keeps
 *   its size. The VNNI
 *   levels' generation layout (gemm_vnni.c): no reduction, no unpacking of scales per row. */
enum { NVLM_WL_ROWS = 0, NVLM_WL_P8 = 1, NVLM_WL_Q16 = 2 };
enum { NVLM_P8_ROWS = 8, NVLM_P8_RUN = 16, NVLM_Q16_ROWS = 16 };

/* A weight matrix [rows = out features, cols = in features], row-major as nn.Linear stores it
 * (layout NVLM_WL_ROWS) or packed (above); block formats (kernels/qblock.h) store each row as
 * cols/32 blocks. */
typedef struct nvlm_wmat {
    nvlm_dtype dtype;
    int rows, cols;
    const void *data;
    /* Tensor parallel (src/dist): when dist is set, data holds only the output rows
     * [row0, row0 + local_rows) of the rows x cols matrix; nvlm_matmul computes those here and
     * gathers the full y from the other ranks. NULL: the whole matrix is here. Every rank's
     * rows follow from nvlm_dist_split(rows, split_unit, rank, size, ...). */
    struct nvlm_dist *dist;
    int row0, local_rows, split_unit;
    /* 1: multiplied in float32 whatever the pool's compute mode (the LLM's attention
     * projections and lm_head: the bf16 mode covers the vision path and the LLM's MLP;
     * docs/performance.md "bf16 compute" says why) */
    int f32_only;
    int layout; /* NVLM_WL_*; 0: row-major */
} nvlm_wmat;

/* Element offset of W(r, k) in the NVLM_WL_P8 layout of a matrix of K columns: the run of 16
 * holding it is contiguous from there to the run's end. */
static inline size_t nvlm_p8_offset(int K, int r, int k) {
    return (size_t)(r / NVLM_P8_ROWS) * NVLM_P8_ROWS * (size_t)K + (size_t)(k / NVLM_P8_RUN) * (NVLM_P8_ROWS * NVLM_P8_RUN) +
           (size_t)(r % NVLM_P8_ROWS) * NVLM_P8_RUN + (size_t)(k % NVLM_P8_RUN);
}

/* Address of W(r, k) of a plain-format matrix in either layout (es: bytes per element). Row-major:
 * the row continues contiguously; NVLM_WL_P8: up to the end of k's run of 16. */
static inline const uint8_t *nvlm_wmat_at(const nvlm_wmat *w, size_t es, int r, int k) {
    size_t e = w->layout == NVLM_WL_P8 ? nvlm_p8_offset(w->cols, r, k) : (size_t)r * (size_t)w->cols + (size_t)k;
    return (const uint8_t *)w->data + e * es;
}

/* Rows of w held by this process. */
static inline int nvlm_wmat_held_rows(const nvlm_wmat *w) { return w->dist ? w->local_rows : w->rows; }

/* A weight vector (norm weights, biases) converted once to float32 at load. */
static inline float nvlm_bf16_to_f32(uint16_t b) {
    union { uint32_t u; float f; } v = {(uint32_t)b << 16};
    return v.f;
}
float nvlm_f16_to_f32(uint16_t h);
/* Round-to-nearest-even float32 -> bf16 bits (as torch). */
uint16_t nvlm_f32_to_bf16(float f);
uint16_t nvlm_f32_to_f16(float f);

/* Converts n elements of dtype at src to float32. */
void nvlm_to_f32(float *dst, const void *src, nvlm_dtype dtype, size_t n);

/* y[t, o] = sum_i x[t, i] * W[o, i] (+ bias[o]) for t < n_tok: y = x @ W^T + b.
 * x is [n_tok, W.cols], y is [n_tok, W.rows] (may not alias x). bias may be NULL. The kernel is
 * the one kernels/dispatch.h names for the pool's level (scalar for a format the SIMD kernels lack).
 * The matrix products return NVLM_OK, or NVLM_E_NOMEM when their scratch cannot be had
 * (nvlm_pool_scratch; y is then undefined): a product never skips its work silently. */
int nvlm_matmul(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w,
                const float *bias, nvlm_err *err);
/* y[i] = x W[i]^T + bias[i] for n_w matrices that share x (q/k/v, gate/up): on the packed AVX2
 * path x is packed once and the pool splits all their outputs together; the values are those of
 * n_w nvlm_matmul calls. bias[i] may be NULL. */
int nvlm_matmul_multi(nvlm_pool *pool, int n_w, float *const *y, const float *x, int n_tok,
                      const nvlm_wmat *const *w, const float *const *bias, nvlm_err *err);
/* nvlm_matmul_multi for a batch by token role (src/engine, docs/engine.md): rows [0, n_gemv) of x
 * (tokens being generated) always through the dispatch table's generation kernels, rows
 * [n_gemv, n_tok) (prompt tokens) always through its prefill kernels, however many there are of
 * each; both give a token's outputs in an order of its own, so its values never depend on the
 * other rows. Returns as nvlm_matmul. */
int nvlm_matmul_roles(nvlm_pool *pool, int n_w, float *const *y, const float *x, int n_gemv, int n_tok,
                      const nvlm_wmat *const *w, const float *const *bias, nvlm_err *err);
/* nvlm_row_to_f32 at a kernel level (kernels/cpu.h); the same bits at every level. */
void nvlm_row_to_f32_at(int level, float *dst, const void *src, nvlm_dtype t, int n);
/* The scalar reference of nvlm_matmul (nvlm_matmul dispatches on nvlm_pool_level(pool)). */
int nvlm_matmul_scalar(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w,
                       const float *bias, nvlm_err *err);
/* nvlm_gelu / nvlm_silu_mul split over the pool, SIMD at the pool's level. Any chunking gives
 * the same values (element-wise). */
void nvlm_gelu_pool(nvlm_pool *pool, float *x, size_t n);
void nvlm_silu_mul_pool(nvlm_pool *pool, float *a, const float *b, size_t n);

/* out = x * rsqrt(mean(x[:n_stat]^2) + eps) * w over n values (n_stat <= n: InternViT's
 * QK-norm takes the statistic over the real heads only). out may alias x. */
void nvlm_rmsnorm(float *out, const float *x, const float *w, int n, int n_stat, float eps);
/* rsqrt(mean(x[:n]^2) + eps): nvlm_rmsnorm's statistic (the training backward's too). */
float nvlm_rms_scale(const float *x, int n, float eps);
/* LayerNorm with biased variance. out may alias x. */
void nvlm_layernorm(float *out, const float *x, const float *w, const float *b, int n, float eps);
/* Exact GELU 0.5 x (1 + erf(x / sqrt 2)), in place. */
void nvlm_gelu(float *x, size_t n);
/* a = silu(a) * b, in place on a. */
void nvlm_silu_mul(float *a, const float *b, size_t n);
/* In-place softmax over n values (a row of -inf values gives zeros, never NaN). */
void nvlm_softmax(float *x, int n);
/* Index of the largest value (first on ties). */
int nvlm_argmax(const float *x, int n);
/* Dot product with a fixed summation order (8 partial sums). */
float nvlm_dot(const float *a, const float *b, int n);
/* y += a * x */
void nvlm_axpy(float *y, float a, const float *x, int n);
#endif
