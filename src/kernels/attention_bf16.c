/* Attention in the bf16 compute mode (gemm_bf16.h says what it computes): the softmax's scalar
 * form, the scalar reference, and the blocked driver that runs the level's bf16 micro-kernel
 * twice per block of queries, S = Q K^T and O = P V.
 *
 * Per call (one head of one tile in the ViT), K is packed once as NR-key panels (the keys are
 * the "outputs" of Q K^T) and V once as NR-channel panels over key pairs (the channels are the
 * outputs of P V). Each block of BQ queries is packed in MR-query slivers, multiplied into S,
 * softmaxed row by row, rounded to BF16 pairs along the keys and multiplied into out. Each
 * output is one vdpbf16ps chain from 0 in pair order, as the reference computes it, so the
 * blocking changes no bit. */
#include "kernels/gemm_bf16.h"
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { MR = NVLM_BF16_MR, NR = NVLM_BF16_NR, KC = NVLM_BF16_KC, BQ = 4 * NVLM_BF16_MR };

/* ---- the softmax of the f32 attention kernels, in portable C ---- */

static float f32_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* exp256 of gemm_avx2.c lane by lane: the same clamp, floor and FMA chain. */
static float exp_lane(float x) {
    x = fminf(fmaxf(x, -87.3f), 88.3f);
    float fx = floorf(fmaf(x, 1.44269504088896341f, 0.5f));
    x = fmaf(-fx, 0.693359375f, x);
    x = fmaf(-fx, -2.12194440e-4f, x);
    float y = 1.9875691500E-4f;
    y = fmaf(y, x, 1.3981999507E-3f);
    y = fmaf(y, x, 8.3334519073E-3f);
    y = fmaf(y, x, 4.1665795894E-2f);
    y = fmaf(y, x, 1.6666665459E-1f);
    y = fmaf(y, x, 5.0000001201E-1f);
    y = fmaf(y, x * x, x + 1.0f);
    return y * f32_bits((uint32_t)((int32_t)fx + 127) << 23);
}

void nvlm_softmax_row_scalar(float *s, int n, int n_zero, float scale) {
    float m = -INFINITY, lane[8] = {0};
    for (int i = 0; i < n; i++) {
        s[i] *= scale;
        m = s[i] > m ? s[i] : m;
    }
    for (int i = 0; i < n; i++) { /* lane i % 8 sums its elements in order, as 8-wide adds do */
        s[i] = exp_lane(s[i] - m);
        lane[i % 8] += s[i];
    }
    double total = 0;
    for (int k = 0; k < 8; k++) total += lane[k];
    const float inv = total > 0 ? (float)(1.0 / total) : 0.0f;
    for (int i = 0; i < n; i++) s[i] *= inv;
    for (int i = n; i < n_zero; i++) s[i] = 0;
}

/* ---- the reference ---- */

static uint32_t pair2(uint16_t lo, uint16_t hi) { return lo | (uint32_t)hi << 16; }

void nvlm_attention_bf16_ref(const float *q, size_t q_stride, int n_q, const float *k, size_t k_stride,
                             const float *v, size_t v_stride, int n_keys, int d, float scale, float *out,
                             size_t out_stride, float *scores) {
    const int kp = (d + 1) / 2;
    for (int i = 0; i < n_q; i++) {
        const float *qi = q + (size_t)i * q_stride;
        float *o = out + (size_t)i * out_stride;
        for (int j = 0; j < n_keys; j++) {
            const float *kj = k + (size_t)j * k_stride;
            float acc = 0;
            for (int p = 0; p < kp; p++) {
                int c = 2 * p, odd = c + 1 < d;
                acc = nvlm_dpbf16(acc, pair2(nvlm_bf16_round(qi[c]), odd ? nvlm_bf16_round(qi[c + 1]) : 0),
                                  pair2(nvlm_bf16_round(kj[c]), odd ? nvlm_bf16_round(kj[c + 1]) : 0));
            }
            scores[j] = acc;
        }
        nvlm_softmax_row_scalar(scores, n_keys, n_keys, scale);
        for (int c = 0; c < d; c++) {
            float acc = 0;
            for (int j = 0; j < n_keys; j += 2) {
                int two = j + 1 < n_keys;
                uint32_t pp = pair2(nvlm_bf16_round(scores[j]), two ? nvlm_bf16_round(scores[j + 1]) : 0);
                uint32_t vv = pair2(nvlm_bf16_round(v[(size_t)j * v_stride + c]),
                                    two ? nvlm_bf16_round(v[(size_t)(j + 1) * v_stride + c]) : 0);
                acc = nvlm_dpbf16(acc, pp, vv);
            }
            o[c] = acc;
        }
    }
}

/* ---- the blocked driver ---- */

static size_t up(size_t n, size_t m) { return (n + m - 1) / m * m; }

/* S row stride: a multiple of 16 floats, not of 256 (the MR rows read together spread over L1 sets). */
static size_t s_stride(int n_keys) {
    size_t l = up((size_t)n_keys, 16);
    return l % 256 ? l : l + 16;
}

/* The scratch, in 4-byte words from a 64-byte aligned start: K panels, V panels, S, the A
 * slivers (Q or P), and MR rows of BF16 for packing. */
typedef struct layout {
    size_t kpan, vpan, s, a, rows, end;
    size_t lds, row_len; /* S row stride (floats); BF16 row length (halves, even) */
} layout;

