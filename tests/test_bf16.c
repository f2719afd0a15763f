/* The bf16 compute mode's kernels (kernels/gemm_bf16.h): the scalar model of one vdpbf16ps lane
 * against the instruction itself (where the CPU has AVX512-BF16) and against the AVX2 emulation,
 * on random inputs with denormals, tiny, huge and signed-zero values; the BF16 rounding of rows
 * (F32 with ties, NaN, infinities, denormals; F16; BF16) at every level; the blocked product at
 * every level (F32, F16, BF16, Q8_0 and Q4 weights) bit for bit against the scalar reference on odd shapes (tails of M, N, K that are
 * not multiples of 12, 32 and 512; odd K), 1 and 3 threads, several matrices at once; the
 * dispatch of nvlm_matmul by the pool's compute mode; and the distance to float32. The ViT's
 * bf16 attention: the softmax at every level against its scalar form, and the blocked kernel
 * against the scalar reference, bit for bit, on odd shapes and strides. */
#include "check.h"
#include "kernels/cpu.h"
#include "kernels/gemm_bf16.h"
#include "kernels/attention.h"
#include "kernels/qblock.h"
#include "model/mkmodel.h"
#include "model/model.h"
#include <math.h>

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd32(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}
static float frand(void) { return (float)(rnd32() % 2000001) / 1000000.0f - 1.0f; }

static uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static float of_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* A BF16 with an exponent drawn from a mode: 0 small (denormals and the smallest normals),
 * 1 around 1, 2 anywhere finite. */
static uint16_t rand_bf16(int mode) {
    uint16_t h = (uint16_t)rnd32();
    uint32_t e = mode == 0 ? rnd32() % 4 : mode == 1 ? 120 + rnd32() % 16 : 1 + rnd32() % 250;
    return (uint16_t)((h & 0x807f) | (e << 7));
}

static float rand_acc(int mode) {
    uint32_t u = rnd32(), e = mode == 0 ? rnd32() % 3 : mode == 1 ? 110 + rnd32() % 30 : rnd32() % 255;
    if (rnd32() % 16 == 0) return rnd32() & 1 ? -0.0f : 0.0f;
    return of_bits((u & 0x807fffffu) | (e << 23));
}

/* One vdpbf16ps lane: the scalar model against the instruction and the AVX2 emulation. */
static void test_lane(void) {
    enum { N = 4096, ROUNDS = 48 };
    static uint32_t a[N], b[N];
    static float acc[N], hw[N], emu[N];
    long bad_hw = 0, bad_emu = 0, n = 0;
    int have_hw = nvlm_cpu_level_usable(NVLM_CPU_AVX512_BF16), have_avx2 = nvlm_cpu_level_usable(NVLM_CPU_AVX2);
    for (int r = 0; r < ROUNDS; r++) {
        int mode = r % 3;
        for (int i = 0; i < N; i++) {
            a[i] = rand_bf16(mode) | (uint32_t)rand_bf16(mode) << 16;
            b[i] = rand_bf16(mode) | (uint32_t)rand_bf16(mode) << 16;
            acc[i] = rand_acc(mode);
        }
#ifdef NVLM_HAVE_BF16_X86
        memcpy(hw, acc, sizeof acc), memcpy(emu, acc, sizeof acc);
        if (have_hw) nvlm_dpbf16_avx512(hw, a, b, N);
        if (have_avx2) nvlm_dpbf16_avx2(emu, a, b, N);
        for (int i = 0; i < N; i++) {
            uint32_t ref = bits(nvlm_dpbf16(acc[i], a[i], b[i]));
            if (have_hw && bits(hw[i]) != ref && bad_hw++ < 3)
                printf("  vdpbf16ps %08x . %08x + %08x = %08x, scalar model %08x\n", a[i], b[i], bits(acc[i]), bits(hw[i]), ref);
            if (have_avx2 && bits(emu[i]) != ref && bad_emu++ < 3)
                printf("  AVX2 emulation %08x . %08x + %08x = %08x, scalar model %08x\n", a[i], b[i], bits(acc[i]), bits(emu[i]), ref);
            n++;
        }
#endif
    }
    if (have_hw) CHECK(bad_hw == 0, "vdpbf16ps differs from the scalar model in %ld of %ld lanes", bad_hw, n);
    else printf("test_bf16: vdpbf16ps lane check skipped (no AVX512-BF16 here)\n");
    if (have_avx2) CHECK(bad_emu == 0, "the AVX2 emulation differs from the scalar model in %ld of %ld lanes", bad_emu, n);
    /* the documented cases, spelled out: high pair first, FTZ, DAZ */
    CHECK(bits(nvlm_dpbf16(0.0f, 0x00013f80u, 0x00803f80u)) == bits(1.0f), "a denormal BF16 input counts as zero");
    CHECK(nvlm_dpbf16(0x1p-127f, 0, 0) == 0.0f && signbit(nvlm_dpbf16(-0x1p-127f, 0x80008000u, 0)), "a denormal acc is flushed, sign kept");
    /* 2^-64 * 2^-64 = 2^-128 is tiny: flushed to zero */
    CHECK(nvlm_dpbf16(0.0f, 0x1f800000u, 0x1f800000u) == 0.0f, "a denormal result is flushed");
    /* 1 + 2^-24 (lost), then - 1: the high pair goes first */
    CHECK(nvlm_dpbf16(1.0f, 0x33803f80u, 0x3f80bf80u) == 0.0f && nvlm_dpbf16(1.0f, 0x3f803380u, 0xbf803f80u) == 0x1p-24f,
          "the high pair is added first");
}

