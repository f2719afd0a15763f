/* math512.h - exp and erf on 16 float lanes: gemm_avx2.c's exp256 / erf256, the same operations
 * in the same order, so each lane gets the bits AVX2 gives it. Included by AVX-512 files after
 * their target pragma and <immintrin.h>. Internal. */
#ifndef NVLM_KERNELS_MATH512_H
#define NVLM_KERNELS_MATH512_H

#define M512_S(v) _mm512_set1_ps(v)

static inline __m512 exp512(__m512 x) { /* Cephes expf, as exp256 */
    x = _mm512_min_ps(_mm512_max_ps(x, M512_S(-87.3f)), M512_S(88.3f));
    __m512 fx = _mm512_floor_ps(_mm512_fmadd_ps(x, M512_S(1.44269504088896341f), M512_S(0.5f)));
    x = _mm512_fnmadd_ps(fx, M512_S(0.693359375f), x);
    x = _mm512_fnmadd_ps(fx, M512_S(-2.12194440e-4f), x);
    __m512 y = M512_S(1.9875691500E-4f);
    y = _mm512_fmadd_ps(y, x, M512_S(1.3981999507E-3f));
    y = _mm512_fmadd_ps(y, x, M512_S(8.3334519073E-3f));
    y = _mm512_fmadd_ps(y, x, M512_S(4.1665795894E-2f));
    y = _mm512_fmadd_ps(y, x, M512_S(1.6666665459E-1f));
    y = _mm512_fmadd_ps(y, x, M512_S(5.0000001201E-1f));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), _mm512_add_ps(x, M512_S(1.0f)));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(fx), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(y, _mm512_castsi512_ps(e));
}

static inline __m512 erf512(__m512 a) { /* Eigen's float erf, as erf256 */
    __m512 x = _mm512_min_ps(_mm512_max_ps(a, M512_S(-4.0f)), M512_S(4.0f));
    __m512 x2 = _mm512_mul_ps(x, x);
    __m512 p = M512_S(-2.72614225801306e-10f);
    p = _mm512_fmadd_ps(p, x2, M512_S(2.77068142495902e-08f));
    p = _mm512_fmadd_ps(p, x2, M512_S(-2.10102402082508e-06f));
    p = _mm512_fmadd_ps(p, x2, M512_S(-5.69250639462346e-05f));
    p = _mm512_fmadd_ps(p, x2, M512_S(-7.34990630326855e-04f));
    p = _mm512_fmadd_ps(p, x2, M512_S(-2.95459980854025e-03f));
    p = _mm512_fmadd_ps(p, x2, M512_S(-1.60960333262415e-02f));
    p = _mm512_mul_ps(p, x);
    __m512 q = M512_S(-1.45660718464996e-05f);
    q = _mm512_fmadd_ps(q, x2, M512_S(-2.13374055278905e-04f));
    q = _mm512_fmadd_ps(q, x2, M512_S(-1.68282697438203e-03f));
    q = _mm512_fmadd_ps(q, x2, M512_S(-7.37332916720468e-03f));
    q = _mm512_fmadd_ps(q, x2, M512_S(-1.42647390514189e-02f));
    return _mm512_div_ps(p, q);
}

#undef M512_S
#endif
