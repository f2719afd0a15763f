/* Matrix products against weights stored F32/F16/BF16/Q8_0/Q4: the scalar reference path and
 * the run-time dispatch to the SIMD kernels (kernels/cpu.h, the pool's level).
 * Scalar: work is split over output rows; each thread expands a block of weight rows to
 * float32 once and applies it to every token, so a weight row is read once per call. */
#include "core/err.h"
#include "dist/dist.h"
#include "kernels/cpu.h"
#include "kernels/dispatch.h"
#include "kernels/dtype.h"
#include "kernels/gemm_bf16.h"
#include "kernels/gemv_vnni.h"
#include "kernels/ops.h"
#include "kernels/qblock.h"
#include "kernels/wpack.h"
#include <stdlib.h>
#include <string.h>

enum { ROW_BLOCK = 8 };

typedef struct matmul_job {
    float *y;
    const float *x;
    int n_tok;
    const nvlm_wmat *w;
    const float *bias;
    float *wbuf; /* ROW_BLOCK rows of K floats per thread, taken before the parallel region */
} matmul_job;

static const void *row_ptr(const nvlm_wmat *w, int r) {
    return (const uint8_t *)w->data + (size_t)r * nvlm_row_bytes(w->dtype, w->cols);
}

static void matmul_rows(void *ctx, size_t begin, size_t end, int thread) {
    const matmul_job *j = ctx;
    const int K = j->w->cols, N = j->w->rows;
    float *wbuf = j->wbuf + (size_t)thread * ROW_BLOCK * (size_t)K;
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
}

int nvlm_matmul_scalar(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w,
                       const float *bias, nvlm_err *err) {
    if (n_tok <= 0) return NVLM_OK;
    size_t bytes = sizeof(float) * ROW_BLOCK * (size_t)w->cols * (size_t)nvlm_pool_threads(pool);
    matmul_job j = {.y = y, .x = x, .n_tok = n_tok, .w = w, .bias = bias, .wbuf = nvlm_pool_scratch(pool, bytes)};
    if (!j.wbuf) return nvlm_pool_scratch_fail(err, "a matrix product", bytes);
    nvlm_pool_run(pool, (size_t)w->rows, ROW_BLOCK, matmul_rows, &j);
    free(j.wbuf);
    return NVLM_OK;
}

/* The bf16 compute mode (kernels/gemm_bf16.h) takes the prefill products (prompt tokens: more
 * than NVLM_GEN_TOKENS in one call, or any number of them in a batch by role) against
 * plain-format weights; 1 when it took this one. Each output is one chain of its own, so the
 * values do not depend on how many tokens share the call. */
static int bf16_takes(nvlm_pool *pool, int gen, int n_w, float *const *y, const float *x, int n_tok,
                      const nvlm_wmat *const *w, const float *const *bias) {
    if (nvlm_pool_compute(pool) != NVLM_COMPUTE_BF16 || gen) return 0;
    for (int i = 0; i < n_w; i++)
        if (!nvlm_bf16_eligible(w[i])) return 0;
    nvlm_matmul_bf16(pool, n_w, y, x, n_tok, w, bias);
    return 1;
}

/* 1 when a prefill product against w goes to the VNNI int8 matrix product
 * (kernels/gemv_vnni.h: every output nvlm_vec_dot_q's): Q8_0 / Q4 at avx512vnni and
 * above when int8 activations were asked for (NVLM_QACT=int8, nvlm_pool_set_int8_act). Not by
 * default: int8 activations in prefill cost Q8_0 on the reference cases 96.68% -> 95.10% top-1
 * and KL 0.0057 -> 0.0107, past issue 5's bar (docs/quantization.md, "VNNI"). */
static int vnni_for(nvlm_pool *pool, int gen, const nvlm_wmat *w) {
#ifdef NVLM_HAVE_VNNI_KERNELS
    return !gen && nvlm_dtype_is_block(w->dtype) && nvlm_dtype_traits_of(w->dtype)->simd &&
           nvlm_cpu_at_least(nvlm_pool_level(pool), NVLM_CPU_AVX512_VNNI) &&
           nvlm_pool_int8_act(pool);
#else
    (void)pool, (void)gen, (void)w;
    return 0;
#endif
}

/* vnni_for's product, done: 1 when it took it. */
static int vnni_takes(nvlm_pool *pool, int gen, float *y, const float *x, int n_tok, const nvlm_wmat *w,
                      const float *bias) {
#ifdef NVLM_HAVE_VNNI_KERNELS /* out of memory: the float path */
    return vnni_for(pool, gen, w) && nvlm_gemm_vnni(pool, y, x, n_tok, w, bias) == 0;
#else
    (void)pool, (void)gen, (void)y, (void)x, (void)n_tok, (void)w, (void)bias;
    return 0;
#endif
}

/* 1 when one of the matrices takes vnni_for's path (the products then go matrix by matrix). */
static int any_vnni(nvlm_pool *pool, int gen, int n_w, const nvlm_wmat *const *w) {
    for (int i = 0; i < n_w; i++)
        if (vnni_for(pool, gen, w[i])) return 1;
    return 0;
}

/* NVLM_OK when the pool's level reads w's layout: a packed one (kernels/wpack.h) only the levels
 * that pack it read (P8: AVX-512, Q16: AVX512-VNNI); anything else is refused rather than misread.
 * (A tensor-parallel matrix never gets here: src/dist hands its slice on as a matrix of its own.) */
