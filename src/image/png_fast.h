/* png_fast.h - the fast path of the PNG decoder (decode_png.c). Internal.
 *
 * libpng parses everything up to the first IDAT (so every header decision stays libpng's);
 * then, for a non-interlaced image, png_fast_rows gathers the IDAT chunks, inflates them in
 * one call with libdeflate and unfilters the rows itself. It only finishes when the data is
 * beyond doubt - every chunk it needs complete, the zlib stream valid to its checksum and of
 * exactly the image's size, every filter type known - which are the cases where libpng's
 * row-by-row reading would succeed with the same bytes. Anything else returns "not taken"
 * and the caller goes on with libpng, which then gives its own result or error. */
#ifndef NVLM_IMAGE_PNG_FAST_H
#define NVLM_IMAGE_PNG_FAST_H
#include "nvlm.h"
#include <stddef.h>
#include <stdint.h>

/* Converts one unfiltered row (libpng's layout: samples below 8 bits unpacked to a byte
 * each, 16-bit samples big-endian) to w RGB pixels. */
typedef void (*png_row_fn)(const void *ctx, const uint8_t *in, uint8_t *out, int w);

typedef struct png_fast_job {
    const uint8_t *data;
    size_t len;
    size_t idat;           /* offset of the first IDAT's data (libpng's position after the
                              header chunks; its length and name are the 8 bytes before) */
    uint32_t w, h;
    int bit_depth, color_type;
    png_row_fn to_rgb;     /* NULL: the unfiltered row is already RGB (8-bit RGB) */
    const void *ctx;
    uint8_t *rgb;          /* w*h*3 output */
    /* told the count of final rows of img as they are ready (may be NULL) */
    const nvlm_image *img;
    void (*rows_done)(void *user, const nvlm_image *img, int rows);
    void *user;
} png_fast_job;

/* 1: the image is in job->rgb; 0: not taken (use libpng; rgb may be partly written). */
int png_fast_rows(const png_fast_job *job);

/* Unfilters one row of n bytes, bpp bytes per complete pixel (1..8): out from the filtered
 * bytes in and the previous unfiltered row prior (zeros for the first row). filter 0..4. */
void png_unfilter_row(int filter, const uint8_t *in, const uint8_t *prior, uint8_t *out,
                      size_t n, size_t bpp);
/* The same with at most the given kernels (tests run each): bytes only, SSE2, SSE4.1. */
enum { PNG_ISA_BYTES = 0, PNG_ISA_SSE2 = 1, PNG_ISA_SSE41 = 2 };
void png_unfilter_row_isa(int filter, const uint8_t *in, const uint8_t *prior, uint8_t *out,
                          size_t n, size_t bpp, int isa);
#endif
