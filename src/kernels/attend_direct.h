/* attend_direct.h - attention for 1-3 queries (generation): scores straight from the key rows,
 * softmax, then O = sum_j p_j v_j with the value rows read in place. Packing every key and value
 * for one query (the many-query path) moved 14x the cache per layer of a Qwen2-0.5B step and
 * cost a third of its time.
 *
 * The driver is the same for every SIMD level; the file that includes this defines, before the
 * #include, its own static kernels:
 *   dots(nk, q, k, ks, d, S)          S[r] = q . k_r for nk (8, or 1) key rows ks floats apart
 *   softmax_row(s, n, n_zero, scale)  s[0:n] = softmax(scale * s), s[n:n_zero] = 0
 *   weighted_rows(S, n, v, vs, d, o)  o[0:d] = sum_j S[j] v_j over n value rows
 * Internal. */
#ifndef NVLM_KERNELS_ATTEND_DIRECT_H
#define NVLM_KERNELS_ATTEND_DIRECT_H
#include <stddef.h>
#include <string.h>

static void attend_direct(const float *q, size_t q_stride, int n_q, const float *k, size_t k_stride, const float *v,
                          size_t v_stride, int n_keys, int causal_pos0, int d, float scale, float *out,
                          size_t out_stride, float *S) {
    for (int i = 0; i < n_q; i++) {
        const float *qi = q + (size_t)i * q_stride;
        float *oi = out + (size_t)i * out_stride;
        int len = causal_pos0 < 0 ? n_keys : causal_pos0 + i + 1;
        if (len > n_keys) len = n_keys;
        if (len <= 0) {
            memset(oi, 0, sizeof(float) * (size_t)d);
            continue;
        }
        int j = 0;
        for (; j + 8 <= len; j += 8) dots(8, qi, k + (size_t)j * k_stride, k_stride, d, S + j);
        for (; j < len; j++) dots(1, qi, k + (size_t)j * k_stride, k_stride, d, S + j);
        softmax_row(S, len, len, scale);
        weighted_rows(S, len, v, v_stride, d, oi);
    }
}
#endif
