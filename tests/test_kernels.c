/* Every SIMD kernel against its scalar reference, on odd shapes (tails that are not
 * multiples of the vector width or the 6x16 tile), at every dispatch level this machine
 * supports; results identical for 1 and 3 threads. */
#include "check.h"
#include "kernels/attention.h"
#include "kernels/cpu.h"
#include "kernels/dispatch.h"
#include "kernels/dtype.h"
#include "kernels/ops.h"
#include "kernels/peak.h"
#include "kernels/qblock.h"
#include "kernels/simd.h"
#include "kernels/simd512.h"
#include "kernels/simd_neon.h"
#include <math.h>
#include <stdint.h>

static uint64_t rng = 88172645463325252ull;
static float frand(void) { /* uniform [-1, 1) */
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((rng >> 40) * (1.0 / (1 << 23)) - 1.0);
}
static float *rand_vec(size_t n, float scale) {
    float *v = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) v[i] = frand() * scale;
    return v;
}

/* Weights of dtype dt holding (a rounding of) w [rows, cols]. */
static void *make_weights(nvlm_dtype dt, const float *w, int rows, int cols) {
    size_t rb = nvlm_row_bytes(dt, cols);
    uint8_t *out = malloc(rb * (size_t)rows + 1);
    for (int r = 0; r < rows; r++) nvlm_row_from_f32(out + (size_t)r * rb, w + (size_t)r * cols, dt, cols);
    return out;
}

static void test_matmul(nvlm_pool *p1, nvlm_pool *p3, int level) {
    static const int shapes[][3] = {{1, 37, 67}, {2, 19, 100}, {3, 33, 160}, {4, 17, 64}, {7, 50, 300},
                                    {13, 70, 96}, {25, 17, 520}, {6, 16, 256}, {31, 81, 288},
                                    /* several K blocks with a tail, slivers and groups of panels */
                                    {37, 100, 600}, {29, 150, 544},
                                    /* AVX-512: a 14-row sliver and one row, 4/7/14-row kernels, 32-column panels with tails */
                                    {15, 33, 257}, {44, 65, 513}, {5, 97, 96}, {8, 31, 17}};
    static const nvlm_dtype dts[] = {NVLM_DT_F32, NVLM_DT_F16, NVLM_DT_BF16, NVLM_DT_Q8_0, NVLM_DT_Q4, NVLM_DT_Q4_0};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (size_t d = 0; d < sizeof dts / sizeof dts[0]; d++) {
            int T = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
            nvlm_dtype dt = dts[d];
            if (nvlm_dtype_is_block(dt) && K % NVLM_QK) continue;
            float *wf = rand_vec((size_t)N * K, 0.5f), *x = rand_vec((size_t)T * K, 1.0f), *bias = rand_vec((size_t)N, 1.0f);
            void *wd = make_weights(dt, wf, N, K);
            nvlm_wmat w = {.dtype = dt, .rows = N, .cols = K, .data = wd};
            float *ref = malloc(sizeof(float) * T * N), *y1 = malloc(sizeof(float) * T * N), *y3 = malloc(sizeof(float) * T * N);
            nvlm_matmul_scalar(p1, ref, x, T, &w, bias, NULL);
            /* the default keeps x in float32; the int8-activation option (llama.cpp's way) rounds x
             * to 8 bits per block of 32 (relative 1/254 per term) on the matrix-vector path */
            for (int int8 = 0; int8 <= (nvlm_dtype_is_block(dt) && T <= 3 && level); int8++) {
                nvlm_pool_set_int8_act(p1, int8), nvlm_pool_set_int8_act(p3, int8);
                nvlm_matmul(p1, y1, x, T, &w, bias, NULL);
                nvlm_matmul(p3, y3, x, T, &w, bias, NULL);
                double worst = 0;
                for (int t = 0; t < T; t++)
                    for (int o = 0; o < N; o++) {
                        double mag = 0;
                        float wrow[600];
                        nvlm_row_to_f32(wrow, (uint8_t *)wd + (size_t)o * nvlm_row_bytes(dt, K), dt, K);
                        for (int k = 0; k < K; k++) mag += fabs((double)x[t * K + k] * wrow[k]);
                        double tol = mag * (int8 ? 1.0 / 100 : 1e-6) + 1e-6;
                        double e = fabs((double)y1[t * N + o] - ref[t * N + o]) / tol;
                        if (!(e <= worst)) worst = e;
                    }
                CHECK(worst <= 1, "%s matmul %s%s T=%d N=%d K=%d: error %.3g x the bound", nvlm_cpu_level_name(level),
                      nvlm_dtype_name(dt), int8 ? " (int8 x)" : "", T, N, K, worst);
                CHECK(!memcmp(y1, y3, sizeof(float) * T * N), "%s matmul %s T=%d N=%d K=%d: 1 and 3 threads differ",
                      nvlm_cpu_level_name(level), nvlm_dtype_name(dt), T, N, K);
            }
            nvlm_pool_set_int8_act(p1, 0), nvlm_pool_set_int8_act(p3, 0);
#ifdef NVLM_HAVE_AVX512_KERNELS
            /* the AVX-512 float kernels promise AVX2's bits (the same FMA chain per output) */
            const char *kname = nvlm_kernel_for(nvlm_matmul_op(dt, T), level)->name;
            if (!strncmp(kname, "gemm_avx512", 11) || !strncmp(kname, "gemv_avx512", 11)) {
                float *y2 = malloc(sizeof(float) * T * N);
                nvlm_matmul(p1, y1, x, T, &w, bias, NULL);
                nvlm_pool_set_level(p1, NVLM_CPU_AVX2);
                nvlm_matmul(p1, y2, x, T, &w, bias, NULL);
                nvlm_pool_set_level(p1, level);
                CHECK(!memcmp(y1, y2, sizeof(float) * T * N), "%s matmul %s T=%d N=%d K=%d: not the bits of avx2",
                      nvlm_cpu_level_name(level), nvlm_dtype_name(dt), T, N, K);
                free(y2);
            }
#endif
            free(wf), free(x), free(bias), free(wd), free(ref), free(y1), free(y3);
        }
}

