/* The matrix-vector (generation, 1-3 tokens) kernels of gemv_avx2.c and gemv_avx512.c (the
 * bits of AVX2, checked) against their scalar
 * references, on the shapes they special-case: row counts that are not multiples of the row
 * group (4), K = 32, 96, 896, 4864 (and K % 16 != 0 for the plain formats), 1-3 tokens, block
 * formats beyond the on-stack activation buffer. Also: identical results for 1 and 3 threads,
 * the default activation type per format (Q4: int8),
 * a token's result independent of how many tokens share the call, and the int8-activation
 * option against nvlm_vec_dot_q on the same quantized activations; packed rows (NVLM_WL_P8) against
 * row-major, and refused where a level cannot read them. */
#include "check.h"
#include "kernels/cpu.h"
#include "kernels/dispatch.h"
#include "kernels/ops.h"
#include "kernels/qblock.h"
#include "kernels/simd.h"
#include "kernels/simd512.h"
#include "kernels/gemv_vnni.h"
#include "kernels/wpack.h"
#include <math.h>

static uint64_t rng = 0x2545f4914f6cdd1dull;
static float frand(void) { /* uniform [-1, 1) */
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((rng >> 40) * (1.0 / (1 << 23)) - 1.0);
}

static const nvlm_dtype dts[] = {NVLM_DT_F32, NVLM_DT_F16, NVLM_DT_BF16, NVLM_DT_Q8_0, NVLM_DT_Q4, NVLM_DT_Q4_0};

/* A [rows, cols] matrix of format dt from random weights (row-wise scale varies too). */
static void *make_weights(nvlm_dtype dt, int rows, int cols) {
    size_t rb = nvlm_row_bytes(dt, cols);
    uint8_t *out = malloc(rb * (size_t)rows + 1); /* + 1: an odd address for the next test's use */
    float *row = malloc(sizeof(float) * (size_t)cols);
    for (int r = 0; r < rows; r++) {
        float s = 0.05f + 0.5f * (float)(r % 7);
        for (int c = 0; c < cols; c++) row[c] = frand() * s + (c % 32 == 5 ? 0.3f * s : 0.0f);
        nvlm_row_from_f32(out + (size_t)r * rb, row, dt, cols);
    }
    free(row);
    return out;
}

/* Activations with a spread of magnitudes, a zero block and a block with one outlier. */
static float *make_x(int T, int K) {
    float *x = malloc(sizeof(float) * (size_t)T * K);
    for (int i = 0; i < T * K; i++) x[i] = frand() * (1.0f + 3.0f * (float)((i / 32) % 3));
    if (K >= 64)
        for (int t = 0; t < T; t++) {
            memset(x + (size_t)t * K + 32, 0, sizeof(float) * 32);
            x[(size_t)t * K + 7] = 50.0f;
        }
    return x;
}

/* Largest |y - ref| / (tol * sum |x w| + 1e-6) over all outputs (1 means at the bound). */
static double worst_error(const float *y, const float *ref, const float *x, const nvlm_wmat *w, int T, double tol) {
    const int N = w->rows, K = w->cols;
    float *wrow = malloc(sizeof(float) * (size_t)K);
    double worst = 0;
    for (int o = 0; o < N; o++) {
        nvlm_row_to_f32(wrow, (const uint8_t *)w->data + (size_t)o * nvlm_row_bytes(w->dtype, K), w->dtype, K);
        for (int t = 0; t < T; t++) {
            double mag = 0;
            for (int k = 0; k < K; k++) mag += fabs((double)x[(size_t)t * K + k] * wrow[k]);
            double e = fabs((double)y[(size_t)t * N + o] - ref[(size_t)t * N + o]) / (tol * mag + 1e-6);
            if (!(e <= worst)) worst = e;
        }
    }
    free(wrow);
    return worst;
}

