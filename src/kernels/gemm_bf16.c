/* The bf16 compute mode's matrix product (gemm_bf16.h says what it computes): the scalar
 * reference, the scalar micro-kernel, and the blocked driver that packs A and B and runs the
 * micro-kernel of the pool's level (gemm_bf16_avx2.c: AVX2 emulation; gemm_bf16_avx512.c:
 * vdpbf16ps).
 *
 * Blocking as gemm_avx2.c: A (x, rounded to BF16) is packed once per call into slivers of MR
 * tokens per K block; each thread takes groups of GROUP panels of NR outputs, packs them per K
 * block (weights converted to BF16 pairs, in L2) and applies every A sliver to them in turn.
 * A K block after the first continues each chain from C's stored value, so the chain over K is
 * the reference's whatever KC is; nothing depends on the thread or the tile. */
#include "kernels/gemm_bf16.h"
#include "kernels/wpack.h"
#include "kernels/cpu.h"
#include "kernels/qblock.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A pair of BF16 values is read as one dword, the even element in the low half. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the BF16 pair packing assumes little-endian");

enum { MR = NVLM_BF16_MR, NR = NVLM_BF16_NR, KC = NVLM_BF16_KC, GROUP = 4, MULTI_MAX = 4 };

static float f32_of_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* BF16 denormal (exponent 0, mantissa not 0) to a zero of its sign. */
static uint16_t bf16_daz(uint16_t h) { return (h & 0x7f80) ? h : (uint16_t)(h & 0x8000); }

static float ftz(float x) { return fabsf(x) < 0x1p-126f ? copysignf(0.0f, x) : x; }

float nvlm_dpbf16(float acc, uint32_t a, uint32_t b) {
    acc = ftz(acc);
    float a1 = f32_of_bits((uint32_t)bf16_daz((uint16_t)(a >> 16)) << 16), b1 = f32_of_bits((uint32_t)bf16_daz((uint16_t)(b >> 16)) << 16);
    float a0 = f32_of_bits((uint32_t)bf16_daz((uint16_t)a) << 16), b0 = f32_of_bits((uint32_t)bf16_daz((uint16_t)b) << 16);
    acc = ftz(fmaf(a1, b1, acc));
    return ftz(fmaf(a0, b0, acc));
}

uint16_t nvlm_bf16_round(float x) { return bf16_daz(nvlm_f32_to_bf16(x)); }

int nvlm_bf16_eligible(const nvlm_wmat *w) {
    return !w->f32_only && (w->dtype == NVLM_DT_F32 || w->dtype == NVLM_DT_F16 || w->dtype == NVLM_DT_BF16 ||
                            nvlm_dtype_is_block(w->dtype));
}

/* Element k of a row at src, as this mode's BF16 (a block format: its float32 value rounded). */
static uint16_t elem_bf16(const void *src, nvlm_dtype t, size_t k) {
    if (nvlm_dtype_is_block(t)) {
        float blk[NVLM_QK];
        nvlm_row_to_f32(blk, (const uint8_t *)src + nvlm_row_bytes(t, (int64_t)(k / NVLM_QK * NVLM_QK)), t, NVLM_QK);
        return nvlm_bf16_round(blk[k % NVLM_QK]);
    }
    const uint8_t *p = (const uint8_t *)src + k * nvlm_dtype_size(t);
    if (t == NVLM_DT_F32) {
        float f;
        memcpy(&f, p, 4);
        return nvlm_bf16_round(f);
    }
    uint16_t h;
    memcpy(&h, p, 2);
    return t == NVLM_DT_BF16 ? bf16_daz(h) : nvlm_bf16_round(nvlm_f16_to_f32(h));
}

/* The pair p of a row of n values (a zero past the end), as a dword: low half element 2p. */
static uint32_t pair_of(const void *src, nvlm_dtype t, int n, int p) {
    uint32_t lo = elem_bf16(src, t, (size_t)2 * p), hi = 2 * p + 1 < n ? elem_bf16(src, t, (size_t)2 * p + 1) : 0;
    return lo | hi << 16;
}

