/* AVX-512 GELU and SiLU: gemm_avx2.c's erf and exp approximations on 16 lanes, the same
 * operations in the same order, so the same bits as nvlm_gelu_avx2 / nvlm_silu_mul_avx2 (the
 * n % 16 rest goes to them: their 8-lane body and scalar tail split it as they would). */
#include "kernels/simd512.h"
#ifdef NVLM_HAVE_AVX512_KERNELS
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#include <immintrin.h>

#include "kernels/math512.h"

#define S(v) _mm512_set1_ps(v)

void nvlm_gelu_avx512(float *x, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        __m512 e = erf512(_mm512_mul_ps(v, S(0.70710678118654752f)));
        _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_mul_ps(S(0.5f), v), _mm512_add_ps(S(1.0f), e)));
    }
    if (i < n) nvlm_gelu_avx2(x + i, n - i);
}

void nvlm_silu_mul_avx512(float *a, const float *b, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(a + i);
        __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), v));
        __m512 s = _mm512_div_ps(v, _mm512_add_ps(S(1.0f), e));
        _mm512_storeu_ps(a + i, _mm512_mul_ps(s, _mm512_loadu_ps(b + i)));
    }
    if (i < n) nvlm_silu_mul_avx2(a + i, b + i, n - i);
}
#pragma GCC pop_options
#endif