/* Float activations: against nvlm_matmul_scalar within 1e-6 of sum |x w| (summation order
 * only); 1 and 3 threads identical; token t of a T-token call identical to a 1-token call. */
static void test_float_path(nvlm_pool *p1, nvlm_pool *p3, int level) {
    static const int Ns[] = {1, 3, 6, 13, 130};
    static const int Ks[] = {32, 37, 96, 100, 896, 4864};
    for (size_t d = 0; d < sizeof dts / sizeof dts[0]; d++)
        for (size_t a = 0; a < sizeof Ns / sizeof Ns[0]; a++)
            for (size_t b = 0; b < sizeof Ks / sizeof Ks[0]; b++) {
                nvlm_dtype dt = dts[d];
                int N = Ns[a], K = Ks[b];
                if (nvlm_dtype_is_block(dt) && K % NVLM_QK) continue;
                if (K == 4864 && N > 13) continue; /* keeps the test short */
                void *wd = make_weights(dt, N, K);
                nvlm_wmat w = {.dtype = dt, .rows = N, .cols = K, .data = wd};
                float *x = make_x(3, K), *bias = malloc(sizeof(float) * N);
                for (int o = 0; o < N; o++) bias[o] = frand();
                float *ref = malloc(sizeof(float) * 3 * N), *y1 = malloc(sizeof(float) * 3 * N);
                float *y3 = malloc(sizeof(float) * 3 * N), *yt = malloc(sizeof(float) * N);
                for (int T = 1; T <= 3; T++) {
                    const float *bs = T == 2 ? NULL : bias;
                    nvlm_matmul_scalar(p1, ref, x, T, &w, bs, NULL);
                    nvlm_matmul(p1, y1, x, T, &w, bs, NULL);
                    nvlm_matmul(p3, y3, x, T, &w, bs, NULL);
                    double e = worst_error(y1, ref, x, &w, T, 1e-6);
                    CHECK(e <= 1, "%s N=%d K=%d T=%d: error %.3g x the bound", nvlm_dtype_name(dt), N, K, T, e);
                    CHECK(!memcmp(y1, y3, sizeof(float) * T * N), "%s N=%d K=%d T=%d: 1 and 3 threads differ",
                          nvlm_dtype_name(dt), N, K, T);
                    int same = 1;
                    for (int t = 0; t < T; t++) {
                        nvlm_matmul(p1, yt, x + (size_t)t * K, 1, &w, bs, NULL);
                        same &= !memcmp(yt, y1 + (size_t)t * N, sizeof(float) * N);
                    }
#ifdef NVLM_HAVE_AVX512_KERNELS
                    if (!strncmp(nvlm_kernel_for(nvlm_matmul_op(dt, T), level)->name, "gemv_avx512", 11)) {
                        float *y2 = malloc(sizeof(float) * 3 * N);
                        nvlm_pool_set_level(p3, NVLM_CPU_AVX2);
                        nvlm_matmul(p3, y2, x, T, &w, bs, NULL);
                        nvlm_pool_set_level(p3, level);
                        CHECK(!memcmp(y1, y2, sizeof(float) * T * N), "%s %s N=%d K=%d T=%d: not the bits of avx2",
                              nvlm_cpu_level_name(level), nvlm_dtype_name(dt), N, K, T);
                        free(y2);
                    }
#endif
                    if (level == NVLM_CPU_NEON) continue; /* a property of the scalar and AVX2 code */
                    CHECK(same, "%s N=%d K=%d T=%d: a token's result depends on the tokens beside it",
                          nvlm_dtype_name(dt), N, K, T);
                }
                free(wd), free(x), free(bias), free(ref), free(y1), free(y3), free(yt);
            }
}

/* Int8 activations (NVLM_QACT=int8): against nvlm_vec_dot_q on the activations quantized by
 * nvlm_quantize_row_q8a (the same integers; only the float scaling and summation order differ). */