void nvlm_matmul_bf16_ref(float *y, const float *x, int n_tok, const nvlm_wmat *w, const float *bias, int n0, int n1) {
    const int K = w->cols, N = w->rows, kp = (K + 1) / 2;
    const size_t rb = nvlm_row_bytes(w->dtype, K);
    for (int t = 0; t < n_tok; t++)
        for (int n = n0; n < n1; n++) {
            const void *row = (const uint8_t *)w->data + (size_t)n * rb;
            float acc = 0;
            for (int p = 0; p < kp; p++) {
                uint32_t wp;
                if (w->layout == NVLM_WL_P8) /* a pair never leaves its run of 16 */
                    wp = pair_of(nvlm_wmat_at(w, nvlm_dtype_size(w->dtype), n, 2 * p), w->dtype, 2, 0);
                else if (w->layout == NVLM_WL_Q16) { /* nor its block */
                    nvlm_block_q8_0 b[1]; /* room for one block of either format */
                    nvlm_q16_row_blocks(w, n, 2 * p / NVLM_QK, 1, (uint8_t *)b);
                    wp = pair_of(b, w->dtype, NVLM_QK, (2 * p % NVLM_QK) / 2);
                } else
                    wp = pair_of(row, w->dtype, K, p);
                acc = nvlm_dpbf16(acc, pair_of(x + (size_t)t * K, NVLM_DT_F32, K, p), wp);
            }
            y[(size_t)t * N + n] = bias ? acc + bias[n] : acc;
        }
}

void nvlm_bf16_ukr_scalar(int kp, const uint32_t *a, const uint32_t *b, float *c, size_t ldc, int mr, int nr,
                          int accumulate, const float *bias) {
    for (int i = 0; i < mr; i++)
        for (int r = 0; r < nr; r++) {
            float acc = accumulate ? c[(size_t)i * ldc + r] : 0.0f;
            for (int p = 0; p < kp; p++) acc = nvlm_dpbf16(acc, a[(size_t)p * MR + i], b[(size_t)p * NR + r]);
            c[(size_t)i * ldc + r] = bias ? acc + bias[r] : acc;
        }
}

void nvlm_bf16_row_blocks(uint16_t *dst, const void *src, nvlm_dtype t, int n, nvlm_row_f32_fn to_f32,
                          nvlm_bf16_row_fn round_f32) {
    float f[KC];
    for (int i = 0; i < n; i += KC) {
        int m = n - i < KC ? n - i : KC;
        to_f32(f, (const uint8_t *)src + nvlm_row_bytes(t, i), t, m);
        round_f32(dst + i, f, NVLM_DT_F32, m);
    }
}

void nvlm_bf16_row_scalar(uint16_t *dst, const void *src, nvlm_dtype t, int n) {
    if (nvlm_dtype_is_block(t)) {
        nvlm_bf16_row_blocks(dst, src, t, n, nvlm_row_to_f32, nvlm_bf16_row_scalar);
        return;
    }
    for (int i = 0; i < n; i++) dst[i] = elem_bf16(src, t, (size_t)i);
}

static void pairs_scalar(const uint16_t (*rows)[KC + 2], int kp, uint32_t *dst) {
    for (int p = 0; p < kp; p++)
        for (int r = 0; r < NR; r++) dst[(size_t)p * NR + r] = rows[r][2 * p] | (uint32_t)rows[r][2 * p + 1] << 16;
}

void nvlm_bf16_sliver_scalar(const uint16_t *rows, size_t row_len, int kp, uint32_t *dst) {
    for (int p = 0; p < kp; p++) /* pair p of a row is its dword p (little-endian: element 2p low) */
        for (int i = 0; i < MR; i++) memcpy(&dst[(size_t)p * MR + i], rows + (size_t)i * row_len + 2 * p, 4);
}

/* ---- the kernels of a level ---- */

typedef nvlm_bf16_kernels kernels;