#ifdef NVLM_HAVE_AVX2_KERNELS
/* Matrices sharing x (q/k/v, gate/up): the same values as one nvlm_matmul each, at 1 and 3 threads. */
static void test_matmul_multi(nvlm_pool *p1, nvlm_pool *p3) {
    static const int shapes[][4] = {{40, 96, 40, 288}, {13, 33, 17, 96}, {2, 40, 24, 64}}; /* T, N0, N1, K; K % 32 == 0 (Q8_0) */
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int T = shapes[s][0], N[3] = {shapes[s][1], shapes[s][2], shapes[s][1] + 5}, K = shapes[s][3];
        float *x = rand_vec((size_t)T * K, 1.0f), *bias = rand_vec((size_t)N[2], 1.0f);
        void *wd[3];
        nvlm_wmat w[3];
        float *ref[3], *y1[3], *y3[3];
        for (int i = 0; i < 3; i++) {
            float *wf = rand_vec((size_t)N[i] * K, 0.5f);
            nvlm_dtype dt = i == 1 ? NVLM_DT_Q8_0 : NVLM_DT_F16;
            wd[i] = make_weights(dt, wf, N[i], K);
            w[i] = (nvlm_wmat){.dtype = dt, .rows = N[i], .cols = K, .data = wd[i]};
            ref[i] = malloc(sizeof(float) * T * N[i]), y1[i] = malloc(sizeof(float) * T * N[i]);
            y3[i] = malloc(sizeof(float) * T * N[i]);
            nvlm_matmul(p1, ref[i], x, T, &w[i], i == 1 ? NULL : bias, NULL);
            free(wf);
        }
        const nvlm_wmat *ws[3] = {&w[0], &w[1], &w[2]};
        const float *bs[3] = {bias, NULL, bias};
        nvlm_matmul_multi_avx2(p1, 3, y1, x, T, ws, bs, NULL);
        nvlm_matmul_multi_avx2(p3, 3, y3, x, T, ws, bs, NULL);
        for (int i = 0; i < 3; i++) {
            CHECK(!memcmp(y1[i], ref[i], sizeof(float) * T * N[i]), "matmul_multi T=%d K=%d matrix %d: differs from nvlm_matmul", T, K, i);
            CHECK(!memcmp(y3[i], ref[i], sizeof(float) * T * N[i]), "matmul_multi T=%d K=%d matrix %d: 3 threads differ", T, K, i);
            free(wd[i]), free(ref[i]), free(y1[i]), free(y3[i]);
        }
        free(x), free(bias);
    }
}
#endif

#ifdef NVLM_HAVE_AVX512_KERNELS
/* nvlm_matmul_multi at an AVX-512 level: the same values as one nvlm_matmul each, and as AVX2's
 * multi-matrix kernel (1 and 3 threads). */