static void test_int8_path(nvlm_pool *p1, nvlm_pool *p3) {
    static const int Ns[] = {1, 5, 67};
    static const int Ks[] = {32, 96, 896, 4864, 16416};
    nvlm_pool_set_int8_act(p1, 1), nvlm_pool_set_int8_act(p3, 1);
    for (size_t d = 3; d < sizeof dts / sizeof dts[0]; d++)
        for (size_t a = 0; a < sizeof Ns / sizeof Ns[0]; a++)
            for (size_t b = 0; b < sizeof Ks / sizeof Ks[0]; b++) {
                nvlm_dtype dt = dts[d];
                int N = Ns[a], K = Ks[b];
                if (K > 896 && N > 5) continue;
                void *wd = make_weights(dt, N, K);
                nvlm_wmat w = {.dtype = dt, .rows = N, .cols = K, .data = wd};
                float *x = make_x(3, K), *y1 = malloc(sizeof(float) * 3 * N), *y3 = malloc(sizeof(float) * 3 * N);
                nvlm_block_q8a *xq = malloc(sizeof(nvlm_block_q8a) * (K / NVLM_QK));
                size_t rb = nvlm_row_bytes(dt, K);
                for (int T = 1; T <= 3; T++) {
                    nvlm_matmul(p1, y1, x, T, &w, NULL, NULL);
                    nvlm_matmul(p3, y3, x, T, &w, NULL, NULL);
                    double worst = 0;
                    for (int t = 0; t < T; t++) {
                        nvlm_quantize_row_q8a(x + (size_t)t * K, xq, K);
                        for (int o = 0; o < N; o++) {
                            const uint8_t *row = (const uint8_t *)wd + (size_t)o * rb;
                            double ref = nvlm_vec_dot_q(dt, row, xq, K), mag = 0;
                            /* magnitude: sum |w| |x_q| with the dequantized weights */
                            float wr[32];
                            for (int i = 0; i < K / NVLM_QK; i++) {
                                nvlm_row_to_f32(wr, row + i * (rb / (K / NVLM_QK)), dt, NVLM_QK);
                                for (int j = 0; j < NVLM_QK; j++) mag += fabs((double)wr[j] * xq[i].q[j] * xq[i].d);
                            }
                            double e = fabs(y1[(size_t)t * N + o] - ref) / (1e-5 * mag + 1e-6);
                            if (!(e <= worst)) worst = e;
                        }
                    }
                    CHECK(worst <= 1, "int8 x %s N=%d K=%d T=%d: error %.3g x the bound", nvlm_dtype_name(dt), N, K, T, worst);
                    CHECK(!memcmp(y1, y3, sizeof(float) * T * N), "int8 x %s N=%d K=%d T=%d: 1 and 3 threads differ",
                          nvlm_dtype_name(dt), N, K, T);
                }
                free(wd), free(x), free(y1), free(y3), free(xq);
            }
    nvlm_pool_set_int8_act(p1, 0), nvlm_pool_set_int8_act(p3, 0);
}

/* The VNNI generation kernel (kernels/gemv_vnni.c, called directly: not dispatched yet) and the
 * VNNI matrix product on 1-3 tokens: bit for bit
 * nvlm_vec_dot_q on the activations quantized by nvlm_quantize_row_q8a (+ bias), 1 and 3
 * threads, row counts around the group of 16, K from one block to beyond 16 KiB. */
