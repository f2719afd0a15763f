/* AVX2 conversions, activation quantization and quantized dot products (see qblock.h). */
#include "kernels/simd.h"
#ifdef NVLM_HAVE_AVX2_KERNELS
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>
#include <math.h>
#include <string.h>

static inline __m256 load_bf16x8(const void *p) {
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline __m256 load_f16x8(const void *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

void nvlm_row_to_f32_avx2(float *dst, const void *src, nvlm_dtype t, int n) {
    const uint8_t *s = src;
    int i = 0;
    switch (t) {
    case NVLM_DT_F32:
        memcpy(dst, src, sizeof(float) * (size_t)n);
        return;
    case NVLM_DT_BF16:
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load_bf16x8(s + 2 * i));
        break;
    case NVLM_DT_F16:
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load_f16x8(s + 2 * i));
        break;
    case NVLM_DT_Q8_0: {
        const nvlm_block_q8_0 *b = src;
        for (int k = 0; k < n / NVLM_QK; k++) {
            __m256 d = _mm256_set1_ps(_cvtsh_ss(b[k].d));
            for (int j = 0; j < NVLM_QK; j += 8) {
                __m128i q = _mm_loadl_epi64((const __m128i *)(b[k].q + j));
                _mm256_storeu_ps(dst + k * NVLM_QK + j, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q))));
            }
        }
        return;
    }
    case NVLM_DT_Q4: {
        const nvlm_block_q4 *b = src;
        const __m128i m4 = _mm_set1_epi8(15);
        for (int k = 0; k < n / NVLM_QK; k++) {
            __m256 d = _mm256_set1_ps(_cvtsh_ss(b[k].d)), m = _mm256_set1_ps(_cvtsh_ss(b[k].m));
            __m128i bytes = _mm_loadu_si128((const __m128i *)b[k].q);
            __m128i lo = _mm_and_si128(bytes, m4), hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), m4);
            float *o = dst + k * NVLM_QK;
            /* d * q + m as two roundings (mul, add), like the scalar reference */
            _mm256_storeu_ps(o, _mm256_add_ps(_mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo))), m));
            _mm256_storeu_ps(o + 8, _mm256_add_ps(_mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)))), m));
            _mm256_storeu_ps(o + 16, _mm256_add_ps(_mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi))), m));
            _mm256_storeu_ps(o + 24, _mm256_add_ps(_mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)))), m));
        }
        return;
    }
    case NVLM_DT_Q4_0: {
        const nvlm_block_q4_0 *b = src;
        const __m128i m4 = _mm_set1_epi8(15), eight = _mm_set1_epi8(8);
        for (int k = 0; k < n / NVLM_QK; k++) {
            __m256 d = _mm256_set1_ps(_cvtsh_ss(b[k].d));
            __m128i bytes = _mm_loadu_si128((const __m128i *)b[k].q);
            __m128i lo = _mm_sub_epi8(_mm_and_si128(bytes, m4), eight), hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(bytes, 4), m4), eight);
            float *o = dst + k * NVLM_QK; /* d * (q - 8): exact, as the scalar reference */
            _mm256_storeu_ps(o, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo))));
            _mm256_storeu_ps(o + 8, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)))));
            _mm256_storeu_ps(o + 16, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi))));
            _mm256_storeu_ps(o + 24, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)))));
        }
        return;
    }
    default: /* a format this code does not decode: the traits table's scalar converter */
        nvlm_row_to_f32(dst, src, t, n);
        return;
    }
    if (i < n) nvlm_to_f32(dst + i, s + 2 * (size_t)i, t, (size_t)(n - i));
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