/* Rows to BF16: every level against the scalar rounding, odd lengths and odd addresses. */
static void test_rows(void) {
    enum { N = 203 };
    uint8_t src[4 * N + 4];
    float f[N];
    for (int i = 0; i < N; i++) {
        uint32_t u = rnd32();
        switch (i % 9) {
        case 0: u = (u & 0xffff0000u) | 0x8000u; break;           /* a tie */
        case 1: u = 0x7f800000u | (u & 0x80000000u) | (u & 0x7fffff); break; /* NaN or infinity */
        case 2: u &= 0x80ffffffu; break;                          /* denormals and tiny */
        case 3: u = 0x7f7fffffu | (u & 0x80000000u); break;       /* rounds up to infinity */
        default: u = bits(frand() * 100.0f);
        }
        f[i] = of_bits(u);
    }
    for (int t = 0; t < 3; t++) {
        nvlm_dtype dt = t == 0 ? NVLM_DT_F32 : t == 1 ? NVLM_DT_F16 : NVLM_DT_BF16;
        for (int i = 0; i < N; i++) {
            if (dt == NVLM_DT_F32) memcpy(src + 1 + 4 * i, &f[i], 4);
            uint16_t h = dt == NVLM_DT_F16 ? nvlm_f32_to_f16(f[i]) : (uint16_t)(bits(f[i]) >> 16);
            if (dt != NVLM_DT_F32) memcpy(src + 1 + 2 * i, &h, 2);
        }
        uint16_t ref[N], got[N];
        nvlm_bf16_row_scalar(ref, src + 1, dt, N);
        int ok = 1;
        for (int i = 0; i < N && dt == NVLM_DT_F32; i++) ok &= ref[i] == nvlm_bf16_round(f[i]);
        CHECK(ok, "scalar rows: F32 is nvlm_bf16_round");
#ifdef NVLM_HAVE_BF16_X86
        if (nvlm_cpu_level_usable(NVLM_CPU_AVX2))
            for (int n = N - 8; n <= N; n++) {
                memset(got, 0xAB, sizeof got);
                nvlm_bf16_row_avx2(got, src + 1, dt, n);
                CHECK(!memcmp(got, ref, 2 * (size_t)n), "AVX2 rows of %s, n=%d, differ from the scalar ones", nvlm_dtype_name(dt), n);
            }
        if (nvlm_cpu_level_usable(NVLM_CPU_AVX512))
            for (int n = N - 17; n <= N; n++) {
                memset(got, 0xAB, sizeof got);
                nvlm_bf16_row_avx512(got, src + 1, dt, n);
                CHECK(!memcmp(got, ref, 2 * (size_t)n) && got[n < N ? n : 0] == (n < N ? 0xABAB : ref[0]),
                      "AVX-512 rows of %s, n=%d, differ from the scalar ones (or write past n)", nvlm_dtype_name(dt), n);
            }
#endif
    }
}