static void test_matmul_multi_at(nvlm_pool *p1, nvlm_pool *p3, int level) {
    static const int shapes[][4] = {{40, 96, 40, 288}, {15, 33, 17, 96}, {4, 40, 24, 64}}; /* T, N0, N1, K */
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int T = shapes[s][0], N[3] = {shapes[s][1], shapes[s][2], shapes[s][1] + 5}, K = shapes[s][3];
        float *x = rand_vec((size_t)T * K, 1.0f), *bias = rand_vec((size_t)N[2], 1.0f);
        void *wd[3];
        nvlm_wmat w[3];
        float *ref[3], *y1[3], *y3[3], *y2[3];
        for (int i = 0; i < 3; i++) {
            float *wf = rand_vec((size_t)N[i] * K, 0.5f);
            nvlm_dtype dt = i == 1 ? NVLM_DT_BF16 : i == 2 ? NVLM_DT_F32 : NVLM_DT_F16;
            wd[i] = make_weights(dt, wf, N[i], K);
            w[i] = (nvlm_wmat){.dtype = dt, .rows = N[i], .cols = K, .data = wd[i]};
            ref[i] = malloc(sizeof(float) * T * N[i]), y1[i] = malloc(sizeof(float) * T * N[i]);
            y3[i] = malloc(sizeof(float) * T * N[i]), y2[i] = malloc(sizeof(float) * T * N[i]);
            nvlm_matmul(p1, ref[i], x, T, &w[i], i == 1 ? NULL : bias, NULL);
            free(wf);
        }
        const nvlm_wmat *ws[3] = {&w[0], &w[1], &w[2]};
        const float *bs[3] = {bias, NULL, bias};
        CHECK(nvlm_matmul_multi(p1, 3, y1, x, T, ws, bs, NULL) == 0 && nvlm_matmul_multi(p3, 3, y3, x, T, ws, bs, NULL) == 0,
              "%s matmul_multi failed", nvlm_cpu_level_name(level));
        nvlm_pool_set_level(p1, NVLM_CPU_AVX2);
        nvlm_matmul_multi(p1, 3, y2, x, T, ws, bs, NULL);
        nvlm_pool_set_level(p1, level);
        for (int i = 0; i < 3; i++) {
            CHECK(!memcmp(y1[i], ref[i], sizeof(float) * T * N[i]), "%s matmul_multi T=%d matrix %d: differs from nvlm_matmul",
                  nvlm_cpu_level_name(level), T, i);
            CHECK(!memcmp(y3[i], ref[i], sizeof(float) * T * N[i]), "%s matmul_multi T=%d matrix %d: 3 threads differ",
                  nvlm_cpu_level_name(level), T, i);
            CHECK(!memcmp(y2[i], ref[i], sizeof(float) * T * N[i]), "%s matmul_multi T=%d matrix %d: not the bits of avx2",
                  nvlm_cpu_level_name(level), T, i);
            free(wd[i]), free(ref[i]), free(y1[i]), free(y3[i]), free(y2[i]);
        }
        free(x), free(bias);
    }
}
#endif

#ifdef NVLM_HAVE_AVX512_KERNELS
/* A product whose packing buffer cannot be allocated (2^20 tokens x 2^28 columns: 1 PiB) is
 * refused with -1 before anything is read or written. ASan aborts on such a request instead of
 * returning NULL, so its build skips this. */
static void test_matmul_nomem(nvlm_pool *p, int level) {
#if !defined(__SANITIZE_ADDRESS__)
    float y = 123.0f, x = 0;
    uint16_t wd = 0;
    nvlm_wmat w = {.dtype = NVLM_DT_BF16, .rows = 1, .cols = 1 << 28, .data = &wd}; /* never read */
    nvlm_err err = {0};
    CHECK(nvlm_matmul(p, &y, &x, 1 << 20, &w, NULL, &err) == NVLM_E_NOMEM && y == 123.0f && err.msg[0],
          "%s matmul without memory for its buffers: not refused", nvlm_cpu_level_name(level));
#else
    (void)p, (void)level;
#endif
}
#endif

