/* dtype.h - the weight formats' traits: one table (dtype.c) that says, per nvlm_dtype, its
 * safetensors name, block geometry, byte sizes and scalar converters. Everything that sizes,
 * names, converts or dispatches on a format asks the table, so a new format is one new row
 * (and its converters), and a format the SIMD kernels do not know takes the scalar path
 * instead of being decoded as another one. Internal. */
#ifndef NVLM_KERNELS_DTYPE_H
#define NVLM_KERNELS_DTYPE_H
#include "kernels/qblock.h"
#include "model/safetensors.h"
#include <stddef.h>
#include <stdint.h>

typedef struct nvlm_dtype_traits {
    const char *name;     /* the safetensors dtype string */
    int block;            /* values per block: 1 for element formats, NVLM_QK for block formats */
    size_t block_bytes;   /* bytes per block (per value for element formats) */
    int scales;           /* block formats: the f16 values that open each block (scale, minimum) */
    int simd;             /* the AVX2 and NEON kernels decode this format; else the scalar path */
    int packed;           /* the layout an engine packs it into for generation (kernels/ops.h
                           * NVLM_WL_*, kernels/wpack.h); NVLM_WL_ROWS (0): none */
    /* n values to float32 (src may be unaligned) and back (rounded to nearest even, or quantized) */
    void (*to_f32)(float *dst, const void *src, int n);
    void (*from_f32)(const float *x, void *dst, int n);
    /* block formats: sum of w * x over a row, x quantized activations (scalar reference); NULL
     * for element formats */
    float (*vec_dot_q)(const void *w, const nvlm_block_q8a *x, int n);
} nvlm_dtype_traits;

/* The traits of t; NULL when t is no format (out of range). */
const nvlm_dtype_traits *nvlm_dtype_traits_of(nvlm_dtype t);
/* The format named s (a safetensors dtype string); -1 when unknown. */
int nvlm_dtype_parse(const char *s, nvlm_dtype *out);
#endif
