/* Matrix products against weights stored F32/F16/BF16/Q8_0/Q4: the scalar reference path and
 * the run-time dispatch to the SIMD kernels (kernels/cpu.h, the pool's level).
 * Scalar: work is split over output rows; each thread expands a block of weight rows to
 * float32 once and applies it to every token, so a weight row is read once per call. */
#include "kernels/cpu.h"
#include "kernels/ops.h"
#include "kernels/qblock.h"
#include "kernels/simd.h"
#include "kernels/simd_neon.h"
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

void nvlm_matmul(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w,
                 const float *bias) {
    if (n_tok <= 0) return;
#ifdef NVLM_HAVE_AVX2_KERNELS
    if (nvlm_cpu_at_least(nvlm_pool_level(pool), NVLM_CPU_AVX2)) {
        nvlm_matmul_avx2(pool, y, x, n_tok, w, bias);
        return;
    }
#endif
#ifdef NVLM_HAVE_NEON_KERNELS
    if (nvlm_pool_level(pool) == NVLM_CPU_NEON) {
        nvlm_matmul_neon(pool, y, x, n_tok, w, bias);
        return;
    }
#endif
    nvlm_matmul_scalar(pool, y, x, n_tok, w, bias);
}

void nvlm_matmul_multi(nvlm_pool *pool, int n_w, float *const *y, const float *x, int n_tok,
                       const nvlm_wmat *const *w, const float *const *bias) {
    if (n_tok <= 0) return;
#ifdef NVLM_HAVE_AVX2_KERNELS
    if (nvlm_cpu_at_least(nvlm_pool_level(pool), NVLM_CPU_AVX2)) {
        nvlm_matmul_multi_avx2(pool, n_w, y, x, n_tok, w, bias);
        return;
    }
#endif
    for (int i = 0; i < n_w; i++) nvlm_matmul(pool, y[i], x, n_tok, w[i], bias[i]);
}

void nvlm_matmul_roles(nvlm_pool *pool, int n_w, float *const *y, const float *x, int n_gemv, int n_tok,
                       const nvlm_wmat *const *w, const float *const *bias) {
    if (n_tok <= 0 || n_w <= 0) return;
    const int K = w[0]->cols;
#ifdef NVLM_HAVE_AVX2_KERNELS
    if (nvlm_cpu_at_least(nvlm_pool_level(pool), NVLM_CPU_AVX2)) {
        float *yg[NVLM_MATMUL_MULTI_MAX];
        /* 4-8 tokens: the AVX-512 kernel (8 a pass); fewer, or more (their activations no longer
         * fit in L1 beside the row), the AVX2 one: the same bytes either way (bench/batch) */
        int wide = n_gemv > NVLM_GEMV_MAX && n_gemv <= 8 && nvlm_cpu_at_least(nvlm_pool_level(pool), NVLM_CPU_AVX512);
        for (int i = 0; i < n_w && n_gemv > 0; i++) {
            if (wide && nvlm_gemv_batch_avx512_ok(w[i]->dtype)) nvlm_gemv_batch_avx512(pool, y[i], x, n_gemv, w[i], bias[i]);
            else nvlm_gemv_avx2(pool, y[i], x, n_gemv, w[i], bias[i]);
        }
        if (n_gemv >= n_tok) return;
        for (int i = 0; i < n_w && n_w <= NVLM_MATMUL_MULTI_MAX; i++) yg[i] = y[i] + (size_t)n_gemv * w[i]->rows;
        if (n_w <= NVLM_MATMUL_MULTI_MAX)
            nvlm_gemm_multi_avx2(pool, n_w, yg, x + (size_t)n_gemv * K, n_tok - n_gemv, w, bias);
        else
            for (int i = 0; i < n_w; i++) {
                float *yi = y[i] + (size_t)n_gemv * w[i]->rows;
                nvlm_gemm_multi_avx2(pool, 1, &yi, x + (size_t)n_gemv * K, n_tok - n_gemv, &w[i], &bias[i]);
            }
        return;
    }
#endif
#ifdef NVLM_HAVE_NEON_KERNELS
    if (nvlm_pool_level(pool) == NVLM_CPU_NEON) {
        /* GEMV a few tokens at a time (the NEON kernel's limit); prompt tokens through
         * nvlm_matmul_neon, which streams when there are few of them (not batch invariant for
         * prompts of 1-3 tokens on NEON: docs/engine.md) */
        for (int i = 0; i < n_w; i++) {
            for (int t = 0; t < n_gemv; t += 3)
                nvlm_gemv_neon(pool, y[i] + (size_t)t * w[i]->rows, x + (size_t)t * K, n_gemv - t < 3 ? n_gemv - t : 3,
                               w[i], bias[i]);
            if (n_gemv < n_tok)
                nvlm_matmul_neon(pool, y[i] + (size_t)n_gemv * w[i]->rows, x + (size_t)n_gemv * K, n_tok - n_gemv, w[i],
                                 bias[i]);
        }
        return;
    }
#endif
    (void)K;
    for (int i = 0; i < n_w; i++) nvlm_matmul_scalar(pool, y[i], x, n_tok, w[i], bias[i]);
}