static layout layout_of(int n_keys, int d) {
    const size_t kp = (size_t)(d + 1) / 2, nkp = (size_t)(n_keys + 1) / 2, kmax = kp > nkp ? kp : nkp;
    layout l = {.lds = s_stride(n_keys)};
    l.row_len = up((size_t)(n_keys > d ? n_keys : d) + 2, 2);
    l.vpan = l.kpan + up(up((size_t)n_keys, NR) * kp, 16);
    l.s = l.vpan + up(up((size_t)d, NR) * nkp, 16);
    l.a = l.s + BQ * l.lds;
    l.rows = l.a + up((size_t)MR * kmax, 16);
    l.end = l.rows + up((size_t)MR * l.row_len / 2 + 1, 16);
    return l;
}

size_t nvlm_attention_bf16_scratch(int n_q, int n_keys, int d) {
    (void)n_q; /* blocks of BQ queries whatever the call */
    return layout_of(n_keys > 0 ? n_keys : 1, d > 0 ? d : 1).end + 16;
}

/* K as panels of NR keys over the d / 2 pairs: panel j0 / NR at kpan + j0 * kp, row p = the NR
 * keys' pair p (K blocks of KC at their pair offset). Keys past n_keys are zeros. */
static void pack_keys(const nvlm_bf16_kernels *kn, const float *k, size_t k_stride, int n_keys, int d, uint32_t *kpan) {
    const int kp = (d + 1) / 2;
    for (int j0 = 0; j0 < n_keys; j0 += NR)
        for (int c0 = 0; c0 < d; c0 += KC)
            nvlm_bf16_pack_panel(kn, k + (size_t)j0 * k_stride + c0, sizeof(float) * k_stride, NVLM_DT_F32,
                                 n_keys - j0 < NR ? n_keys - j0 : NR, d - c0 < KC ? d - c0 : KC,
                                 kpan + ((size_t)j0 * kp + (size_t)c0 / 2 * NR));
}

/* V as panels of NR channels over the key pairs: panel c0 / NR at vpan + c0 * nkp, row m =
 * (v_2m[c], v_2m+1[c]) of the NR channels. Channels past d and a key past n_keys are zeros. */
static void pack_values(const nvlm_bf16_kernels *kn, const float *v, size_t v_stride, int n_keys, int d,
                        uint16_t *tmp, uint32_t *vpan) {
    const size_t nkp = (size_t)(n_keys + 1) / 2;
    memset(vpan, 0, sizeof(uint32_t) * up((size_t)d, NR) * nkp);
    for (int j = 0; j < n_keys; j++) {
        kn->row(tmp, v + (size_t)j * v_stride, NVLM_DT_F32, d);
        const int m = j / 2, shift = j % 2 ? 16 : 0;
        for (int c = 0; c < d; c++)
            vpan[(size_t)(c / NR) * NR * nkp + (size_t)m * NR + c % NR] |= (uint32_t)tmp[c] << shift;
    }
}

void nvlm_attention_bf16(int level, const float *q, size_t q_stride, int n_q, const float *k, size_t k_stride,
                         const float *v, size_t v_stride, int n_keys, int d, float scale, float *out,
                         size_t out_stride, float *scratch) {
    if (n_q <= 0 || d <= 0) return;
    if (n_keys <= 0) {
        for (int i = 0; i < n_q; i++) memset(out + (size_t)i * out_stride, 0, sizeof(float) * (size_t)d);
        return;
    }
    const nvlm_bf16_kernels kn = nvlm_bf16_kernels_at(level);
    const layout l = layout_of(n_keys, d);
    uint32_t *base = (uint32_t *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    uint32_t *kpan = base + l.kpan, *vpan = base + l.vpan, *ap = base + l.a;
    float *S = (float *)(base + l.s);
    uint16_t *rows = (uint16_t *)(base + l.rows);
    const int kp = (d + 1) / 2, nkp = (n_keys + 1) / 2;
    pack_keys(&kn, k, k_stride, n_keys, d, kpan);
    pack_values(&kn, v, v_stride, n_keys, d, rows, vpan);
    for (int q0 = 0; q0 < n_q; q0 += BQ) {
        const int bq = n_q - q0 < BQ ? n_q - q0 : BQ;
        for (int t0 = 0; t0 < bq; t0 += MR) { /* S = Q K^T, one sliver at a time */
            const int mr = bq - t0 < MR ? bq - t0 : MR;
            nvlm_bf16_pack_sliver(&kn, q + (size_t)(q0 + t0) * q_stride, q_stride, mr, d, rows, l.row_len, ap);
            for (int j0 = 0; j0 < n_keys; j0 += NR)
                kn.ukr(kp, ap, kpan + (size_t)j0 * kp, S + (size_t)t0 * l.lds + j0, l.lds, mr,
                       n_keys - j0 < NR ? n_keys - j0 : NR, 0, NULL);
        }
        for (int i = 0; i < bq; i++) kn.softmax(S + (size_t)i * l.lds, n_keys, n_keys, scale);
        for (int t0 = 0; t0 < bq; t0 += MR) { /* O = P V */
            const int mr = bq - t0 < MR ? bq - t0 : MR;
            nvlm_bf16_pack_sliver(&kn, S + (size_t)t0 * l.lds, l.lds, mr, n_keys, rows, l.row_len, ap);
            for (int c0 = 0; c0 < d; c0 += NR)
                kn.ukr(nkp, ap, vpan + (size_t)c0 * nkp, out + (size_t)(q0 + t0) * out_stride + c0, out_stride, mr,
                       d - c0 < NR ? d - c0 : NR, 0, NULL);
        }
    }
}