#ifdef NVLM_HAVE_VNNI_KERNELS
static void test_int8_exact(nvlm_pool *p1, nvlm_pool *p3, int level) {
    static const int Ns[] = {1, 5, 16, 17, 67, 300};
    static const int Ks[] = {32, 96, 896, 4864, 16416};
    nvlm_pool_set_int8_act(p1, 1), nvlm_pool_set_int8_act(p3, 1);
    int fails = 0, runs = 0;
    for (size_t d = 3; d < sizeof dts / sizeof dts[0]; d++)
        for (size_t a = 0; a < sizeof Ns / sizeof Ns[0]; a++)
            for (size_t b = 0; b < sizeof Ks / sizeof Ks[0]; b++) {
                nvlm_dtype dt = dts[d];
                int N = Ns[a], K = Ks[b];
                if (K > 896 && N > 17) continue;
                void *wd = make_weights(dt, N, K);
                nvlm_wmat w = {.dtype = dt, .rows = N, .cols = K, .data = wd};
                float *x = make_x(3, K), *y1 = malloc(sizeof(float) * 3 * N), *y3 = malloc(sizeof(float) * 3 * N);
                float *ref = malloc(sizeof(float) * 3 * N), *bias = malloc(sizeof(float) * N);
                for (int o = 0; o < N; o++) bias[o] = frand();
                nvlm_block_q8a *xq = malloc(sizeof(nvlm_block_q8a) * (K / NVLM_QK));
                size_t rb = nvlm_row_bytes(dt, K);
                for (int T = 1; T <= 3; T++) {
                    const float *bs = T == 2 ? NULL : bias;
                    for (int t = 0; t < T; t++) {
                        nvlm_quantize_row_q8a(x + (size_t)t * K, xq, K);
                        for (int o = 0; o < N; o++) {
                            float v = nvlm_vec_dot_q(dt, (const uint8_t *)wd + (size_t)o * rb, xq, K);
                            ref[(size_t)t * N + o] = bs ? v + bs[o] : v;
                        }
                    }
                    int ok = nvlm_gemv_vnni(p1, y1, x, T, &w, bs) == 0 && nvlm_gemv_vnni(p3, y3, x, T, &w, bs) == 0;
                    ok = ok && !memcmp(y1, ref, sizeof(float) * T * N) && !memcmp(y3, ref, sizeof(float) * T * N);
                    ok = ok && nvlm_gemm_vnni(p1, y1, x, T, &w, bs) == 0 && nvlm_gemm_vnni(p3, y3, x, T, &w, bs) == 0;
                    ok = ok && !memcmp(y1, ref, sizeof(float) * T * N) && !memcmp(y3, ref, sizeof(float) * T * N);
                    if (!ok && fails++ < 5) printf("  int8 x %s N=%d K=%d T=%d: not nvlm_vec_dot_q's bits\n", nvlm_dtype_name(dt), N, K, T);
                    runs++;
                }
                free(wd), free(x), free(y1), free(y3), free(ref), free(bias), free(xq);
            }
    printf("test_gemv: %s int8 products against nvlm_vec_dot_q: %d of %d bit-identical\n", nvlm_cpu_level_name(level),
           runs - fails, runs);
    CHECK(fails == 0, "%s: %d of %d int8 products differ from nvlm_vec_dot_q", nvlm_cpu_level_name(level), fails, runs);
    nvlm_pool_set_int8_act(p1, 0), nvlm_pool_set_int8_act(p3, 0);
}
#endif

#ifdef NVLM_HAVE_VNNI_KERNELS
/* The VNNI matrix product (kernels/gemm_vnni.c, prefill with int8 activations) on 4+ tokens:
 * every output nvlm_vec_dot_q's bits (+ bias), 1 and 3 threads; token tiles of 8 with tails. */