nvlm_bf16_kernels nvlm_bf16_kernels_at(int level) {
    kernels k = {nvlm_bf16_ukr_scalar, nvlm_bf16_row_scalar, pairs_scalar, nvlm_bf16_sliver_scalar,
                 nvlm_softmax_row_scalar};
#ifdef NVLM_HAVE_BF16_X86
    if (nvlm_cpu_at_least(level, NVLM_CPU_AVX2))
        k = (kernels){nvlm_bf16_ukr_avx2, nvlm_bf16_row_avx2, nvlm_bf16_pairs_avx2, nvlm_bf16_sliver_avx2,
                      nvlm_softmax_row_avx2};
    if (nvlm_cpu_at_least(level, NVLM_CPU_AVX512)) k.row = nvlm_bf16_row_avx512, k.softmax = nvlm_softmax_row_avx512;
    if (nvlm_cpu_at_least(level, NVLM_CPU_AVX512_BF16)) k.ukr = nvlm_bf16_ukr_avx512;
#else
    (void)level;
#endif
    return k;
}

const char *nvlm_bf16_kernels_name(int level) {
    const nvlm_bf16_kernels k = nvlm_bf16_kernels_at(level);
#ifdef NVLM_HAVE_BF16_X86
    if (k.ukr == nvlm_bf16_ukr_avx512) return "bf16_ukr_avx512 (12x32 zmm, vdpbf16ps)";
    if (k.ukr == nvlm_bf16_ukr_avx2) return "bf16_ukr_avx2 (exact vdpbf16ps emulation, 2 FMAs a pair)";
#endif
    return k.ukr == nvlm_bf16_ukr_scalar ? "bf16_ukr_scalar (the reference chain)" : "?";
}

/* ---- packing ---- */

/* Packed A: K blocks one after the other (pair offset p0 = k0 / 2), each holding the
 * mp = ceil(M / MR) * MR rows as slivers of MR, pair-major: the dword of token t0 + i at pair
 * p0 + p is at ap[p0 * mp + t0 * kcp + p * MR + i]. */
static size_t a_off(size_t mp, int k0, int kcp, int t0) { return (size_t)(k0 / 2) * mp + (size_t)t0 * kcp; }

void nvlm_bf16_pack_sliver(const nvlm_bf16_kernels *kn, const float *x, size_t stride, int mr, int len,
                           uint16_t *rows, size_t row_len, uint32_t *dst) {
    for (int i = 0; i < MR; i++) {
        uint16_t *r = rows + (size_t)i * row_len;
        if (i < mr) kn->row(r, x + (size_t)i * stride, NVLM_DT_F32, len);
        else memset(r, 0, sizeof(uint16_t) * (size_t)len);
        r[len] = 0; /* the pair past an odd len */
    }
    kn->sliver(rows, row_len, (len + 1) / 2, dst);
}

void nvlm_bf16_pack_panel(const nvlm_bf16_kernels *kn, const void *src, size_t row_bytes, nvlm_dtype t, int nr, int kc,
                          uint32_t *dst) {
    uint16_t rows[NR][KC + 2];
    for (int r = 0; r < NR; r++) {
        if (r < nr) kn->row(rows[r], (const uint8_t *)src + (size_t)r * row_bytes, t, kc);
        else memset(rows[r], 0, sizeof(uint16_t) * (size_t)kc);
        rows[r][kc] = rows[r][kc + 1] = 0;
    }
    kn->pairs((const uint16_t(*)[KC + 2])rows, (kc + 1) / 2, dst);
}

/* The sliver of tokens t0 .. t0 + mr (mr <= MR; rows past mr zero) of x [M, K]. */
static void pack_a(const kernels *kn, const float *x, int K, int mr, uint32_t *ap, size_t mp, int t0) {
    uint16_t rows[MR][KC + 2];
    for (int k0 = 0; k0 < K; k0 += KC) {
        int kc = K - k0 < KC ? K - k0 : KC;
        nvlm_bf16_pack_sliver(kn, x + (size_t)t0 * K + k0, (size_t)K, mr, kc, rows[0], KC + 2,
                              ap + a_off(mp, k0, (kc + 1) / 2, t0));
    }
}

