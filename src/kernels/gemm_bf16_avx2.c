/* AVX2 kernels of the bf16 compute mode (gemm_bf16.h): the conversion of rows to BF16, the
 * pairing of a panel (8x8 dword transposes), and a micro-kernel that emulates vdpbf16ps
 * exactly: per pair, FMA of the high halves then of the low halves (a BF16 is the high half of
 * its float32), each result with a denormal flushed to a zero of its sign. The inputs come
 * packed with their BF16 denormals already zero, so no DAZ step is needed here. Used at the
 * AVX2, AVX-512 and AVX512-VNNI levels (the pairing and conversion at every x86 level). */
#include "kernels/gemm_bf16.h"
#include "kernels/simd.h"
#ifdef NVLM_HAVE_BF16_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>
#include <string.h>

#define AI static inline __attribute__((always_inline))
enum { MR = NVLM_BF16_MR, NR = NVLM_BF16_NR, KC = NVLM_BF16_KC, HALF = MR / 2 };

/* A denormal result to a zero of its sign (FTZ). */
AI __m256 ftz(__m256 x) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 tiny = _mm256_cmp_ps(_mm256_and_ps(x, abs_mask), _mm256_set1_ps(0x1p-126f), _CMP_LT_OQ);
    return _mm256_andnot_ps(_mm256_and_ps(tiny, abs_mask), x);
}

AI __m256 hi_half(__m256i v) { return _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)0xffff0000u))); }
AI __m256 lo_half(__m256i v) { return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)); }

/* One vdpbf16ps step on 8 lanes (inputs without BF16 denormals). */
AI __m256 dp8(__m256 acc, __m256i a, __m256i b) {
    acc = ftz(_mm256_fmadd_ps(hi_half(a), hi_half(b), acc));
    return ftz(_mm256_fmadd_ps(lo_half(a), lo_half(b), acc));
}

/* Lanes [8s, 8s + 8) of tokens [h, h + HALF) over kp pairs; rows past mr and lanes past nr are dropped. */
AI void ukr_part(int kp, const uint32_t *a, const uint32_t *b, float *c, size_t ldc, int mr, int nr, int accumulate,
                 const float *bias, int s, int h) {
    __m256 acc[HALF];
    float tmp[8];
    const int lanes = nr - 8 * s < 8 ? nr - 8 * s : 8;
    _Pragma("GCC unroll 6") for (int i = 0; i < HALF; i++) {
        acc[i] = _mm256_setzero_ps();
        if (accumulate && h + i < mr) {
            memset(tmp, 0, sizeof tmp);
            memcpy(tmp, c + (size_t)(h + i) * ldc + 8 * s, sizeof(float) * (size_t)lanes);
            acc[i] = _mm256_loadu_ps(tmp);
        }
    }
    for (int p = 0; p < kp; p++) {
        __m256i bv = _mm256_load_si256((const __m256i *)(b + (size_t)p * NR + 8 * s));
        __m256 bh = hi_half(bv), bl = lo_half(bv);
        const uint32_t *ap = a + (size_t)p * MR + h;
        _Pragma("GCC unroll 6") for (int i = 0; i < HALF; i++) {
            __m256i av = _mm256_set1_epi32((int)ap[i]);
            acc[i] = ftz(_mm256_fmadd_ps(hi_half(av), bh, acc[i]));
            acc[i] = ftz(_mm256_fmadd_ps(lo_half(av), bl, acc[i]));
        }
    }
    for (int i = 0; i < HALF && h + i < mr; i++) {
        _mm256_storeu_ps(tmp, acc[i]);
        float *ci = c + (size_t)(h + i) * ldc + 8 * s;
        for (int r = 0; r < lanes; r++) ci[r] = bias ? tmp[r] + bias[8 * s + r] : tmp[r];
    }
}

void nvlm_bf16_ukr_avx2(int kp, const uint32_t *a, const uint32_t *b, float *c, size_t ldc, int mr, int nr,
                        int accumulate, const float *bias) {
    for (int s = 0; s < NR / 8 && 8 * s < nr; s++)
        for (int h = 0; h < mr; h += HALF) ukr_part(kp, a, b, c, ldc, mr, nr, accumulate, bias, s, h);
}

/* 8 float32 (bits) to BF16 as nvlm_bf16_round: nearest even (quiet NaN kept), then a denormal
 * to a signed zero; the 8 results in the low 16 bits of each lane. */
AI __m256i round8(__m256i u) {
    __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    r = _mm256_blendv_epi8(r, _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40)), nan);
    __m256i den = _mm256_cmpeq_epi32(_mm256_and_si256(r, _mm256_set1_epi32(0x7f80)), _mm256_setzero_si256());
    return _mm256_andnot_si256(_mm256_and_si256(den, _mm256_set1_epi32(0x7fff)), r);
}

AI void store8(uint16_t *dst, __m256i r) {
    __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    _mm_storeu_si128((__m128i *)dst, _mm256_castsi256_si128(p));
}