static void test_attention(int level) {
    static const int cases[][4] = {/* n_q, n_keys, d, causal_pos0 */
                                   {1, 1, 16, 0},   {1, 37, 16, 36}, {5, 5, 20, -1},  {37, 37, 64, -1},
                                   {30, 45, 64, 15}, {50, 50, 72, 0}, {25, 130, 128, -1}, {3, 300, 64, 297},
                                   /* up to 3 queries: no packing (odd d, causal start inside) */
                                   {2, 41, 20, -1},  {3, 9, 13, 2}, {1, 77, 100, 76}, {2, 150, 72, -1}, {1, 600, 128, 599},
                                   /* beyond PREPACK_KEYS: K and V packed per block of queries */
                                   {26, 8250, 20, 8230},
                                   /* AVX-512: 32-column panels with tails, 14-row slivers, rests of 16 */
                                   {29, 61, 100, 30}, {15, 1025, 64, -1}, {4, 33, 40, -1}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int nq = cases[c][0], nk = cases[c][1], d = cases[c][2], pos0 = cases[c][3];
        size_t qs = (size_t)d + 3, ks = (size_t)2 * d + 1;
        float *q = rand_vec(qs * nq, 1.5f), *kv = rand_vec(ks * nk, 1.5f);
        float *ref = malloc(sizeof(float) * nq * d), *out = malloc(sizeof(float) * nq * d);
        float *s0 = malloc(sizeof(float) * nvlm_attention_scratch(0, nq, nk, d));
        float *s1 = malloc(sizeof(float) * nvlm_attention_scratch(level, nq, nk, d));
        float scale = 1.0f / sqrtf((float)d);
        nvlm_attention(0, q, qs, nq, kv, ks, kv + d, ks, nk, pos0, d, scale, ref, (size_t)d, s0);
        nvlm_attention(level, q, qs, nq, kv, ks, kv + d, ks, nk, pos0, d, scale, out, (size_t)d, s1);
        double worst = 0;
        for (int i = 0; i < nq * d; i++) {
            double e = fabs((double)out[i] - ref[i]);
            if (!(e <= worst)) worst = e;
        }
        CHECK(worst <= 2e-6, "%s attention nq=%d nk=%d d=%d pos0=%d: max diff %.3g", nvlm_cpu_level_name(level), nq,
              nk, d, pos0, worst);
#ifdef NVLM_HAVE_AVX512_KERNELS
        if (nvlm_kernel_for(NVLM_OP_ATTENTION, level)->attention == nvlm_attention_avx512) {
            float *s2 = malloc(sizeof(float) * nvlm_attention_scratch(NVLM_CPU_AVX2, nq, nk, d));
            nvlm_attention(NVLM_CPU_AVX2, q, qs, nq, kv, ks, kv + d, ks, nk, pos0, d, scale, ref, (size_t)d, s2);
            CHECK(!memcmp(out, ref, sizeof(float) * nq * d), "%s attention nq=%d nk=%d d=%d pos0=%d: not the bits of avx2",
                  nvlm_cpu_level_name(level), nq, nk, d, pos0);
            free(s2);
        }
#endif
        free(q), free(kv), free(ref), free(out), free(s0), free(s1);
    }
}

static void test_activations(nvlm_pool *p, int level) {
    size_t n = 1003;
    float *a = rand_vec(n, 9.0f), *b = rand_vec(n, 2.0f);
    a[0] = -30, a[1] = 30, a[2] = 0, a[3] = -100, a[4] = 100;
    float *r = malloc(sizeof(float) * n), *s = malloc(sizeof(float) * n);
    memcpy(r, a, sizeof(float) * n), memcpy(s, a, sizeof(float) * n);
    nvlm_gelu(r, n);
    nvlm_gelu_pool(p, s, n);
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)s[i] - r[i]) / (fabs(r[i]) * 2e-6 + 1e-6);
        if (!(e <= worst)) worst = e;
    }
    CHECK(worst <= 1, "%s gelu: error %.3g x the bound", nvlm_cpu_level_name(level), worst);
    memcpy(r, a, sizeof(float) * n), memcpy(s, a, sizeof(float) * n);
    nvlm_silu_mul(r, b, n);
    nvlm_silu_mul_pool(p, s, b, n);
    worst = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)s[i] - r[i]) / (fabs(r[i]) * 1e-6 + 1e-30);
        if (!(e <= worst)) worst = e;
    }
    CHECK(worst <= 1, "%s silu_mul: error %.3g x the bound", nvlm_cpu_level_name(level), worst);
#ifdef NVLM_HAVE_AVX2_KERNELS
    if (nvlm_cpu_at_least(level, NVLM_CPU_AVX2)) { /* every x86 level: AVX2's bits */
        memcpy(r, a, sizeof(float) * n), memcpy(s, a, sizeof(float) * n);
        nvlm_gelu_avx2(r, n);
        nvlm_gelu_pool(p, s, n);
        CHECK(!memcmp(r, s, sizeof(float) * n), "%s gelu: not the bits of avx2", nvlm_cpu_level_name(level));
        memcpy(r, a, sizeof(float) * n), memcpy(s, a, sizeof(float) * n);
        nvlm_silu_mul_avx2(r, b, n);
        nvlm_silu_mul_pool(p, s, b, n);
        CHECK(!memcmp(r, s, sizeof(float) * n), "%s silu_mul: not the bits of avx2", nvlm_cpu_level_name(level));
    }
#endif
    free(a), free(b), free(r), free(s);
}