/* Weights of a plain format (with a few tiny values and signed zeros). */
static void *make_weights(nvlm_dtype dt, int rows, int cols) {
    size_t rb = nvlm_row_bytes(dt, cols);
    uint8_t *out = malloc(rb * (size_t)rows + 2);
    float *row = malloc(sizeof(float) * (size_t)cols);
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < cols; c++) {
            row[c] = frand() * (0.1f + (float)(r % 5));
            if (rnd32() % 97 == 0) row[c] = 1e-39f * frand();
            if (rnd32() % 89 == 0) row[c] = -0.0f;
        }
        nvlm_row_from_f32(out + 2 + (size_t)r * rb, row, dt, cols); /* + 2: not 4-byte aligned */
    }
    free(row);
    return out;
}

static float *make_x(int M, int K) {
    float *x = malloc(sizeof(float) * (size_t)M * K);
    for (size_t i = 0; i < (size_t)M * K; i++) x[i] = frand() * (1.0f + (float)(i % 7)) + (i % 101 == 0 ? 1e-38f : 0.0f);
    return x;
}

/* The blocked product at the pool's level against the reference, bit for bit, 1 and 3 threads. */
static void test_gemm(nvlm_pool *p1, nvlm_pool *p3, int level) {
    static const int Ms[] = {4, 13, 25};
    static const int Ns[] = {1, 31, 33, 70};
    static const int Ks[] = {1, 3, 64, 37, 513, 1100};
    static const nvlm_dtype dts[] = {NVLM_DT_BF16, NVLM_DT_F32, NVLM_DT_F16, NVLM_DT_Q8_0, NVLM_DT_Q4, NVLM_DT_Q4_0};
    int fails = 0, runs = 0;
    for (size_t d = 0; d < sizeof dts / sizeof dts[0]; d++)
        for (size_t a = 0; a < 3; a++)
            for (size_t b = 0; b < 4; b++)
                for (size_t c = 0; c < 6; c++) {
                    int M = Ms[a], N = Ns[b], K = Ks[c];
                    if (nvlm_dtype_is_block(dts[d])) K = (K + NVLM_QK - 1) / NVLM_QK * NVLM_QK; /* whole blocks */
                    if (K == 1100 && N > 33) continue;
                    uint8_t *wd = make_weights(dts[d], N, K);
                    nvlm_wmat w = {.dtype = dts[d], .rows = N, .cols = K, .data = wd + 2};
                    float *x = make_x(M, K), *bias = malloc(sizeof(float) * N);
                    for (int o = 0; o < N; o++) bias[o] = frand();
                    const float *bs = (b + c) % 2 ? bias : NULL;
                    float *ref = malloc(sizeof(float) * M * N), *y1 = malloc(sizeof(float) * M * N), *y3 = malloc(sizeof(float) * M * N);
                    nvlm_matmul_bf16_ref(ref, x, M, &w, bs, 0, N);
                    const nvlm_wmat *wp = &w;
                    nvlm_matmul_bf16(p1, 1, &y1, x, M, &wp, &bs);
                    nvlm_matmul_bf16(p3, 1, &y3, x, M, &wp, &bs);
                    int ok = !memcmp(y1, ref, sizeof(float) * M * N) && !memcmp(y3, ref, sizeof(float) * M * N);
                    if (!ok && fails++ < 5)
                        printf("  %s %s M=%d N=%d K=%d: differs from the reference\n", nvlm_cpu_level_name(level),
                               nvlm_dtype_name(dts[d]), M, N, K);
                    runs++;
                    free(wd), free(x), free(bias), free(ref), free(y1), free(y3);
                }
    CHECK(fails == 0, "%s: %d of %d bf16 products differ from the reference", nvlm_cpu_level_name(level), fails, runs);
}

/* Several matrices sharing x (q/k/v) and the dispatch of nvlm_matmul / nvlm_matmul_multi by
 * the compute mode: 4+ tokens take the bf16 product, 1-3 tokens do not. */