static void test_int8_gemm(nvlm_pool *p1, nvlm_pool *p3, int level) {
    static const int Ns[] = {5, 16, 40};
    static const int Ks[] = {32, 96, 896};
    static const int Ts[] = {4, 9, 17};
    int fails = 0, runs = 0;
    for (size_t d = 3; d < sizeof dts / sizeof dts[0]; d++)
        for (size_t a = 0; a < 3; a++)
            for (size_t b = 0; b < 3; b++) {
                nvlm_dtype dt = dts[d];
                int N = Ns[a], K = Ks[b], T = Ts[(a + b) % 3];
                void *wd = make_weights(dt, N, K);
                nvlm_wmat w = {.dtype = dt, .rows = N, .cols = K, .data = wd};
                float *x = make_x(T, K), *y1 = malloc(sizeof(float) * T * N), *y3 = malloc(sizeof(float) * T * N);
                float *ref = malloc(sizeof(float) * T * N), *bias = malloc(sizeof(float) * N);
                for (int o = 0; o < N; o++) bias[o] = frand();
                const float *bs = b == 1 ? NULL : bias;
                nvlm_block_q8a *xq = malloc(sizeof(nvlm_block_q8a) * (K / NVLM_QK));
                size_t rb = nvlm_row_bytes(dt, K);
                for (int t = 0; t < T; t++) {
                    nvlm_quantize_row_q8a(x + (size_t)t * K, xq, K);
                    for (int o = 0; o < N; o++) {
                        float v = nvlm_vec_dot_q(dt, (const uint8_t *)wd + (size_t)o * rb, xq, K);
                        ref[(size_t)t * N + o] = bs ? v + bs[o] : v;
                    }
                }
                int ok = nvlm_gemm_vnni(p1, y1, x, T, &w, bs) == 0 && nvlm_gemm_vnni(p3, y3, x, T, &w, bs) == 0;
                ok = ok && !memcmp(y1, ref, sizeof(float) * T * N) && !memcmp(y3, ref, sizeof(float) * T * N);
                /* the dispatch: nvlm_matmul takes it with int8 activations forced, not by default */
                nvlm_pool_set_int8_act(p3, 1);
                nvlm_matmul(p3, y3, x, T, &w, bs, NULL);
                ok = ok && !memcmp(y3, ref, sizeof(float) * T * N);
                nvlm_pool_set_int8_act(p3, 0);
                nvlm_matmul(p3, y3, x, T, &w, bs, NULL);
                ok = ok && memcmp(y3, ref, sizeof(float) * T * N);
                if (!ok && fails++ < 5) printf("  int8 GEMM %s N=%d K=%d T=%d: not nvlm_vec_dot_q's bits\n", nvlm_dtype_name(dt), N, K, T);
                runs++;
                free(wd), free(x), free(y1), free(y3), free(ref), free(bias), free(xq);
            }
    CHECK(fails == 0, "%s: %d of %d int8 matrix products differ from nvlm_vec_dot_q", nvlm_cpu_level_name(level), fails, runs);
}
#endif

/* Enough rows that 3 threads take several chunks each, at the model's shapes. */
static void test_threads_large(nvlm_pool *p1, nvlm_pool *p3) {
    for (size_t d = 0; d < sizeof dts / sizeof dts[0]; d++) {
        int N = 4099, K = 896;
        void *wd = make_weights(dts[d], N, K);
        nvlm_wmat w = {.dtype = dts[d], .rows = N, .cols = K, .data = wd};
        float *x = make_x(1, K), *y1 = malloc(sizeof(float) * N), *y3 = malloc(sizeof(float) * N);
        nvlm_matmul(p1, y1, x, 1, &w, NULL, NULL);
        nvlm_matmul(p3, y3, x, 1, &w, NULL, NULL);
        CHECK(!memcmp(y1, y3, sizeof(float) * N), "%s N=%d K=%d: 1 and 3 threads differ", nvlm_dtype_name(dts[d]), N, K);
        free(wd), free(x), free(y1), free(y3);
    }
}

#ifdef NVLM_HAVE_AVX512_KERNELS
/* More tokens than NVLM_GEMV_MAX in one call (decode batches): each token's values are those of
 * a call of its own and (plain formats) of AVX2's kernel, every format, 1 and 3 threads. K: 3
 * tokens' BF16 activations copy past the on-stack buffer. */