/* A SIMD level's helpers that have an exact scalar twin. */
typedef struct simd_helpers {
    const char *name;
    void (*quantize_row_q8a)(const float *x, nvlm_block_q8a *dst, int n);
    void (*row_to_f32)(float *dst, const void *src, nvlm_dtype t, int n);
    float (*vec_dot_q)(nvlm_dtype t, const void *w, const nvlm_block_q8a *x, int n);
    float (*dot)(const float *a, const float *b, int n); /* NULL (any of them): none at this level */
} simd_helpers;

/* F16 edge values (subnormals, infinities, signed zero, quiet NaN): the SIMD conversion must agree
 * with nvlm_f16_to_f32 on them too. */
static const uint16_t f16_edges[16] = {0x0001, 0x03ff, 0x0200, 0x8001, 0x8000, 0x0000, 0x7c00, 0xfc00,
                                       0x7bff, 0xfbff, 0x0400, 0x3c00, 0x7e00, 0x3555, 0xc000, 0x1234};

static void test_simd_helpers(const simd_helpers *h) {
    int n = 32 * 7;
    float *x = rand_vec((size_t)n, 3.0f), *w = rand_vec((size_t)n, 1.0f);
    x[5] = 0;
    memset(x + 64, 0, sizeof(float) * 32); /* an all-zero block */
    nvlm_block_q8a a[7], b[7];
    nvlm_quantize_row_q8a(x, a, n);
    if (h->quantize_row_q8a) {
        h->quantize_row_q8a(x, b, n);
        CHECK(!memcmp(a, b, sizeof a), "%s q8a quantization differs from the scalar reference", h->name);
    }
    static const nvlm_dtype dts[] = {NVLM_DT_F32, NVLM_DT_F16, NVLM_DT_BF16, NVLM_DT_Q8_0, NVLM_DT_Q4, NVLM_DT_Q4_0};
    for (size_t d = 0; d < sizeof dts / sizeof dts[0]; d++) {
        void *wd = make_weights(dts[d], w, 1, n);
        float r[32 * 7], s[32 * 7];
        int m = nvlm_dtype_is_block(dts[d]) ? n : n - 13; /* tails for plain formats */
        nvlm_row_to_f32(r, wd, dts[d], m);
        h->row_to_f32(s, wd, dts[d], m);
        CHECK(!memcmp(r, s, sizeof(float) * m), "%s row_to_f32 %s differs", h->name, nvlm_dtype_name(dts[d]));
        if (nvlm_dtype_is_block(dts[d]) && h->vec_dot_q) {
            float dr = nvlm_vec_dot_q(dts[d], wd, a, n), ds = h->vec_dot_q(dts[d], wd, a, n);
            CHECK(fabsf(dr - ds) <= 1e-5f * (fabsf(dr) + 1), "%s vec_dot %s: %g vs %g", h->name,
                  nvlm_dtype_name(dts[d]), ds, dr);
        }
        free(wd);
    }
    if (h->dot) {
        float dr = nvlm_dot(x, w, n - 5), ds = h->dot(x, w, n - 5);
        CHECK(fabsf(dr - ds) <= 1e-5f * (fabsf(dr) + 1), "%s dot: %g vs %g", h->name, ds, dr);
    }
    float r[16], s[16];
    nvlm_row_to_f32(r, f16_edges, NVLM_DT_F16, 16);
    h->row_to_f32(s, f16_edges, NVLM_DT_F16, 16);
    CHECK(!memcmp(r, s, sizeof r), "%s F16 edge values differ from nvlm_f16_to_f32", h->name);
    free(x), free(w);
}

/* The table has a kernel for every op, and it is one the level can run. */
static void test_dispatch_table(int level) {
    for (int op = 0; op < NVLM_OP_COUNT; op++) {
        const nvlm_kernel *k = nvlm_kernel_for((nvlm_op)op, level);
        CHECK(k && (int)k->op == op && nvlm_cpu_at_least(level, k->level) && k->name && strcmp(nvlm_op_name((nvlm_op)op), "?"),
              "%s: no kernel for op %d", nvlm_cpu_level_name(level), op);
    }
#ifdef NVLM_HAVE_AVX512_KERNELS
    if (nvlm_cpu_at_least(level, NVLM_CPU_AVX512))
        CHECK(!strncmp(nvlm_kernel_for(NVLM_OP_PREFILL_BF16, level)->name, "gemm_avx512", 11) ||
                  nvlm_kernel_for(NVLM_OP_PREFILL_BF16, level)->level > NVLM_CPU_AVX512,
              "%s: BF16 prefill does not run an AVX-512 kernel", nvlm_cpu_level_name(level));
#endif
}

