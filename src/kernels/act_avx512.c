/* AVX-512 GELU and SiLU: gemm_avx2.c's erf and exp approximations on 16 lanes, the same
 * operations in the same order, so the same bits as nvlm_gelu_avx2 / nvlm_silu_mul_avx2 (the
 * n % 16 rest goes to them: their 8-lane body and scalar tail split it as they would). */
#include "kernels/simd512.h"
#ifdef NVLM_HAVE_AVX512_KERNELS
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#include <immintrin.h>

#define S(v) _mm512_set1_ps(v)

static inline __m512 exp512(__m512 x) { /* Cephes expf, as exp256 */
    x = _mm512_min_ps(_mm512_max_ps(x, S(-87.3f)), S(88.3f));
    __m512 fx = _mm512_floor_ps(_mm512_fmadd_ps(x, S(1.44269504088896341f), S(0.5f)));
    x = _mm512_fnmadd_ps(fx, S(0.693359375f), x);
    x = _mm512_fnmadd_ps(fx, S(-2.12194440e-4f), x);
    __m512 y = S(1.9875691500E-4f);
    y = _mm512_fmadd_ps(y, x, S(1.3981999507E-3f));
    y = _mm512_fmadd_ps(y, x, S(8.3334519073E-3f));
    y = _mm512_fmadd_ps(y, x, S(4.1665795894E-2f));
    y = _mm512_fmadd_ps(y, x, S(1.6666665459E-1f));
    y = _mm512_fmadd_ps(y, x, S(5.0000001201E-1f));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), _mm512_add_ps(x, S(1.0f)));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(fx), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(y, _mm512_castsi512_ps(e));
}

static inline __m512 erf512(__m512 a) { /* Eigen's float erf, as erf256 */
    __m512 x = _mm512_min_ps(_mm512_max_ps(a, S(-4.0f)), S(4.0f));
    __m512 x2 = _mm512_mul_ps(x, x);
    __m512 p = S(-2.72614225801306e-10f);
    p = _mm512_fmadd_ps(p, x2, S(2.77068142495902e-08f));
    p = _mm512_fmadd_ps(p, x2, S(-2.10102402082508e-06f));
    p = _mm512_fmadd_ps(p, x2, S(-5.69250639462346e-05f));
    p = _mm512_fmadd_ps(p, x2, S(-7.34990630326855e-04f));
    p = _mm512_fmadd_ps(p, x2, S(-2.95459980854025e-03f));
    p = _mm512_fmadd_ps(p, x2, S(-1.60960333262415e-02f));
    p = _mm512_mul_ps(p, x);
    __m512 q = S(-1.45660718464996e-05f);
    q = _mm512_fmadd_ps(q, x2, S(-2.13374055278905e-04f));
    q = _mm512_fmadd_ps(q, x2, S(-1.68282697438203e-03f));
    q = _mm512_fmadd_ps(q, x2, S(-7.37332916720468e-03f));
    q = _mm512_fmadd_ps(q, x2, S(-1.42647390514189e-02f));
    return _mm512_div_ps(p, q);
}

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