static void test_many_tokens(nvlm_pool *p1, nvlm_pool *p3) {
    const int N = 70, K = 5504, T = 16;
    for (size_t d = 0; d < sizeof dts / sizeof dts[0]; d++) {
        void *wd = make_weights(dts[d], N, K);
        nvlm_wmat w = {.dtype = dts[d], .rows = N, .cols = K, .data = wd};
        float *x = make_x(T, K), *y1 = malloc(sizeof(float) * T * N), *y3 = malloc(sizeof(float) * T * N);
        float *yt = malloc(sizeof(float) * N), *bias = malloc(sizeof(float) * N);
        for (int o = 0; o < N; o++) bias[o] = frand();
        nvlm_gemv_avx512(p1, y1, x, T, &w, bias);
        nvlm_gemv_avx512(p3, y3, x, T, &w, bias);
        int same = 1, as_avx2 = 1;
        for (int t = 0; t < T; t++) {
            nvlm_gemv_avx512(p1, yt, x + (size_t)t * K, 1, &w, bias);
            same &= !memcmp(yt, y1 + (size_t)t * N, sizeof(float) * N);
            nvlm_gemv_avx2(p1, yt, x + (size_t)t * K, 1, &w, bias, NULL);
            as_avx2 &= !memcmp(yt, y1 + (size_t)t * N, sizeof(float) * N);
        }
        if (!nvlm_dtype_is_block(dts[d]))
            CHECK(as_avx2, "gemv_avx512 %s T=%d K=%d: not the bits of avx2", nvlm_dtype_name(dts[d]), T, K);
        CHECK(same, "gemv_avx512 %s T=%d: a token's result depends on the tokens beside it", nvlm_dtype_name(dts[d]), T);
        CHECK(!memcmp(y1, y3, sizeof(float) * T * N), "gemv_avx512 %s T=%d: 1 and 3 threads differ", nvlm_dtype_name(dts[d]), T);
        free(wd), free(x), free(y1), free(y3), free(yt), free(bias);
    }
}
#endif

/* Packed layouts (kernels/ops.h, wpack.h): at a level that reads them, a packed matrix gives the
 * row-major matrix's bits as prompt rows (the packed product; float32 and bf16 compute; Q8_0/Q4
 * with int8 activations forced too) and as generated rows (F32/F16/BF16, NVLM_WL_P8: the
 * row-major bits; Q8_0/Q4, NVLM_WL_Q16: nvlm_vec_dot_q's bits, where the row-major AVX2 kernel
 * differs in the last bits), for 1-19 tokens at 1 and 3 threads, multi-matrix calls included;
 * at a level that does not read them, every product is refused with an error, never misread.
 * Fresh pools: the default activation mode (int8 for generated Q8_0/Q4 rows only). */
static float *int8_reference(const nvlm_wmat *w, const float *x, int T, const float *bias) {
    const int N = w->rows, K = w->cols;
    float *ref = malloc(sizeof(float) * (size_t)T * N);
    nvlm_block_q8a *xq = malloc(sizeof(nvlm_block_q8a) * (K / NVLM_QK));
    for (int t = 0; t < T; t++) {
        nvlm_quantize_row_q8a(x + (size_t)t * K, xq, K);
        for (int o = 0; o < N; o++) {
            float v = nvlm_vec_dot_q(w->dtype, (const uint8_t *)w->data + (size_t)o * nvlm_row_bytes(w->dtype, K), xq, K);
            ref[(size_t)t * N + o] = bias ? v + bias[o] : v;
        }
    }
    free(xq);
    return ref;
}