/* Quantization round trip: within half a step of the block's scale d, except values past
 * 127 d (the scale search may pick d down to amax / 128), which clamp to 127 d. */
static void test_quant_roundtrip(void) {
    int n = 32 * 9;
    float *x = rand_vec((size_t)n, 2.0f), y[32 * 9];
    nvlm_block_q8_0 buf[9];
    nvlm_quantize_row_q8_0(x, buf, n);
    nvlm_row_to_f32(y, buf, NVLM_DT_Q8_0, n);
    int ok = 1;
    for (int b = 0; b < 9; b++) {
        float amax = 0, d = nvlm_f16_to_f32(buf[b].d);
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b * 32 + j]));
        ok &= d >= amax / 128.5f && d <= amax / 126.5f;
        for (int j = 0; j < 32; j++) {
            float v = x[b * 32 + j], e = fabsf(y[b * 32 + j] - v);
            ok &= fabsf(v) <= 127.5f * d ? e <= 0.5f * d * 1.0001f : e <= fabsf(v) - 127 * d + 1e-6f;
        }
    }
    CHECK(ok, "Q8_0 round trip beyond half a step (or beyond the clamp)");
    /* nvlm_row_from_f32: plain formats round each value as nvlm_f32_to_f16/bf16 do (F32 exact),
     * block formats as the quantizers do */
    static const nvlm_dtype plain[] = {NVLM_DT_F32, NVLM_DT_F16, NVLM_DT_BF16, NVLM_DT_Q8_0};
    for (size_t d = 0; d < 4; d++) {
        uint8_t enc[4 * 32 * 9 + 1] __attribute__((aligned(8))), want[4 * 32 * 9];
        size_t at = plain[d] == NVLM_DT_Q8_0 ? 0 : 1; /* odd address: plain rows may be unaligned */
        nvlm_row_from_f32(enc + at, x, plain[d], n);
        size_t nb = nvlm_row_bytes(plain[d], n);
        if (plain[d] == NVLM_DT_Q8_0) nvlm_quantize_row_q8_0(x, want, n);
        for (int i = 0; plain[d] != NVLM_DT_Q8_0 && i < n; i++) {
            uint16_t h = plain[d] == NVLM_DT_F16 ? nvlm_f32_to_f16(x[i]) : nvlm_f32_to_bf16(x[i]);
            if (plain[d] == NVLM_DT_F32) memcpy(want + 4 * i, &x[i], 4);
            else memcpy(want + 2 * i, &h, 2);
        }
        CHECK(!memcmp(enc + at, want, nb), "row_from_f32 %s differs from the element-wise conversion",
              nvlm_dtype_name(plain[d]));
    }
    nvlm_quantize_row_q4(x, buf, n);
    nvlm_row_to_f32(y, buf, NVLM_DT_Q4, n);
    double e = 0, s = 0;
    for (int i = 0; i < n; i++) e += (double)(y[i] - x[i]) * (y[i] - x[i]), s += (double)x[i] * x[i];
    CHECK(e / s < 0.01, "Q4 round trip: relative squared error %.4f", e / s);
    /* Q4_0: llama.cpp's bytes (byte j: weight j in the low nibble, j + 16 in the high one;
     * w = d (q - 8)), a little less exact than Q4, and its int8 dot product that of its values */
    nvlm_block_q4_0 b40[9];
    nvlm_quantize_row_q4_0(x, b40, n);
    nvlm_row_to_f32(y, b40, NVLM_DT_Q4_0, n);
    double e40 = 0;
    for (int i = 0; i < n; i++) e40 += (double)(y[i] - x[i]) * (y[i] - x[i]);
    CHECK(e40 / s < 0.015, "Q4_0 round trip: relative squared error %.4f", e40 / s);
    ok = 1;
    for (int b = 0; b < 9; b++)
        for (int j = 0; j < 16; j++) {
            float d = nvlm_f16_to_f32(b40[b].d);
            ok &= y[b * 32 + j] == d * (float)((b40[b].q[j] & 15) - 8) && y[b * 32 + j + 16] == d * (float)((b40[b].q[j] >> 4) - 8);
        }
    CHECK(ok, "Q4_0 values are not d * (nibble - 8)");
    nvlm_block_q8a xa[9];
    nvlm_quantize_row_q8a(x, xa, n);
    double want = 0;
    for (int i = 0; i < n; i++) want += (double)y[i] * xa[i / 32].d * xa[i / 32].q[i % 32];
    float got = nvlm_vec_dot_q(NVLM_DT_Q4_0, b40, xa, n);
    CHECK(fabs(got - want) <= 1e-4 * (fabs(want) + 1), "Q4_0 vec_dot %g, its values give %g", got, want);
    free(x);
}