static int layout_ok(const nvlm_pool *pool, int n_w, const nvlm_wmat *const *w, nvlm_err *err) {
    const int level = nvlm_pool_level(pool);
    for (int i = 0; i < n_w; i++) {
        if (w[i]->layout == NVLM_WL_ROWS) continue;
        if (w[i]->layout == nvlm_wpack_layout(w[i]->dtype) && nvlm_wpack_reads(level, w[i]->dtype)) continue;
        return nvlm_fail(err, NVLM_E_INVALID_ARG,
                         "a %dx%d %s matrix packed for another kernel level (layout %d) cannot be read at kernel level %s; "
                         "load the model again to run it at this level",
                         w[i]->rows, w[i]->cols, nvlm_dtype_name(w[i]->dtype), w[i]->layout, nvlm_cpu_level_name(level));
    }
    return NVLM_OK;
}

/* One product by the table's generation (gen != 0) or prefill kernel of w's format. */
static int product(nvlm_pool *pool, int gen, float *y, const float *x, int n_tok, const nvlm_wmat *w,
                   const float *bias, nvlm_err *err) {
    if (n_tok > 0 && w->dist) return nvlm_dist_matmul(pool, gen, y, x, n_tok, w, bias, err); /* a row slice, all-gathered */
    int rc = layout_ok(pool, 1, &w, err);
    if (rc) return rc;
    if (n_tok <= 0 || bf16_takes(pool, gen, 1, &y, x, n_tok, &w, &bias) || vnni_takes(pool, gen, y, x, n_tok, w, bias))
        return NVLM_OK;
    /* a format only the scalar path knows never reaches a SIMD row of the table */
    if (!nvlm_dtype_traits_of(w->dtype)->simd) return nvlm_matmul_scalar(pool, y, x, n_tok, w, bias, err);
    return nvlm_kernel_for(nvlm_product_op(w->dtype, gen), nvlm_pool_level(pool))->matmul(pool, y, x, n_tok, w, bias, err);
}

/* n_w products sharing x, by the table's generation or prefill kernels. */
static int products(nvlm_pool *pool, int gen, int n_w, float *const *y, const float *x, int n_tok,
                    const nvlm_wmat *const *w, const float *const *bias, nvlm_err *err) {
    if (n_tok > 0 && n_w > 0 && w[0]->dist) return nvlm_dist_matmul_multi(pool, gen, n_w, y, x, n_tok, w, bias, err);
    int rc = n_tok > 0 ? layout_ok(pool, n_w, w, err) : NVLM_OK;
    if (rc) return rc;
    if (n_tok <= 0 || n_w <= 0 || bf16_takes(pool, gen, n_w, y, x, n_tok, w, bias)) return NVLM_OK;
    /* together only when every matrix's format runs the same multi-matrix kernel (and none the VNNI one) */
    const int level = nvlm_pool_level(pool);
    nvlm_matmul_multi_fn multi = NULL;
    for (int i = 0; i < n_w && !any_vnni(pool, gen, n_w, w); i++) {
        nvlm_matmul_multi_fn m = nvlm_dtype_traits_of(w[i]->dtype)->simd
                                     ? nvlm_kernel_for(nvlm_product_op(w[i]->dtype, gen), level)->matmul_multi
                                     : NULL;
        multi = i == 0 || m == multi ? m : NULL;
        if (!multi) break;
    }
    if (multi) return multi(pool, n_w, y, x, n_tok, w, bias, err);
    for (int i = 0; i < n_w && !rc; i++) rc = product(pool, gen, y[i], x, n_tok, w[i], bias[i], err);
    return rc;
}

int nvlm_matmul(nvlm_pool *pool, float *y, const float *x, int n_tok, const nvlm_wmat *w,
                const float *bias, nvlm_err *err) {
    return product(pool, n_tok <= NVLM_GEN_TOKENS, y, x, n_tok, w, bias, err);
}

int nvlm_matmul_multi(nvlm_pool *pool, int n_w, float *const *y, const float *x, int n_tok,
                      const nvlm_wmat *const *w, const float *const *bias, nvlm_err *err) {
    return products(pool, n_tok <= NVLM_GEN_TOKENS, n_w, y, x, n_tok, w, bias, err);
}

int nvlm_matmul_roles(nvlm_pool *pool, int n_w, float *const *y, const float *x, int n_gemv, int n_tok,
                      const nvlm_wmat *const *w, const float *const *bias, nvlm_err *err) {
    if (n_tok <= 0 || n_w <= 0) return NVLM_OK;
    if (n_gemv > n_tok) n_gemv = n_tok;
    int rc = products(pool, 1, n_w, y, x, n_gemv, w, bias, err);
    if (rc || n_gemv == n_tok) return rc;
    float *yp[16];
    if (n_w > (int)(sizeof yp / sizeof yp[0]))
        return nvlm_fail(err, NVLM_E_INTERNAL, "nvlm_matmul_roles: %d matrices at once (at most 16)", n_w);
    for (int i = 0; i < n_w; i++) yp[i] = y[i] + (size_t)n_gemv * w[i]->rows;
    return products(pool, 0, n_w, yp, x + (size_t)n_gemv * w[0]->cols, n_tok - n_gemv, w, bias, err);
}

void nvlm_row_to_f32_at(int level, float *dst, const void *src, nvlm_dtype t, int n) {
    if (!nvlm_dtype_traits_of(t)->simd) level = NVLM_CPU_SCALAR;
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
    act_job j = {.a = x, .n = n, .level = nvlm_pool_level(pool), .silu = 0};
    nvlm_pool_run(pool, (n + ACT_UNIT - 1) / ACT_UNIT, 4096 / ACT_UNIT, act_range, &j);
}

void nvlm_silu_mul_pool(nvlm_pool *pool, float *a, const float *b, size_t n) {
    act_job j = {.a = a, .b = b, .n = n, .level = nvlm_pool_level(pool), .silu = 1};
    nvlm_pool_run(pool, (n + ACT_UNIT - 1) / ACT_UNIT, 4096 / ACT_UNIT, act_range, &j);
}
