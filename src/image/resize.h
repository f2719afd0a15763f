/* resize.h - Pillow 9.4's BICUBIC resample on 8-bit RGB, bit-exact. Internal.
 *
 * Pillow's algorithm (src/libImaging/Resample.c): per axis, double-precision bicubic weights
 * (a = -0.5) whose support grows with the reduction factor, normalised by their sum and
 * rounded to 22-bit fixed point; a horizontal pass first, on only the rows the vertical pass
 * reads, rounded and clipped to 8 bits; then the vertical pass. A pass whose size does not
 * change is skipped. Our kernels compute exactly the same integer sums, vectorised. */
#ifndef NVLM_IMAGE_RESIZE_H
#define NVLM_IMAGE_RESIZE_H
#include "nvlm.h"
#include <stdint.h>

/* One axis of fixed-point weights: output i reads taps n[i] inputs from xmin[i]. */
typedef struct rs_axis {
    int in, out, ksize;
    int *xmin, *n;
    int32_t *k; /* out * ksize, zero past n[i] */
} rs_axis;

int rs_axis_init(rs_axis *a, int in, int out, nvlm_err *err);
void rs_axis_free(rs_axis *a);

/* Receives output row y of output `job` (ow*3 bytes, valid during the call only). */
typedef void (*rs_emit_fn)(void *user, int job, int y, const uint8_t *row);

/* Resizes one RGB8 image to n sizes at once, handing each output row to emit as soon as it
 * is ready (rows of one output come in order; outputs interleave). The horizontal passes
 * share one read of the source. simd = 0 forces the portable kernels. */
int rs_resize_stream(const uint8_t *src, int w, int h, int n, const int *ow, const int *oh,
                     rs_emit_fn emit, void *user, int simd, nvlm_err *err);

/* Options of rs_resize_stream_ex. */
typedef struct rs_opts {
    int simd;                      /* 0 forces the portable kernels */
    const int *row_from, *row_to;  /* per output: only rows [from, to) (NULL: all rows); the
                                      bytes of a row do not depend on the range */
    /* Called before source rows [0, rows) are read (rows only grow); nonzero aborts the
     * resize with NVLM_E_CANCELLED. For a source still being decoded. NULL: all there. */
    int (*wait_rows)(void *user, int rows);
    void *wait_user;
} rs_opts;

int rs_resize_stream_ex(const uint8_t *src, int w, int h, int n, const int *ow, const int *oh,
                        rs_emit_fn emit, void *user, const rs_opts *o, nvlm_err *err);

/* Resizes one RGB8 image to several sizes at once (the horizontal passes share the work of
 * reading the source). outs[i] must hold ow[i]*oh[i]*3 bytes. */
int rs_resize_many(const uint8_t *src, int w, int h, int n, const int *ow, const int *oh,
                   uint8_t *const *outs, nvlm_err *err);
/* The same; simd = 0 forces the portable kernels (tests compare both). */
int rs_resize_many_ex(const uint8_t *src, int w, int h, int n, const int *ow, const int *oh,
                      uint8_t *const *outs, int simd, nvlm_err *err);
#endif