void nvlm_bf16_row_avx2(uint16_t *dst, const void *src, nvlm_dtype t, int n) {
    const uint8_t *s = src;
    int i = 0;
    if (nvlm_dtype_is_block(t)) {
        nvlm_bf16_row_blocks(dst, src, t, n, nvlm_row_to_f32_avx2, nvlm_bf16_row_avx2);
        return;
    }
    if (t == NVLM_DT_F32)
        for (; i + 8 <= n; i += 8) store8(dst + i, round8(_mm256_loadu_si256((const __m256i *)(s + 4 * (size_t)i))));
    else if (t == NVLM_DT_F16)
        for (; i + 8 <= n; i += 8)
            store8(dst + i, round8(_mm256_castps_si256(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + 2 * (size_t)i))))));
    else if (t == NVLM_DT_BF16)
        for (; i + 16 <= n; i += 16) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(s + 2 * (size_t)i));
            __m256i den = _mm256_cmpeq_epi16(_mm256_and_si256(v, _mm256_set1_epi16(0x7f80)), _mm256_setzero_si256());
            _mm256_storeu_si256((__m256i *)(dst + i), _mm256_andnot_si256(_mm256_and_si256(den, _mm256_set1_epi16(0x7fff)), v));
        }
    if (i < n) nvlm_bf16_row_scalar(dst + i, s + (size_t)i * nvlm_dtype_size(t), t, n - i);
}

/* In-place transpose of the 8x8 dword block r[row][col]. */
AI void transpose8(__m256 r[8]) {
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20), r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20), r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31), r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31), r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

void nvlm_bf16_pairs_avx2(const uint16_t (*rows)[KC + 2], int kp, uint32_t *dst) {
    int p = 0;
    for (; p + 8 <= kp; p += 8)
        for (int h = 0; h < NR; h += 8) {
            __m256 r[8];
            for (int j = 0; j < 8; j++) r[j] = _mm256_loadu_ps((const float *)(rows[h + j] + 2 * p));
            transpose8(r);
            for (int j = 0; j < 8; j++) _mm256_storeu_ps((float *)(dst + (size_t)(p + j) * NR + h), r[j]);
        }
    for (; p < kp; p++)
        for (int r = 0; r < NR; r++) dst[(size_t)p * NR + r] = rows[r][2 * p] | (uint32_t)rows[r][2 * p + 1] << 16;
}

/* dst[p * MR + i] = dword p of row i (rows at row_len halves): 8 pairs of rows 0-7, then of
 * rows 8-11 (four zero rows beside them), per 8x8 transpose. */
void nvlm_bf16_sliver_avx2(const uint16_t *rows, size_t row_len, int kp, uint32_t *dst) {
    _Static_assert(MR == 12, "the sliver is transposed as 8 + 4 rows");
    int p = 0;
    for (; p + 8 <= kp; p += 8) {
        __m256 r[8], t[8];
        for (int j = 0; j < 8; j++) r[j] = _mm256_loadu_ps((const float *)(rows + (size_t)j * row_len + 2 * p));
        for (int j = 0; j < 8; j++)
            t[j] = j < 4 ? _mm256_loadu_ps((const float *)(rows + (size_t)(8 + j) * row_len + 2 * p)) : _mm256_setzero_ps();
        transpose8(r);
        transpose8(t);
        for (int j = 0; j < 8; j++) {
            _mm256_storeu_ps((float *)(dst + (size_t)(p + j) * MR), r[j]);
            _mm_storeu_ps((float *)(dst + (size_t)(p + j) * MR + 8), _mm256_castps256_ps128(t[j]));
        }
    }
    for (; p < kp; p++)
        for (int i = 0; i < MR; i++) memcpy(&dst[(size_t)p * MR + i], rows + (size_t)i * row_len + 2 * p, 4);
}

/* Raw inputs: BF16 denormals of a and b, and a denormal acc, to zero first (DAZ). */
void nvlm_dpbf16_avx2(float *acc, const uint32_t *a, const uint32_t *b, int n) {
    for (int i = 0; i + 8 <= n; i += 8) {
        __m256i v[2] = {_mm256_loadu_si256((const __m256i *)(a + i)), _mm256_loadu_si256((const __m256i *)(b + i))};
        for (int k = 0; k < 2; k++) {
            __m256i dh = _mm256_cmpeq_epi32(_mm256_and_si256(v[k], _mm256_set1_epi32(0x7f800000)), _mm256_setzero_si256());
            v[k] = _mm256_andnot_si256(_mm256_and_si256(dh, _mm256_set1_epi32(0x7fff0000)), v[k]);
            __m256i dl = _mm256_cmpeq_epi32(_mm256_and_si256(v[k], _mm256_set1_epi32(0x7f80)), _mm256_setzero_si256());
            v[k] = _mm256_andnot_si256(_mm256_and_si256(dl, _mm256_set1_epi32(0x7fff)), v[k]);
        }
        _mm256_storeu_ps(acc + i, dp8(ftz(_mm256_loadu_ps(acc + i)), v[0], v[1]));
    }
}
#pragma GCC pop_options
#endif
