/* Conversions between float32 and the 16-bit storage formats. */
#include "kernels/ops.h"
#include <math.h>
#include <string.h>

float nvlm_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t nvlm_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

uint16_t nvlm_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t au = u & 0x7fffffffu;
    if (au > 0x7f800000u) return sign | 0x7e00;               /* NaN */
    if (au >= 0x477ff000u) return sign | 0x7c00;              /* overflow to inf (>= 65520) */
    if (au < 0x38800000u) {                                   /* subnormal or zero in f16 */
        if (au < 0x33000000u) return sign;                    /* < half the smallest subnormal */
        uint32_t man = (au & 0x7fffff) | 0x800000;
        int shift = 126 - (int)(au >> 23);                    /* 14..24 */
        uint32_t half = man >> shift, rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return sign | (uint16_t)half;
    }
    uint32_t r = au + 0xfffu + ((au >> 13) & 1);              /* round to nearest even */
    return sign | (uint16_t)((r - 0x38000000u) >> 13);
}

void nvlm_to_f32(float *dst, const void *src, nvlm_dtype dtype, size_t n) {
    switch (dtype) {
    case NVLM_DT_F32:
        memcpy(dst, src, n * 4);
        break;
    case NVLM_DT_BF16: {
        const uint8_t *s = src;
        for (size_t i = 0; i < n; i++) {
            uint16_t b;
            memcpy(&b, s + 2 * i, 2);
            dst[i] = nvlm_bf16_to_f32(b);
        }
        break;
    }
    case NVLM_DT_F16: {
        const uint8_t *s = src;
        for (size_t i = 0; i < n; i++) {
            uint16_t b;
            memcpy(&b, s + 2 * i, 2);
            dst[i] = nvlm_f16_to_f32(b);
        }
        break;
    }
    default: /* block formats are expanded by their own kernels */
        for (size_t i = 0; i < n; i++) dst[i] = NAN;
        break;
    }
}