/* The panel of outputs n0 .. n0 + nr (rows past nr zero) of w, K block [k0, k0 + kc). */
static void pack_b(const kernels *kn, const nvlm_wmat *w, int n0, int nr, int k0, int kc, uint32_t *dst) {
    if (w->layout == NVLM_WL_P8) { /* kernels/ops.h: each row's runs of 16 gathered, then rounded as one row */
        const size_t es = nvlm_dtype_size(w->dtype), step = (size_t)NVLM_P8_ROWS * NVLM_P8_RUN * es;
        uint8_t rows[NR][KC * sizeof(float)];
        for (int r = 0; r < nr; r++) {
            const uint8_t *src = nvlm_wmat_at(w, es, n0 + r, k0); /* k0 % 16 == 0; the next run: step on */
            if (es == 2)
                for (int k = 0; k < kc; k += NVLM_P8_RUN, src += step) memcpy(rows[r] + 2 * (size_t)k, src, 2 * NVLM_P8_RUN);
            else
                for (int k = 0; k < kc; k += NVLM_P8_RUN, src += step) memcpy(rows[r] + 4 * (size_t)k, src, 4 * NVLM_P8_RUN);
        }
        nvlm_bf16_pack_panel(kn, rows, sizeof rows[0], w->dtype, nr, kc, dst);
        return;
    }
    const size_t rb = nvlm_row_bytes(w->dtype, w->cols), off = nvlm_row_bytes(w->dtype, k0); /* k0: whole blocks */
    if (w->layout == NVLM_WL_Q16) { /* the panel's rows back in the stored block format, K block only */
        uint8_t rows[NR][KC / NVLM_QK * sizeof(nvlm_block_q8_0)];
        for (int r = 0; r < nr; r++) nvlm_q16_row_blocks(w, n0 + r, k0 / NVLM_QK, (kc + NVLM_QK - 1) / NVLM_QK, rows[r]);
        nvlm_bf16_pack_panel(kn, rows, sizeof rows[0], w->dtype, nr, kc, dst);
        return;
    }
    nvlm_bf16_pack_panel(kn, (const uint8_t *)w->data + (size_t)n0 * rb + off, rb, w->dtype, nr, kc, dst);
}

/* ---- the driver ---- */

typedef struct bjob {
    const float *x;
    uint32_t *ap;
    int n_tok, K, n_w;
    kernels kn;
    float *const *y;
    const nvlm_wmat *const *w;
    const float *const *bias;
    size_t first[MULTI_MAX + 1]; /* panel index where matrix i starts */
    uint32_t *wp;                /* per thread: GROUP panels of kcp_max x NR dwords, or NULL */
    size_t wp_stride;            /* dwords per thread */
} bjob;

static void pack_a_units(void *ctx, size_t begin, size_t end, int thread) {
    (void)thread;
    const bjob *j = ctx;
    size_t mp = (size_t)(j->n_tok + MR - 1) / MR * MR;
    for (size_t s = begin; s < end; s++) {
        int t0 = (int)s * MR, mr = j->n_tok - t0 < MR ? j->n_tok - t0 : MR;
        pack_a(&j->kn, j->x, j->K, mr, j->ap, mp, t0);
    }
}

/* Outputs [n0, n1) (at most GROUP panels) of matrix i for every token; wp: GROUP panels of
 * kcp_max x NR dwords (kcp_max: the pairs of the largest K block). */