void nvlm_row_to_f32_at(int level, float *dst, const void *src, nvlm_dtype t, int n) {
#ifdef NVLM_HAVE_AVX2_KERNELS
    if (nvlm_cpu_at_least(level, NVLM_CPU_AVX2)) {
        nvlm_row_to_f32_avx2(dst, src, t, n);
        return;
    }
#endif
#ifdef NVLM_HAVE_NEON_KERNELS
    if (level == NVLM_CPU_NEON) {
        nvlm_row_to_f32_neon(dst, src, t, n);
        return;
    }
#endif
    nvlm_row_to_f32(dst, src, t, n);
}

typedef struct act_job {
    float *a;
    const float *b;
    size_t n;
    int level, silu;
} act_job;

/* Units of ACT_UNIT elements: every chunk starts at a multiple of 8 (AVX2; NEON: 4), so each
 * element takes the same path (vector body or scalar tail) whatever the number of threads. */
enum { ACT_UNIT = 64 };

static void act_range(void *ctx, size_t ubegin, size_t uend, int thread) {
    (void)thread;
    const act_job *j = ctx;
    size_t begin = ubegin * ACT_UNIT, end = uend * ACT_UNIT < j->n ? uend * ACT_UNIT : j->n, n = end - begin;
#ifdef NVLM_HAVE_AVX2_KERNELS
    if (nvlm_cpu_at_least(j->level, NVLM_CPU_AVX2)) {
        if (j->silu) nvlm_silu_mul_avx2(j->a + begin, j->b + begin, n);
        else nvlm_gelu_avx2(j->a + begin, n);
        return;
    }
#endif
#ifdef NVLM_HAVE_NEON_KERNELS
    if (j->level == NVLM_CPU_NEON) {
        if (j->silu) nvlm_silu_mul_neon(j->a + begin, j->b + begin, n);
        else nvlm_gelu_neon(j->a + begin, n);
        return;
    }
#endif
    if (j->silu) nvlm_silu_mul(j->a + begin, j->b + begin, n);
    else nvlm_gelu(j->a + begin, n);
}

void nvlm_gelu_pool(nvlm_pool *pool, float *x, size_t n) {
    act_job j = {x, NULL, n, nvlm_pool_level(pool), 0};
    nvlm_pool_run(pool, (n + ACT_UNIT - 1) / ACT_UNIT, 4096 / ACT_UNIT, act_range, &j);
}

void nvlm_silu_mul_pool(nvlm_pool *pool, float *a, const float *b, size_t n) {
    act_job j = {a, b, n, nvlm_pool_level(pool), 1};
    nvlm_pool_run(pool, (n + ACT_UNIT - 1) / ACT_UNIT, 4096 / ACT_UNIT, act_range, &j);
}
