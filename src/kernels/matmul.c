/* Matrix products against weights stored F32/F16/BF16/Q8_0/Q4: the scalar reference path and
 * the run-time dispatch to the SIMD kernels (kernels/cpu.h, the pool's level).
 * Scalar: work is split over output rows; each thread expands a block of weight rows to
 * float32 once and applies it to every token, so a weight row is read once per call. */
#include "kernels/cpu.h"
#include "kernels/dispatch.h"
#include "kernels/ops.h"
#include "kernels/qblock.h"
#include <stdlib.h>
#include <string.h>

enum { ROW_BLOCK = 8 };

typedef struct matmul_job {
    float *y;
    const float *x;
    int n_tok;
    const nvlm_wmat *w;
    const float *bias;
} matmul_job;

static const void *row_ptr(const nvlm_wmat *w, int r) {
    return (const uint8_t *)w->data + (size_t)r * nvlm_row_bytes(w->dtype, w->cols);
}

static void matmul_rows(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    const matmul_job *j = ctx;
    const int K = j->w->cols, N = j->w->rows;
    float *wbuf = malloc(sizeof(float) * ROW_BLOCK * (size_t)K);
    if (!wbuf) return; /* cannot happen in practice; leaves y untouched */
    for (size_t r0 = begin; r0 < end; r0 += ROW_BLOCK) {
        int nr = (int)(end - r0 < ROW_BLOCK ? end - r0 : ROW_BLOCK);
        const void *src = row_ptr(j->w, (int)r0);
        /* F32 rows are used in place when aligned (safetensors does not promise alignment) */
        int in_place = j->w->dtype == NVLM_DT_F32 && ((uintptr_t)src % sizeof(float)) == 0;
        const float *wr = in_place ? (const float *)src : wbuf;
        if (!in_place)
            for (int r = 0; r < nr; r++) nvlm_row_to_f32(wbuf + (size_t)r * K, row_ptr(j->w, (int)r0 + r), j->w->dtype, K);
        for (int t = 0; t < j->n_tok; t++) {
            const float *xt = j->x + (size_t)t * K;
            float *yt = j->y + (size_t)t * N + r0;
            for (int r = 0; r < nr; r++) {
                float v = nvlm_dot(xt, wr + (size_t)r * K, K);
                yt[r] = j->bias ? v + j->bias[r0 + r] : v;
            }
        }
    }
    free(wbuf);
}

void nvlm_matmul_scalar(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w,
                        const float *bias) {
    matmul_job j = {y, x, n_tok, w, bias};
    nvlm_pool_run(pool, (size_t)w->rows, ROW_BLOCK, matmul_rows, &j);
}

int nvlm_matmul(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w, const float *bias) {
    if (n_tok <= 0) return 0;
    return nvlm_kernel_for(nvlm_matmul_op(w->dtype, n_tok), nvlm_pool_level(pool))->matmul(pool, y, x, n_tok, w, bias);
}

int nvlm_matmul_multi(nvlm_pool *pool, int n_w, float *const *y, const float *x, int n_tok,
                      const nvlm_wmat *const *w, const float *const *bias) {
    if (n_tok <= 0 || n_w <= 0) return 0;
    /* together only when every matrix's format runs the same multi-matrix kernel */
    const int level = nvlm_pool_level(pool);
    nvlm_matmul_multi_fn multi = nvlm_kernel_for(nvlm_matmul_op(w[0]->dtype, n_tok), level)->matmul_multi;
    for (int i = 1; i < n_w && multi; i++)
        if (nvlm_kernel_for(nvlm_matmul_op(w[i]->dtype, n_tok), level)->matmul_multi != multi) multi = NULL;
    if (multi) return multi(pool, n_w, y, x, n_tok, w, bias);
    for (int i = 0; i < n_w; i++)
        if (nvlm_matmul(pool, y[i], x, n_tok, w[i], bias[i])) return -1;
    return 0;
}

void nvlm_row_to_f32_at(int level, float *dst, const void *src, nvlm_dtype t, int n) {
    nvlm_kernel_for(NVLM_OP_CONVERT, level)->row_to_f32(dst, src, t, n);
}

typedef struct act_job {
    float *a;
    const float *b;
    size_t n;
    int level, silu;
} act_job;

/* Units of ACT_UNIT elements: every chunk starts at a multiple of 16 (AVX-512; AVX2: 8; NEON: 4), so each
 * element takes the same path (vector body or scalar tail) whatever the number of threads. */
enum { ACT_UNIT = 64 };

static void act_range(void *ctx, size_t ubegin, size_t uend, int thread) {
    (void)thread;
    const act_job *j = ctx;
    size_t begin = ubegin * ACT_UNIT, end = uend * ACT_UNIT < j->n ? uend * ACT_UNIT : j->n, n = end - begin;
    if (j->silu) nvlm_kernel_for(NVLM_OP_SILU_MUL, j->level)->silu_mul(j->a + begin, j->b + begin, n);
    else nvlm_kernel_for(NVLM_OP_GELU, j->level)->gelu(j->a + begin, n);
}

void nvlm_gelu_pool(nvlm_pool *pool, float *x, size_t n) {
    act_job j = {x, NULL, n, nvlm_pool_level(pool), 0};
    nvlm_pool_run(pool, (n + ACT_UNIT - 1) / ACT_UNIT, 4096 / ACT_UNIT, act_range, &j);
}

void nvlm_silu_mul_pool(nvlm_pool *pool, float *a, const float *b, size_t n) {
    act_job j = {a, b, n, nvlm_pool_level(pool), 1};
    nvlm_pool_run(pool, (n + ACT_UNIT - 1) / ACT_UNIT, 4096 / ACT_UNIT, act_range, &j);
}