/* nvlm bench's roofline pass reads exactly the spans given (ASan sees any byte past them):
 * odd sizes, empty spans, more pieces than threads, at the pool's level. */
static void test_read_spans(nvlm_pool *p, int level) {
    enum { N = (3 << 20) + 77 };
    uint8_t *buf = malloc(N);
    if (!buf) return;
    memset(buf, 5, N);
    nvlm_span s[] = {{buf, 1}, {buf + 1, 0}, {buf + 3, 129}, {buf + 200, N - 200}, {buf + 7, 127}};
    double t = nvlm_read_spans_seconds(p, s, (int)(sizeof s / sizeof *s), 0);
    CHECK(t > 0 && t < 10, "read spans at level %d: %g s", level, t);
    double t0 = nvlm_read_spans_seconds(p, s, 0, 0);
    CHECK(t0 >= 0 && t0 < 1, "no spans: nothing to read, %g s", t0);
    free(buf);
}

/* A matrix product whose scratch cannot be had (the pool's scratch limit at 0 stands for a failed
 * allocation) returns NVLM_E_NOMEM with a message, at every level, and never skips its work
 * silently; with the limit lifted the same calls succeed. */
static void test_scratch_failure(int level) {
    nvlm_pool *p = NULL;
    CHECK(nvlm_pool_new(3, &p, NULL) == 0, "pool");
    if (!p) return;
    nvlm_pool_set_level(p, level);
    nvlm_pool_set_int8_act(p, 1); /* the NEON matrix-vector product takes scratch for int8 activations only */
    const int T = 8, N = 40, K = 32 * 1600; /* 1600 blocks per row: more than the gemv stack buffers hold */
    float *x = rand_vec((size_t)T * K, 1.0f), *wf = rand_vec((size_t)N * K, 0.1f);
    float *y[2] = {malloc(sizeof(float) * T * N), malloc(sizeof(float) * T * N)};
    void *wq = make_weights(NVLM_DT_Q8_0, wf, N, K);
    nvlm_wmat w = {.dtype = NVLM_DT_Q8_0, .rows = N, .cols = K, .data = wq};
    const nvlm_wmat *ws[2] = {&w, &w};
    const float *bs[2] = {NULL, NULL};
    const char *name = nvlm_cpu_level_name(level);
    nvlm_pool_set_scratch_limit(p, 0);
    for (int t = 1; t <= T; t += T - 1) { /* the matrix-vector path and the packed one */
        nvlm_err err = {0};
        int rc = nvlm_matmul(p, y[0], x, t, &w, NULL, &err);
        CHECK(rc == NVLM_E_NOMEM && err.code == NVLM_E_NOMEM && strstr(err.msg, "out of memory") &&
                  strstr(err.msg, "scratch"),
              "%s: %d tokens without scratch: rc %d (%s)", name, t, rc, err.msg);
        err = (nvlm_err){0};
        rc = nvlm_matmul_multi(p, 2, y, x, t, ws, bs, &err);
        CHECK(rc == NVLM_E_NOMEM && strstr(err.msg, "out of memory"), "%s: multi, %d tokens without scratch: rc %d",
              name, t, rc);
        CHECK(nvlm_matmul_scalar(p, y[0], x, t, &w, NULL, NULL) == NVLM_E_NOMEM, "%s: scalar without scratch", name);
    }
    nvlm_pool_set_scratch_limit(p, SIZE_MAX);
    nvlm_err err = {0};
    CHECK(nvlm_matmul(p, y[0], x, T, &w, NULL, &err) == 0 && nvlm_matmul(p, y[1], x, 1, &w, NULL, &err) == 0,
          "%s: with scratch: %s", name, err.msg);
    free(x), free(wf), free(y[0]), free(y[1]), free(wq);
    nvlm_pool_free(p);
}

/* The dtype traits table: every format has its row filled (name that parses back, block
 * geometry, converters; an int8 dot product for block formats), its derived sizes agree, and
 * a float row survives from_f32 -> to_f32 within the format's rounding. No format beyond the
 * table exists: it has no traits and no name. */