float nvlm_dot_avx2(const float *a, const float *b, int n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    float s = hsum(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* Same arithmetic as nvlm_quantize_row_q8a: amax, d = amax/127, q = rint(x * 127/amax). */
void nvlm_quantize_row_q8a_avx2(const float *x, nvlm_block_q8a *b, int n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int i = 0; i < n / NVLM_QK; i++, x += NVLM_QK) {
        __m256 v[4], m = _mm256_setzero_ps();
        for (int j = 0; j < 4; j++) {
            v[j] = _mm256_loadu_ps(x + 8 * j);
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[j]));
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float amax = _mm_cvtss_f32(m4);
        b[i].d = amax / 127.0f;
        __m256 id = _mm256_set1_ps(amax > 0 ? 127.0f / amax : 0.0f);
        __m256i q[4];
        for (int j = 0; j < 4; j++)
            q[j] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[j], id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        /* pack 32-bit lanes to bytes; packs interleave 128-bit halves, the permute restores order */
        __m256i p01 = _mm256_packs_epi32(q[0], q[1]), p23 = _mm256_packs_epi32(q[2], q[3]);
        __m256i p = _mm256_packs_epi16(p01, p23);
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)b[i].q, p);
    }
}

/* Sum of 32 int8 products as 8 float lanes (maddubs needs an unsigned operand: |w|, sign moved to x). */
static inline __m256 dot_i8(__m256i w, __m256i x) {
    __m256i ax = _mm256_sign_epi8(w, w), sx = _mm256_sign_epi8(x, w);
    __m256i s16 = _mm256_maddubs_epi16(ax, sx);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(s16, _mm256_set1_epi16(1)));
}

/* The same for unsigned weights 0..15 (Q4 nibbles), and the sum of x as 8 lanes. */
static inline __m256 dot_u4(__m256i w, __m256i x, __m256 *xsum) {
    __m256i ones = _mm256_set1_epi16(1);
    *xsum = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), x), ones));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones));
}

/* llama.cpp-style dot product: int8 activations (nvlm_quantize_row_q8a) against the weight
 * blocks (the option NVLM_QACT=int8; the default multiplies float32 activations). */
float nvlm_vec_dot_q_avx2(nvlm_dtype t, const void *w, const nvlm_block_q8a *x, int n) {
    if (t != NVLM_DT_Q8_0 && t != NVLM_DT_Q4 && t != NVLM_DT_Q4_0) return nvlm_vec_dot_q(t, w, x, n); /* the table's reference */
    __m256 acc = _mm256_setzero_ps();
    int nb = n / NVLM_QK;
    if (t == NVLM_DT_Q4_0) { /* nibbles - 8: Q8_0's signed product */
        const nvlm_block_q4_0 *b = w;
        for (int i = 0; i < nb; i++) {
            __m128i bytes = _mm_loadu_si128((const __m128i *)b[i].q);
            __m256i wq = _mm256_sub_epi8(_mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(bytes, 4), bytes), _mm256_set1_epi8(15)),
                                         _mm256_set1_epi8(8));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(b[i].d) * x[i].d), dot_i8(wq, _mm256_loadu_si256((const __m256i *)x[i].q)), acc);
        }
    } else if (t == NVLM_DT_Q8_0) {
        const nvlm_block_q8_0 *b = w;
        for (int i = 0; i < nb; i++) {
            __m256i wq = _mm256_loadu_si256((const __m256i *)b[i].q);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(b[i].d) * x[i].d), dot_i8(wq, _mm256_loadu_si256((const __m256i *)x[i].q)), acc);
        }
    } else {
        const nvlm_block_q4 *b = w;
        for (int i = 0; i < nb; i++) {
            __m128i bytes = _mm_loadu_si128((const __m128i *)b[i].q);
            __m256i wq = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(bytes, 4), bytes), _mm256_set1_epi8(15));
            __m256 xs, s = dot_u4(wq, _mm256_loadu_si256((const __m256i *)x[i].q), &xs);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(b[i].d) * x[i].d), s, acc);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(b[i].m) * x[i].d), xs, acc);
        }
    }
    return hsum(acc);
}
#pragma GCC pop_options
#endif