static void test_packed(int level) {
    static const int shapes[][2] = {{16, 32}, {48, 896}, {32, 1056}, {16, 4864}};
    int runs = 0, bad = 0, refused = 0;
    nvlm_pool *p1 = NULL, *p3 = NULL;
    nvlm_err err = {0};
    CHECK(nvlm_pool_new(1, &p1, &err) == 0 && nvlm_pool_new(3, &p3, &err) == 0, "pool: %s", err.msg);
    if (!p1 || !p3) return;
    nvlm_pool_set_level(p1, level), nvlm_pool_set_level(p3, level);
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (size_t d = 0; d < sizeof dts / sizeof dts[0]; d++)
            for (int int8 = 0; int8 <= nvlm_dtype_is_block(dts[d]); int8++) { /* block formats: int8 prefill forced too */
                const int N = shapes[si][0], K = shapes[si][1], TM = 19;
                const size_t bytes = nvlm_row_bytes(dts[d], K) * (size_t)N;
                void *wr = make_weights(dts[d], N, K), *wp = malloc(bytes);
                float *x = make_x(TM, K), *bias = malloc(sizeof(float) * N);
                float *ya = malloc(sizeof(float) * TM * N), *yb = malloc(sizeof(float) * TM * N), *yc = malloc(sizeof(float) * TM * N);
                for (int i = 0; i < N; i++) bias[i] = 0.01f * (float)i;
                nvlm_wmat rows = {.dtype = dts[d], .rows = N, .cols = K, .data = wr}, packed = rows;
                const int reads = nvlm_wpack_reads(level, dts[d]);
                CHECK(nvlm_wpack_can(&rows, level) == reads, "wpack_can %s %dx%d", nvlm_dtype_name(dts[d]), N, K);
                packed.layout = nvlm_wpack(p3, wp, &rows);
                packed.data = wp;
                if (si == 0) { /* in place too: the same bytes */
                    void *ip = malloc(bytes);
                    memcpy(ip, wr, bytes);
                    nvlm_wmat tmp = rows;
                    tmp.data = ip;
                    CHECK(nvlm_wpack(p1, ip, &tmp) == packed.layout && !memcmp(ip, wp, bytes), "%s packed in place",
                          nvlm_dtype_name(dts[d]));
                    free(ip);
                }
                if (packed.layout == NVLM_WL_Q16 && !int8) { /* every row back in its stored bytes */
                    const size_t rb = nvlm_row_bytes(dts[d], K);
                    uint8_t *back = malloc(rb);
                    int same = back != NULL;
                    for (int r = 0; same && r < N; r++) {
                        nvlm_q16_row_blocks(&packed, r, 0, K / NVLM_QK, back);
                        same = !memcmp(back, (const uint8_t *)wr + (size_t)r * rb, rb);
                    }
                    CHECK(same, "%s %dx%d: nvlm_q16_row_blocks does not give the stored rows back", nvlm_dtype_name(dts[d]), N, K);
                    free(back);
                }
                if (int8) nvlm_pool_set_int8_act(p1, 1), nvlm_pool_set_int8_act(p3, 1);
                const nvlm_wmat *pr[2] = {&rows, &rows}, *pp[2] = {&packed, &packed};
                const float *bs[2] = {bias, NULL};
                for (int bf = 0; bf <= 1; bf++) {
                    nvlm_pool_set_compute(p1, bf ? NVLM_COMPUTE_BF16 : NVLM_COMPUTE_F32);
                    nvlm_pool_set_compute(p3, bf ? NVLM_COMPUTE_BF16 : NVLM_COMPUTE_F32);
                    for (int T = 1; T <= TM; T += T < 4 ? 1 : 5)
                        for (int gen = 0; gen <= T; gen += T) { /* all rows generated, or all prompt rows */
                            float *ya2[2] = {ya, yc}, *yb2[2] = {yb, yc};
                            nvlm_err e = {0};
                            int ra = nvlm_matmul_roles(p1, 2, ya2, x, gen, T, pr, bs, &e);
                            int rb = nvlm_matmul_roles(T % 2 ? p3 : p1, 2, yb2, x, gen, T, pp, bs, &e);
                            runs++;
                            if (!reads) { /* refused, with an error that says why */
                                int ok = ra == 0 && rb != 0 && strstr(e.msg, "packed");
                                refused += ok, bad += !ok;
                                continue;
                            }
                            float *ref = gen && packed.layout == NVLM_WL_Q16 ? int8_reference(&rows, x, T, bias) : NULL;
                            int differ = ra || rb || memcmp(ref ? ref : ya, yb, sizeof(float) * (size_t)T * N);
                            if (differ && bad < 5)
                                printf("  packed %s %dx%d T=%d gen=%d bf16=%d int8=%d: rc %d/%d (%s), values differ\n",
                                       nvlm_dtype_name(dts[d]), N, K, T, gen, bf, int8, ra, rb, e.msg);
                            bad += differ;
                            free(ref);
                        }
                }
                nvlm_pool_set_compute(p1, NVLM_COMPUTE_F32), nvlm_pool_set_compute(p3, NVLM_COMPUTE_F32);
                free(wr), free(wp), free(x), free(bias), free(ya), free(yb), free(yc);
                if (int8) { /* back to the default mode: fresh pools */
                    nvlm_pool_free(p1), nvlm_pool_free(p3);
                    p1 = p3 = NULL;
                    if (nvlm_pool_new(1, &p1, &err) || nvlm_pool_new(3, &p3, &err)) {
                        CHECK(0, "pool: %s", err.msg);
                        nvlm_pool_free(p1), nvlm_pool_free(p3);
                        return;
                    }
                    nvlm_pool_set_level(p1, level), nvlm_pool_set_level(p3, level);
                }
            }
    printf("test_gemv: %s packed products: %d of %d as row-major (or the int8 reference), %d refused (layout not read here)\n",
           nvlm_cpu_level_name(level), runs - refused - bad, runs - refused, refused);
    CHECK(bad == 0, "%s: %d of %d packed products differ or were not refused", nvlm_cpu_level_name(level), bad, runs);
    nvlm_pool_free(p1), nvlm_pool_free(p3);
}