static void test_dtype_table(void) {
    for (int t = 0; t < NVLM_DT_COUNT; t++) {
        const nvlm_dtype_traits *d = nvlm_dtype_traits_of((nvlm_dtype)t);
        nvlm_dtype back = NVLM_DT_COUNT;
        CHECK(d && d->name && !nvlm_dtype_parse(d->name, &back) && back == (nvlm_dtype)t, "dtype %d: name", t);
        if (!d) continue;
        CHECK(d->block >= 1 && d->block_bytes > 0 && d->to_f32 && d->from_f32 && (d->block == 1) == !d->vec_dot_q,
              "%s: row incomplete", d->name);
        CHECK(nvlm_row_bytes((nvlm_dtype)t, 64) == 64 / (size_t)d->block * d->block_bytes &&
                  nvlm_dtype_is_block((nvlm_dtype)t) == (d->block > 1) &&
                  nvlm_dtype_size((nvlm_dtype)t) == (d->block == 1 ? d->block_bytes : 0),
              "%s: derived sizes", d->name);
        float x[64], y[64];
        uint8_t buf[64 * 4];
        for (int i = 0; i < 64; i++) x[i] = frand();
        nvlm_row_from_f32(buf, x, (nvlm_dtype)t, 64);
        nvlm_row_to_f32(y, buf, (nvlm_dtype)t, 64);
        double e = 0;
        for (int i = 0; i < 64; i++) e = fmax(e, fabs(x[i] - y[i]));
        CHECK(e < 0.15, "%s: round trip error %g", d->name, e);
    }
    nvlm_dtype t;
    CHECK(!nvlm_dtype_traits_of(NVLM_DT_COUNT) && !strcmp(nvlm_dtype_name(NVLM_DT_COUNT), "?") &&
              nvlm_row_bytes(NVLM_DT_COUNT, 64) == 0 && nvlm_dtype_parse("Q5_K", &t) == -1,
          "a format beyond the table");
}

int main(void) {
    nvlm_err err = {0};
    nvlm_pool *p1 = NULL, *p3 = NULL;
    CHECK(nvlm_pool_new(1, &p1, &err) == 0 && nvlm_pool_new(3, &p3, &err) == 0, "pool: %s", err.msg);
    if (!p1 || !p3) return check_done("test_kernels");
    int hw = nvlm_cpu_hw_level();
    char feat[256];
    nvlm_cpu_features(feat, sizeof feat);
    printf("cpu: %s (kernel levels up to %s)\n", feat, nvlm_cpu_level_name(hw));
    int n_levels, skipped = 0;
    const int *levels = nvlm_cpu_levels(&n_levels);
    for (int li = 0; li < n_levels; li++) {
        int level = levels[li];
        if (!nvlm_cpu_level_usable(level)) {
            printf("level %s: not on this machine, its checks skipped\n", nvlm_cpu_level_name(level));
            skipped++;
            continue;
        }
        nvlm_pool_set_level(p1, level);
        nvlm_pool_set_level(p3, level);
        test_matmul(p1, p3, level);
        test_attention(level);
        test_activations(p3, level);
        test_read_spans(p3, level);
        test_scratch_failure(level);
#ifdef NVLM_HAVE_AVX512_KERNELS
        if (nvlm_cpu_at_least(level, NVLM_CPU_AVX512)) test_matmul_multi_at(p1, p3, level);
        if (nvlm_cpu_at_least(level, NVLM_CPU_AVX512)) test_matmul_nomem(p3, level);
#endif
        test_dispatch_table(level);
    }
#ifdef NVLM_HAVE_AVX2_KERNELS
    if (nvlm_cpu_at_least(hw, NVLM_CPU_AVX2)) {
        nvlm_pool_set_level(p1, NVLM_CPU_AVX2);
        nvlm_pool_set_level(p3, NVLM_CPU_AVX2);
        test_matmul_multi(p1, p3);
        static const simd_helpers avx2 = {"avx2", nvlm_quantize_row_q8a_avx2, nvlm_row_to_f32_avx2,
                                          nvlm_vec_dot_q_avx2, nvlm_dot_avx2};
        test_simd_helpers(&avx2);
    }
#endif
#ifdef NVLM_HAVE_AVX512_KERNELS
    if (nvlm_cpu_at_least(hw, NVLM_CPU_AVX512)) {
        static const simd_helpers avx512 = {"avx512", NULL, nvlm_row_to_f32_avx512, NULL, NULL};
        test_simd_helpers(&avx512);
    }
#endif
#ifdef NVLM_HAVE_NEON_KERNELS
    if (hw == NVLM_CPU_NEON) {
        static const simd_helpers neon = {"neon", nvlm_quantize_row_q8a_neon, nvlm_row_to_f32_neon,
                                          nvlm_vec_dot_q_neon, NULL};
        test_simd_helpers(&neon);
    }
#endif
    test_quant_roundtrip();
    test_dtype_table();
    printf("%d of %d kernel levels skipped (not on this machine)\n", skipped, n_levels);
    nvlm_pool_free(p1);
    nvlm_pool_free(p3);
    return check_done("test_kernels");
}