static void test_dispatch(nvlm_pool *p3) {
    const int K = 96, M = 29, Ns[3] = {64, 32, 45};
    uint8_t *wd[3];
    nvlm_wmat w[3];
    const nvlm_wmat *wp[3];
    float *y[3], *ref[3], *bias[3];
    const float *bs[3];
    float *x = make_x(M, K);
    for (int i = 0; i < 3; i++) {
        wd[i] = make_weights(i == 1 ? NVLM_DT_F32 : NVLM_DT_BF16, Ns[i], K);
        w[i] = (nvlm_wmat){.dtype = i == 1 ? NVLM_DT_F32 : NVLM_DT_BF16, .rows = Ns[i], .cols = K, .data = wd[i] + 2};
        wp[i] = &w[i];
        y[i] = malloc(sizeof(float) * M * Ns[i]), ref[i] = malloc(sizeof(float) * M * Ns[i]);
        bias[i] = malloc(sizeof(float) * Ns[i]);
        for (int o = 0; o < Ns[i]; o++) bias[i][o] = frand();
        bs[i] = i == 2 ? NULL : bias[i];
        nvlm_matmul_bf16_ref(ref[i], x, M, &w[i], bs[i], 0, Ns[i]);
    }
    nvlm_pool_set_compute(p3, NVLM_COMPUTE_BF16);
    nvlm_matmul_multi(p3, 3, y, x, M, wp, bs, NULL);
    int ok = 1;
    for (int i = 0; i < 3; i++) ok &= !memcmp(y[i], ref[i], sizeof(float) * M * Ns[i]);
    CHECK(ok, "nvlm_matmul_multi in bf16 compute differs from the reference");
    nvlm_matmul(p3, y[0], x, M, &w[0], bs[0], NULL);
    CHECK(!memcmp(y[0], ref[0], sizeof(float) * M * Ns[0]), "nvlm_matmul in bf16 compute differs from the reference");
    /* 3 tokens: the float32 matrix-vector kernels */
    float *f32 = malloc(sizeof(float) * 3 * Ns[0]);
    nvlm_matmul(p3, y[0], x, 3, &w[0], bs[0], NULL);
    nvlm_pool_set_compute(p3, NVLM_COMPUTE_F32);
    nvlm_matmul(p3, f32, x, 3, &w[0], bs[0], NULL);
    CHECK(!memcmp(y[0], f32, sizeof(float) * 3 * Ns[0]), "3 tokens in bf16 compute are not the float32 kernels'");
    /* float32 compute is not bf16; and bf16 stays within its rounding of float32 */
    nvlm_matmul(p3, y[0], x, M, &w[0], bs[0], NULL);
    double worst = 0;
    float *wr = malloc(sizeof(float) * K);
    for (int o = 0; o < Ns[0]; o++) {
        nvlm_row_to_f32(wr, (const uint8_t *)w[0].data + (size_t)o * 2 * K, NVLM_DT_BF16, K);
        for (int t = 0; t < M; t++) {
            double mag = 0;
            for (int k = 0; k < K; k++) mag += fabs((double)x[(size_t)t * K + k] * wr[k]);
            double e = fabs((double)y[0][(size_t)t * Ns[0] + o] - ref[0][(size_t)t * Ns[0] + o]) / (mag * 0x1p-8 + 1e-30);
            worst = e > worst ? e : worst;
        }
    }
    CHECK(worst <= 1, "bf16 compute is %.3g x 2^-8 sum|x w| from float32", worst);
    CHECK(memcmp(y[0], ref[0], sizeof(float) * M * Ns[0]), "float32 compute gives the bf16 result");
    for (int i = 0; i < 3; i++) free(wd[i]), free(y[i]), free(ref[i]), free(bias[i]);
    free(x), free(f32), free(wr);
}

/* The A sliver's pairing (12 rows to pair-major) of the level against the scalar one. */
static void test_sliver(int level) {
    const nvlm_bf16_kernels kn = nvlm_bf16_kernels_at(level);
    enum { LEN = 70 };
    uint16_t rows[NVLM_BF16_MR * LEN];
    uint32_t ref[NVLM_BF16_MR * LEN / 2], got[NVLM_BF16_MR * LEN / 2];
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++) rows[i] = (uint16_t)rnd32();
    int ok = 1;
    for (int kp = 0; kp <= LEN / 2; kp++) {
        nvlm_bf16_sliver_scalar(rows, LEN, kp, ref);
        kn.sliver(rows, LEN, kp, got);
        ok &= !memcmp(ref, got, sizeof(uint32_t) * NVLM_BF16_MR * (size_t)kp);
    }
    CHECK(ok, "%s: the sliver pairing differs from the scalar one", nvlm_cpu_level_name(level));
}

/* The softmax of the level against its scalar form, then the blocked attention against the
 * scalar reference (queries not a multiple of 12 or 48, keys not of 32, odd head sizes, rows
 * inside wider qkv rows as in the ViT), and its distance to the float32 attention. */