int main(void) {
    nvlm_pool *p1 = NULL, *p3 = NULL;
    nvlm_err err = {0};
    CHECK(nvlm_pool_new(1, &p1, &err) == 0 && nvlm_pool_new(3, &p3, &err) == 0, "pool: %s", err.msg);
    if (!p1 || !p3) return check_done("test_gemv");
    /* the default (NVLM_QACT unset): int8 activations for the block formats */
    if (!getenv("NVLM_QACT"))
        CHECK(nvlm_pool_int8_act_for(p1, NVLM_DT_Q4) == 1 && nvlm_pool_int8_act_for(p1, NVLM_DT_Q8_0) == 1 &&
                  nvlm_pool_int8_act_for(p1, NVLM_DT_F16) == 0 && nvlm_pool_int8_act(p1) == 0,
              "default activation types");
    nvlm_pool_set_int8_act(p1, 0), nvlm_pool_set_int8_act(p3, 0); /* float32 x for every format */
    /* at every level this machine has: the scalar level checks the reference against itself
     * (threads, token independence); the SIMD level checks the kernels */
    int n_levels;
    const int *levels = nvlm_cpu_levels(&n_levels);
    for (int li = 0; li < n_levels; li++) {
        int level = levels[li];
        if (!nvlm_cpu_level_usable(level)) continue; /* test_kernels prints the skipped count */
        nvlm_pool_set_level(p1, level), nvlm_pool_set_level(p3, level);
        test_float_path(p1, p3, level);
        test_threads_large(p1, p3);
        test_packed(level);
#ifdef NVLM_HAVE_AVX2_KERNELS
        if (level == NVLM_CPU_AVX2) test_int8_path(p1, p3);
#endif
#ifdef NVLM_HAVE_AVX512_KERNELS
        if (level == NVLM_CPU_AVX512) test_many_tokens(p1, p3);
#endif
#ifdef NVLM_HAVE_VNNI_KERNELS
        if (nvlm_cpu_at_least(level, NVLM_CPU_AVX512_VNNI)) test_int8_exact(p1, p3, level), test_int8_gemm(p1, p3, level);
#endif
    }
    nvlm_pool_free(p1);
    nvlm_pool_free(p3);
    return check_done("test_gemv");
}
