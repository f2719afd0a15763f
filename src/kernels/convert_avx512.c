/* AVX-512 conversions of weight rows to float32 (see qblock.h): 16 values per instruction; the
 * bits of nvlm_row_to_f32 (every conversion is exact or the same rounding: Q8_0 d * q, Q4
 * d * q + m in two roundings, as the scalar reference). */
#include "kernels/simd512.h"
#ifdef NVLM_HAVE_AVX512_KERNELS
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#include <immintrin.h>
#include <string.h>

/* 16 values widened as two halves of 8 joined (the 512-bit widenings cross 128-bit lanes and
 * measured slower on Zen 4: gemv_avx512.c). */
static inline __m512 load_bf16x16(const uint8_t *p) {
    __m256i lo = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16);
    __m256i hi = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p + 16))), 16);
    return _mm512_castsi512_ps(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1));
}

static inline __m512 load_f16x16(const uint8_t *p) {
    __m256 lo = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    __m256 hi = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16)));
    return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
}

void nvlm_row_to_f32_avx512(float *dst, const void *src, nvlm_dtype t, int n) {
    const uint8_t *s = src;
    int i = 0;
    switch (t) {
    case NVLM_DT_F32:
        memcpy(dst, src, sizeof(float) * (size_t)n);
        return;
    case NVLM_DT_BF16:
        for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, load_bf16x16(s + 2 * i));
        break;
    case NVLM_DT_F16:
        for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, load_f16x16(s + 2 * i));
        break;
    case NVLM_DT_Q8_0: {
        const nvlm_block_q8_0 *b = src;
        for (int k = 0; k < n / NVLM_QK; k++) {
            __m512 d = _mm512_set1_ps(_cvtsh_ss(b[k].d));
            __m512 q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)b[k].q)));
            __m512 q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b[k].q + 16))));
            _mm512_storeu_ps(dst + k * NVLM_QK, _mm512_mul_ps(d, q0));
            _mm512_storeu_ps(dst + k * NVLM_QK + 16, _mm512_mul_ps(d, q1));
        }
        return;
    }
    case NVLM_DT_Q4: { /* byte j: weight j (low nibble), weight j + 16 (high) */
        const nvlm_block_q4 *b = src;
        const __m128i m4 = _mm_set1_epi8(15);
        for (int k = 0; k < n / NVLM_QK; k++) {
            __m512 d = _mm512_set1_ps(_cvtsh_ss(b[k].d)), m = _mm512_set1_ps(_cvtsh_ss(b[k].m));
            __m128i bytes = _mm_loadu_si128((const __m128i *)b[k].q);
            __m128i lo = _mm_and_si128(bytes, m4), hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), m4);
            float *o = dst + k * NVLM_QK;
            _mm512_storeu_ps(o, _mm512_add_ps(_mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo))), m));
            _mm512_storeu_ps(o + 16, _mm512_add_ps(_mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi))), m));
        }
        return;
    }
    case NVLM_DT_Q4_0: { /* the same nibbles; d * (q - 8), exact */
        const nvlm_block_q4_0 *b = src;
        const __m128i m4 = _mm_set1_epi8(15), eight = _mm_set1_epi8(8);
        for (int k = 0; k < n / NVLM_QK; k++) {
            __m512 d = _mm512_set1_ps(_cvtsh_ss(b[k].d));
            __m128i bytes = _mm_loadu_si128((const __m128i *)b[k].q);
            __m128i lo = _mm_sub_epi8(_mm_and_si128(bytes, m4), eight), hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(bytes, 4), m4), eight);
            _mm512_storeu_ps(dst + k * NVLM_QK, _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo))));
            _mm512_storeu_ps(dst + k * NVLM_QK + 16, _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi))));
        }
        return;
    }
    default: /* a format this code does not decode: the traits table's scalar converter */
        nvlm_row_to_f32(dst, src, t, n);
        return;
    }
    if (i < n) nvlm_to_f32(dst + i, s + 2 * (size_t)i, t, (size_t)(n - i));
}
#pragma GCC pop_options
#endif