static void test_attention(int level) {
    const nvlm_bf16_kernels kn = nvlm_bf16_kernels_at(level);
    static const int lens[] = {1, 7, 8, 9, 16, 17, 33, 100, 1025};
    int fails = 0, runs = 0;
    float *a = malloc(sizeof(float) * 1040), *b = malloc(sizeof(float) * 1040);
    for (size_t li = 0; li < sizeof lens / sizeof *lens; li++)
        for (int mag = 0; mag < 3; mag++) {
            for (int i = 0; i < 1040; i++) a[i] = b[i] = frand() * (mag == 0 ? 1.0f : mag == 1 ? 40.0f : 1e-3f);
            kn.softmax(a, lens[li], lens[li] + 5, 0.125f);
            nvlm_softmax_row_scalar(b, lens[li], lens[li] + 5, 0.125f);
            fails += memcmp(a, b, sizeof(float) * (size_t)(lens[li] + 5)) != 0, runs++;
        }
    CHECK(fails == 0, "%s: %d of %d softmax rows differ from the scalar form", nvlm_cpu_level_name(level), fails, runs);
    free(a), free(b);
    static const int shapes[][3] = {{1, 1, 1}, {5, 3, 7}, {13, 33, 64}, {50, 70, 63}, {49, 257, 80}, {30, 1025, 64}};
    fails = runs = 0;
    double worst = 0;
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
        const int nq = shapes[si][0], nk = shapes[si][1], d = shapes[si][2], T = nq > nk ? nq : nk;
        const size_t row = (size_t)3 * d + 5; /* q, k, v side by side in a wider row */
        float *qkv = malloc(sizeof(float) * row * T), *ref = malloc(sizeof(float) * (size_t)nq * (d + 3));
        float *got = malloc(sizeof(float) * (size_t)nq * (d + 3)), *f32 = malloc(sizeof(float) * d);
        float *scores = malloc(sizeof(float) * (size_t)(nk + 1));
        float *scratch = malloc(sizeof(float) * nvlm_attention_bf16_scratch(nq, nk, d));
        for (size_t i = 0; i < row * T; i++) qkv[i] = frand() * 2.0f;
        const float scale = 1.0f / sqrtf((float)d);
        nvlm_attention_bf16_ref(qkv, row, nq, qkv + d, row, qkv + 2 * d, row, nk, d, scale, ref, (size_t)d + 3, scores);
        nvlm_attention_bf16(level, qkv, row, nq, qkv + d, row, qkv + 2 * d, row, nk, d, scale, got, (size_t)d + 3, scratch);
        int same = 1;
        for (int i = 0; i < nq; i++) same &= !memcmp(ref + (size_t)i * (d + 3), got + (size_t)i * (d + 3), sizeof(float) * d);
        if (!same && fails++ < 3) printf("  %s: bf16 attention %dx%d d=%d differs from the reference\n", nvlm_cpu_level_name(level), nq, nk, d);
        runs++;
        for (int i = 0; i < nq; i++) { /* against float32: P and V rounded to 8 bits, |v| < 2 */
            nvlm_attend(qkv + (size_t)i * row, qkv + d, row, qkv + 2 * d, row, nk, d, scale, scores, f32);
            for (int c = 0; c < d; c++) {
                double e = fabs((double)got[(size_t)i * (d + 3) + c] - f32[c]);
                worst = e > worst ? e : worst;
            }
        }
        free(qkv), free(ref), free(got), free(f32), free(scores), free(scratch);
    }
    CHECK(fails == 0, "%s: %d of %d bf16 attention calls differ from the reference", nvlm_cpu_level_name(level), fails, runs);
    CHECK(worst < 0.05, "%s: bf16 attention is %.3g from float32", nvlm_cpu_level_name(level), worst);
}

/* The vision path of the model in dir (ViT GEMMs, attention, norms, residuals, QK-norm, im2col,
 * projector) in `compute` mode gives the same bits at 1 and 3 threads, at every level the
 * machine has. */
