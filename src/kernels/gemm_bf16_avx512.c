/* AVX512-BF16 micro-kernel of the bf16 compute mode (gemm_bf16.h): a 12 x 32 tile in 24 zmm
 * accumulators; per K pair two loads of the packed panel and, per token, one broadcast dword of
 * the packed sliver into two vdpbf16ps (the broadcast is folded into the instruction's memory
 * operand). vdpbf16ps ignores MXCSR (round to nearest even, DAZ, FTZ), which is what the scalar
 * reference (nvlm_dpbf16) and the AVX2 emulation compute. */
#include "kernels/gemm_bf16.h"
#include "kernels/simd512.h"
#ifdef NVLM_HAVE_BF16_X86
#include <immintrin.h>

/* ---- AVX-512 (F/BW), no BF16 instruction: the rounding of float32 rows ---- */
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")

/* nvlm_bf16_row_avx2's round8 on 16 lanes: nearest even (a NaN kept quiet), then a BF16
 * denormal to a zero of its sign; the results packed to 16 halves. */
static inline __m256i round16(__m512i u) {
    const __mmask16 nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
    const __mmask16 den = _mm512_testn_epi32_mask(r, _mm512_set1_epi32(0x7f80));
    r = _mm512_mask_and_epi32(r, den, r, _mm512_set1_epi32(0x8000));
    return _mm512_cvtepi32_epi16(r);
}

void nvlm_bf16_row_avx512(uint16_t *dst, const void *src, nvlm_dtype t, int n) {
    if (nvlm_dtype_is_block(t)) {
        nvlm_bf16_row_blocks(dst, src, t, n, nvlm_row_to_f32_avx512, nvlm_bf16_row_avx512);
        return;
    }
    if (t != NVLM_DT_F32) {
        nvlm_bf16_row_avx2(dst, src, t, n);
        return;
    }
    const float *s = src;
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm256_storeu_si256((__m256i *)(dst + i), round16(_mm512_loadu_si512(s + i)));
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm256_mask_storeu_epi16(dst + i, m, round16(_mm512_maskz_loadu_epi32(m, s + i)));
    }
}
#pragma GCC pop_options

/* ---- AVX512-BF16 ---- */
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")

enum { MR = NVLM_BF16_MR, NR = NVLM_BF16_NR, PF = 8 /* pairs of B prefetched ahead (1 KiB) */ };

#define DP(acc, a, b) _mm512_dpbf16_ps((acc), (__m512bh)(a), (__m512bh)(b))

void nvlm_bf16_ukr_avx512(int kp, const uint32_t *a, const uint32_t *b, float *c, size_t ldc, int mr, int nr,
                          int accumulate, const float *bias) {
    const __mmask16 m0 = (__mmask16)(nr >= 16 ? 0xffff : (1u << nr) - 1);
    const __mmask16 m1 = (__mmask16)(nr >= 32 ? 0xffff : nr <= 16 ? 0 : (1u << (nr - 16)) - 1);
    __m512 acc[MR][2];
    _Pragma("GCC unroll 12") for (int i = 0; i < MR; i++) {
        acc[i][0] = acc[i][1] = _mm512_setzero_ps();
        if (accumulate && i < mr) {
            acc[i][0] = _mm512_maskz_loadu_ps(m0, c + (size_t)i * ldc);
            acc[i][1] = _mm512_maskz_loadu_ps(m1, c + (size_t)i * ldc + 16);
        }
    }
    for (int p = 0; p < kp; p++) {
        const uint32_t *bp = b + (size_t)p * NR, *ap = a + (size_t)p * MR;
        _mm_prefetch((const char *)(bp + PF * NR), _MM_HINT_T0);
        _mm_prefetch((const char *)(bp + PF * NR + 16), _MM_HINT_T0);
        const __m512i b0 = _mm512_load_si512(bp), b1 = _mm512_load_si512(bp + 16);
        _Pragma("GCC unroll 12") for (int i = 0; i < MR; i++) {
            const __m512i av = _mm512_set1_epi32((int)ap[i]);
            acc[i][0] = DP(acc[i][0], av, b0);
            acc[i][1] = DP(acc[i][1], av, b1);
        }
    }
    const __m512 bias0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
    const __m512 bias1 = bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();
    _Pragma("GCC unroll 12") for (int i = 0; i < MR; i++) {
        if (i >= mr) break;
        __m512 r0 = acc[i][0], r1 = acc[i][1];
        if (bias) r0 = _mm512_add_ps(r0, bias0), r1 = _mm512_add_ps(r1, bias1);
        _mm512_mask_storeu_ps(c + (size_t)i * ldc, m0, r0);
        _mm512_mask_storeu_ps(c + (size_t)i * ldc + 16, m1, r1);
    }
}

void nvlm_dpbf16_avx512(float *acc, const uint32_t *a, const uint32_t *b, int n) {
    for (int i = 0; i + 16 <= n; i += 16)
        _mm512_storeu_ps(acc + i, DP(_mm512_loadu_ps(acc + i), _mm512_loadu_si512(a + i), _mm512_loadu_si512(b + i)));
}
#pragma GCC pop_options
#endif
