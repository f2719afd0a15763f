/* Matrix products against weights stored F32/F16/BF16/Q8_0/Q4: the scalar reference path and
 * the run-time dispatch to the SIMD kernels (kernels/cpu.h, the pool's level).
 * Scalar: work is split over output rows; each thread expands a block of weight rows to
 * float32 once and applies it to every token, so a weight row is read once per call. */
#include "kernels/cpu.h"
#include "kernels/gemm_bf16.h"
#include "kernels/gemv_vnni.h"
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

/* The bf16 compute mode (kernels/gemm_bf16.h) takes the products of many tokens against
 * plain-format weights; 1 when it took this one. */
static int bf16_takes(nvlm_pool *pool, int n_w, float *const *y, const float *x, int n_tok,
                      const nvlm_wmat *const *w, const float *const *bias) {
    if (nvlm_pool_compute(pool) != NVLM_COMPUTE_BF16 || n_tok < NVLM_BF16_MIN_TOKENS) return 0;
    for (int i = 0; i < n_w; i++)
        if (!nvlm_bf16_eligible(w[i])) return 0;
    nvlm_matmul_bf16(pool, n_w, y, x, n_tok, w, bias);
    return 1;
}

/* 1 when a product of n_tok tokens against w goes to the VNNI int8 matrix product
 * (kernels/gemv_vnni.h: every output nvlm_vec_dot_q's): prefill of Q8_0 / Q4 at avx512vnni and
 * above when int8 activations were asked for (NVLM_QACT=int8, nvlm_pool_set_int8_act). Not by
 * default: int8 activations in prefill cost Q8_0 on the reference cases 96.68% -> 95.10% top-1
 * and KL 0.0057 -> 0.0107, past issue 5's bar (docs/quantization.md, "VNNI"). */
static int vnni_for(nvlm_pool *pool, int n_tok, const nvlm_wmat *w) {
#ifdef NVLM_HAVE_VNNI_KERNELS
    return n_tok > NVLM_VNNI_GEMV_MAX && nvlm_dtype_is_block(w->dtype) &&
           nvlm_cpu_at_least(nvlm_pool_level(pool), NVLM_CPU_AVX512_VNNI) && nvlm_pool_int8_act(pool);
#else
    (void)pool, (void)n_tok, (void)w;
    return 0;
#endif
}

/* vnni_for's product, done: 1 when it took it. */
static int vnni_takes(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w, const float *bias) {
#ifdef NVLM_HAVE_VNNI_KERNELS /* out of memory: the float path */
    return vnni_for(pool, n_tok, w) && nvlm_gemm_vnni(pool, y, x, n_tok, w, bias) == 0;
#else
    (void)pool, (void)y, (void)x, (void)n_tok, (void)w, (void)bias;
    return 0;
#endif
}

/* 1 when one of the matrices takes vnni_for's path (nvlm_matmul_multi then goes matrix by matrix). */
static int any_vnni(nvlm_pool *pool, int n_w, int n_tok, const nvlm_wmat *const *w) {
    for (int i = 0; i < n_w; i++)
        if (vnni_for(pool, n_tok, w[i])) return 1;
    return 0;
}

void nvlm_matmul(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w,
                 const float *bias) {
    if (n_tok <= 0 || bf16_takes(pool, 1, &y, x, n_tok, &w, &bias) || vnni_takes(pool, y, x, n_tok, w, bias)) return;
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
    if (n_tok <= 0 || bf16_takes(pool, n_w, y, x, n_tok, w, bias)) return;
#ifdef NVLM_HAVE_AVX2_KERNELS
    if (nvlm_cpu_at_least(nvlm_pool_level(pool), NVLM_CPU_AVX2) && !any_vnni(pool, n_w, n_tok, w)) {
        nvlm_matmul_multi_avx2(pool, n_w, y, x, n_tok, w, bias);
        return;
    }
#endif
    for (int i = 0; i < n_w; i++) nvlm_matmul(pool, y[i], x, n_tok, w[i], bias[i]);
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