static void vision_threads(const char *dir, int compute, int tiles) {
    nvlm_err err = {0};
    nvlm_model *m1 = NULL, *m3 = NULL;
    nvlm_load_options lo = {.n_threads = 1, .compute = compute};
    int rc = nvlm_model_load(dir, &lo, &m1, &err);
    lo.n_threads = 3;
    if (!rc) rc = nvlm_model_load(dir, &lo, &m3, &err);
    CHECK(rc == 0, "load %s: %s", dir, err.msg);
    const int S = rc ? 1 : m1->cfg.image_size;
    const size_t n_px = (size_t)tiles * 3 * S * S,
                 n_out = rc ? 1 : (size_t)tiles * nvlm_cfg_tokens_per_tile(&m1->cfg) * m1->cfg.llm.hidden_size;
    float *px = malloc(sizeof(float) * n_px), *y1 = malloc(sizeof(float) * n_out), *y3 = malloc(sizeof(float) * n_out);
    for (size_t i = 0; i < n_px; i++) px[i] = (float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
    int n_levels, same = 0, tried = 0;
    const int *levels = nvlm_cpu_levels(&n_levels);
    for (int li = 0; !rc && li < n_levels; li++) {
        if (!nvlm_cpu_level_usable(levels[li])) continue;
        nvlm_pool_set_level(m1->pool, levels[li]), nvlm_pool_set_level(m3->pool, levels[li]);
        tried++;
        rc = nvlm_encode_tiles(m1, px, tiles, y1, &err) || nvlm_encode_tiles(m3, px, tiles, y3, &err);
        CHECK(rc == 0, "encode tiles: %s", err.msg);
        same += !rc && !memcmp(y1, y3, sizeof(float) * n_out);
    }
    CHECK(same == tried, "%s, %s compute: the vision path gives the same bits at 1 and 3 threads at %d of %d levels", dir,
          compute == NVLM_COMPUTE_BF16 ? "bf16" : "f32", same, tried);
    free(px), free(y1), free(y3);
    nvlm_model_free(m1), nvlm_model_free(m3);
}

/* vision_threads on the tiny reference model and on a random BF16 checkpoint with 65 tokens a
 * tile (3 tiles), in float32 and in bf16 compute. */
static void test_vit_threads(void) {
    char dir[] = "/tmp/nvlm_bf16_vit_XXXXXX";
    if (!mkdtemp(dir)) {
        CHECK(0, "mkdtemp");
        return;
    }
    nvlm_mkmodel_opts o;
    nvlm_mkmodel_defaults(&o);
    o.tokenizer_dir = shared_path("reference/tiny-tokenizer");
    o.seed = 11, o.image_size = 112, o.patch_size = 14; /* 65 tokens a tile */
    o.vit_hidden = 48, o.vit_layers = 2, o.vit_heads = 3, o.vit_dummy_heads = 1, o.vit_intermediate = 136;
    o.llm_hidden = 40, o.llm_layers = 1, o.llm_heads = 5, o.llm_kv_heads = 1, o.llm_intermediate = 72;
    o.dtype = NVLM_MK_BF16;
    nvlm_err err = {0};
    int rc = nvlm_mkmodel(&o, dir, NULL, &err);
    CHECK(rc == 0, "mkmodel: %s", err.msg);
    for (int bf = 0; bf <= 1; bf++) {
        const int compute = bf ? NVLM_COMPUTE_BF16 : NVLM_COMPUTE_F32;
        vision_threads(shared_path("reference/models/tiny-nvlm-d"), compute, 2);
        if (!rc) vision_threads(dir, compute, 3);
    }
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
}

int main(void) {
    test_lane();
    test_vit_threads();
    test_rows();
    nvlm_pool *p1 = NULL, *p3 = NULL;
    nvlm_err err = {0};
    CHECK(nvlm_pool_new(1, &p1, &err) == 0 && nvlm_pool_new(3, &p3, &err) == 0, "pool: %s", err.msg);
    if (!p1 || !p3) return check_done("test_bf16");
    int n_levels, skipped = 0;
    const int *levels = nvlm_cpu_levels(&n_levels);
    for (int li = 0; li < n_levels; li++) {
        if (!nvlm_cpu_level_usable(levels[li])) {
            skipped++;
            continue;
        }
        nvlm_pool_set_level(p1, levels[li]), nvlm_pool_set_level(p3, levels[li]);
        test_gemm(p1, p3, levels[li]);
        test_dispatch(p3);
        test_sliver(levels[li]);
        test_attention(levels[li]);
    }
    if (skipped) printf("test_bf16: %d levels not on this machine, their checks skipped\n", skipped);
    nvlm_pool_free(p1);
    nvlm_pool_free(p3);
    return check_done("test_bf16");
}
