/* Every SIMD kernel against its scalar reference, on odd shapes (tails that are not
 * multiples of the vector width or the 6x16 tile), at every dispatch level this machine
 * supports; results identical for 1 and 3 threads. */
#include "check.h"
#include "kernels/attention.h"
#include "kernels/cpu.h"
#include "kernels/ops.h"
#include "kernels/peak.h"
#include "kernels/qblock.h"
#include "kernels/simd.h"
#include "kernels/simd_neon.h"
#include <math.h>

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
                                    {37, 100, 600}, {29, 150, 544}};
    static const nvlm_dtype dts[] = {NVLM_DT_F32, NVLM_DT_F16, NVLM_DT_BF16, NVLM_DT_Q8_0, NVLM_DT_Q4};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (size_t d = 0; d < sizeof dts / sizeof dts[0]; d++) {
            int T = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
            nvlm_dtype dt = dts[d];
            if (nvlm_dtype_is_block(dt) && K % NVLM_QK) continue;
            float *wf = rand_vec((size_t)N * K, 0.5f), *x = rand_vec((size_t)T * K, 1.0f), *bias = rand_vec((size_t)N, 1.0f);
            void *wd = make_weights(dt, wf, N, K);
            nvlm_wmat w = {.dtype = dt, .rows = N, .cols = K, .data = wd};
            float *ref = malloc(sizeof(float) * T * N), *y1 = malloc(sizeof(float) * T * N), *y3 = malloc(sizeof(float) * T * N);
            nvlm_matmul_scalar(p1, ref, x, T, &w, bias);
            /* the default keeps x in float32; the int8-activation option (llama.cpp's way) rounds x
             * to 8 bits per block of 32 (relative 1/254 per term) on the matrix-vector path */
            for (int int8 = 0; int8 <= (nvlm_dtype_is_block(dt) && T <= 3 && level); int8++) {
                nvlm_pool_set_int8_act(p1, int8), nvlm_pool_set_int8_act(p3, int8);
                nvlm_matmul(p1, y1, x, T, &w, bias);
                nvlm_matmul(p3, y3, x, T, &w, bias);
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
            nvlm_matmul(p1, ref[i], x, T, &w[i], i == 1 ? NULL : bias);
            free(wf);
        }
        const nvlm_wmat *ws[3] = {&w[0], &w[1], &w[2]};
        const float *bs[3] = {bias, NULL, bias};
        nvlm_matmul_multi_avx2(p1, 3, y1, x, T, ws, bs);
        nvlm_matmul_multi_avx2(p3, 3, y3, x, T, ws, bs);
        for (int i = 0; i < 3; i++) {
            CHECK(!memcmp(y1[i], ref[i], sizeof(float) * T * N[i]), "matmul_multi T=%d K=%d matrix %d: differs from nvlm_matmul", T, K, i);
            CHECK(!memcmp(y3[i], ref[i], sizeof(float) * T * N[i]), "matmul_multi T=%d K=%d matrix %d: 3 threads differ", T, K, i);
            free(wd[i]), free(ref[i]), free(y1[i]), free(y3[i]);
        }
        free(x), free(bias);
    }
}
#endif

static void test_attention(int level) {
    static const int cases[][4] = {/* n_q, n_keys, d, causal_pos0 */
                                   {1, 1, 16, 0},   {1, 37, 16, 36}, {5, 5, 20, -1},  {37, 37, 64, -1},
                                   {30, 45, 64, 15}, {50, 50, 72, 0}, {25, 130, 128, -1}, {3, 300, 64, 297},
                                   /* up to 3 queries: no packing (odd d, causal start inside) */
                                   {2, 41, 20, -1},  {3, 9, 13, 2}, {1, 77, 100, 76}, {2, 150, 72, -1}, {1, 600, 128, 599},
                                   /* beyond PREPACK_KEYS: K and V packed per block of queries */
                                   {26, 8250, 20, 8230}};
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
    free(a), free(b), free(r), free(s);
}

/* A SIMD level's helpers that have an exact scalar twin. */
typedef struct simd_helpers {
    const char *name;
    void (*quantize_row_q8a)(const float *x, nvlm_block_q8a *dst, int n);
    void (*row_to_f32)(float *dst, const void *src, nvlm_dtype t, int n);
    float (*vec_dot_q)(nvlm_dtype t, const void *w, const nvlm_block_q8a *x, int n);
    float (*dot)(const float *a, const float *b, int n); /* NULL: none at this level */
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
    h->quantize_row_q8a(x, b, n);
    CHECK(!memcmp(a, b, sizeof a), "%s q8a quantization differs from the scalar reference", h->name);
    static const nvlm_dtype dts[] = {NVLM_DT_F32, NVLM_DT_F16, NVLM_DT_BF16, NVLM_DT_Q8_0, NVLM_DT_Q4};
    for (size_t d = 0; d < 5; d++) {
        void *wd = make_weights(dts[d], w, 1, n);
        float r[32 * 7], s[32 * 7];
        int m = nvlm_dtype_is_block(dts[d]) ? n : n - 13; /* tails for plain formats */
        nvlm_row_to_f32(r, wd, dts[d], m);
        h->row_to_f32(s, wd, dts[d], m);
        CHECK(!memcmp(r, s, sizeof(float) * m), "%s row_to_f32 %s differs", h->name, nvlm_dtype_name(dts[d]));
        if (nvlm_dtype_is_block(dts[d])) {
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
#ifdef NVLM_HAVE_NEON_KERNELS
    if (hw == NVLM_CPU_NEON) {
        static const simd_helpers neon = {"neon", nvlm_quantize_row_q8a_neon, nvlm_row_to_f32_neon,
                                          nvlm_vec_dot_q_neon, NULL};
        test_simd_helpers(&neon);
    }
#endif
    test_quant_roundtrip();
    printf("%d of %d kernel levels skipped (not on this machine)\n", skipped, n_levels);
    nvlm_pool_free(p1);
    nvlm_pool_free(p3);
    return check_done("test_kernels");
}