static void gemm_group(const bjob *j, int i, int n0, int n1, uint32_t *wp) {
    const nvlm_wmat *w = j->w[i];
    const int M = j->n_tok, K = j->K, np = (n1 - n0 + NR - 1) / NR, kcp_max = ((K < KC ? K : KC) + 1) / 2;
    const size_t mp = (size_t)(M + MR - 1) / MR * MR, ldc = (size_t)w->rows;
    for (int k0 = 0; k0 < K; k0 += KC) {
        int kc = K - k0 < KC ? K - k0 : KC, kcp = (kc + 1) / 2, last = k0 + kc >= K;
        for (int p = 0; p < np; p++) {
            int c0 = n0 + p * NR;
            pack_b(&j->kn, w, c0, n1 - c0 < NR ? n1 - c0 : NR, k0, kc, wp + (size_t)p * kcp_max * NR);
        }
        for (int t0 = 0; t0 < M; t0 += MR) {
            int mr = M - t0 < MR ? M - t0 : MR;
            const uint32_t *as = j->ap + a_off(mp, k0, kcp, t0);
            for (int p = 0; p < np; p++) {
                int c0 = n0 + p * NR, nr = n1 - c0 < NR ? n1 - c0 : NR;
                j->kn.ukr(kcp, as, wp + (size_t)p * kcp_max * NR, j->y[i] + (size_t)t0 * ldc + c0, ldc, mr, nr, k0 > 0,
                          last && j->bias[i] ? j->bias[i] + c0 : NULL);
            }
        }
    }
}

/* Units are panels of NR outputs, the matrices' panels one after the other. */
static void gemm_units(void *ctx, size_t begin, size_t end, int thread) {
    const bjob *j = ctx;
    uint32_t *wp = j->wp ? j->wp + (size_t)thread * j->wp_stride : NULL;
    for (int i = 0; i < j->n_w; i++) {
        size_t b = begin > j->first[i] ? begin : j->first[i], e = end < j->first[i + 1] ? end : j->first[i + 1];
        const int N = j->w[i]->rows;
        if (b >= e) continue;
        size_t ng = (e - b + GROUP - 1) / GROUP, gs = (e - b + ng - 1) / ng; /* groups of equal size */
        for (size_t p = b; p < e; p += gs) {
            int n0 = (int)(p - j->first[i]) * NR, n1 = (int)((p + gs < e ? p + gs : e) - j->first[i]) * NR;
            n1 = n1 < N ? n1 : N;
            if (wp) gemm_group(j, i, n0, n1, wp);
            else nvlm_matmul_bf16_ref(j->y[i], j->x, j->n_tok, j->w[i], j->bias[i], n0, n1); /* same bits, no memory */
        }
    }
}

void nvlm_matmul_bf16(nvlm_pool *pool, int n_w, float *const *y, const float *x, int n_tok,
                      const nvlm_wmat *const *w, const float *const *bias) {
    if (n_tok <= 0 || n_w <= 0) return;
    if (n_w > MULTI_MAX) {
        for (int i = 0; i < n_w; i++) nvlm_matmul_bf16(pool, 1, &y[i], x, n_tok, &w[i], &bias[i]);
        return;
    }
    const int K = w[0]->cols, kp = (K + 1) / 2;
    const size_t slivers = ((size_t)n_tok + MR - 1) / MR;
    uint32_t *ap = malloc(sizeof(uint32_t) * slivers * MR * (size_t)kp);
    if (!ap) { /* the reference needs no memory and gives the same bits */
        for (int i = 0; i < n_w; i++) nvlm_matmul_bf16_ref(y[i], x, n_tok, w[i], bias[i], 0, w[i]->rows);
        return;
    }
    bjob j = {x, ap, n_tok, K, n_w, nvlm_bf16_kernels_at(nvlm_pool_level(pool)), y, w, bias, {0}, NULL, 0};
    for (int i = 0; i < n_w; i++) j.first[i + 1] = j.first[i] + ((size_t)w[i]->rows + NR - 1) / NR;
    /* the threads' panel buffers in one allocation sized to this K (a small K stays on the heap
     * malloc reuses; a fresh mmap per thread and call cost more than small products themselves) */
    j.wp_stride = (size_t)GROUP * (((K < KC ? K : KC) + 1) / 2) * NR;
    j.wp_stride = (j.wp_stride + 15) / 16 * 16; /* 64-byte aligned per thread */
    j.wp = aligned_alloc(64, sizeof(uint32_t) * j.wp_stride * (size_t)nvlm_pool_threads(pool));
    nvlm_pool_run(pool, slivers, 4, pack_a_units, &j);
    nvlm_pool_run(pool, j.first[n_w], GROUP, gemm_units, &j);
    free(j.wp);
    free(ap);
}
