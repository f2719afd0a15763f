#include "model/finite.h"
#include "core/err.h"
#include "kernels/dtype.h"
#include <string.h>

int nvlm_all_finite(const float *x, size_t n) {
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, x + i, 4);
        bad |= (u & 0x7f800000u) == 0x7f800000u;
    }
    return !bad;
}

int nvlm_fail_nonfinite(nvlm_err *err, const char *where) {
    return nvlm_fail(err, NVLM_E_NUMERIC,
                     "the model produced non-finite values (NaN or Inf) in the output of %s; its weights are "
                     "damaged or out of range (find the tensor with: nvlm info --model DIR --check-weights)",
                     where);
}

/* Block formats: the f16 scale (and minimum) of each block; the index of the block's first weight. */
static int64_t first_bad_block(const nvlm_tensor *t) {
    const nvlm_dtype_traits *tr = nvlm_dtype_traits_of(t->dtype);
    size_t block = tr->block_bytes, n_scales = (size_t)tr->scales;
    const uint8_t *p = t->data;
    for (uint64_t b = 0; b < t->nbytes / block; b++)
        for (size_t k = 0; k < n_scales; k++) {
            uint16_t u;
            memcpy(&u, p + b * block + 2 * k, 2);
            if ((u & 0x7c00u) == 0x7c00u) return (int64_t)(b * 32);
        }
    return -1;
}

int64_t nvlm_tensor_first_nonfinite(const nvlm_tensor *t) {
    if (nvlm_dtype_is_block(t->dtype)) return first_bad_block(t);
    const uint8_t *p = t->data;
    for (int64_t i = 0; i < t->numel; i++) {
        int bad;
        if (t->dtype == NVLM_DT_F32) {
            uint32_t u;
            memcpy(&u, p + 4 * i, 4);
            bad = (u & 0x7f800000u) == 0x7f800000u;
        } else if (t->dtype == NVLM_DT_F16) {
            uint16_t u;
            memcpy(&u, p + 2 * i, 2);
            bad = (u & 0x7c00u) == 0x7c00u;
        } else if (t->dtype == NVLM_DT_BF16) {
            uint16_t u;
            memcpy(&u, p + 2 * i, 2);
            bad = (u & 0x7f80u) == 0x7f80u;
        } else {
            return -1;
        }
        if (bad) return i;
    }
    return -1;
}
