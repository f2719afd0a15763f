/* decode.h - the image decoders behind nvlm_image_decode. Internal.
 *
 * Each decoder turns a whole file held in memory into 8-bit RGB exactly as Pillow 9.4's
 * Image.open(f).convert('RGB') does (see docs/images.md for the per-format rules). A decoder
 * never reads outside [data, data+len), refuses truncated or corrupt input with NVLM_E_FORMAT,
 * refuses images over max_pixels with NVLM_E_LIMIT before allocating them, and on failure
 * leaves *out zeroed. Messages start with the format name ("PNG: ..."). */
#ifndef NVLM_IMAGE_DECODE_H
#define NVLM_IMAGE_DECODE_H
#include "nvlm.h"
#include <stddef.h>
#include <stdint.h>

typedef enum img_format {
    IMG_UNKNOWN = 0,
    IMG_JPEG,
    IMG_PNG,
    IMG_WEBP,
    IMG_GIF,
    IMG_BMP
} img_format;

/* What a decode may be told and may tell (img_decode_ctl). */
typedef struct img_ctl {
    uint64_t max_pixels;
    int png_libpng_only;  /* never the PNG fast path (the tests compare both ways) */
    int png_fast_taken;   /* out: 1 when the PNG fast path made the image */
    /* Optional, for a consumer running alongside the decoder. JPEG and PNG call
     * rows_done(user, img, 0) once the image buffer exists, then with the count of final
     * rows as it grows (other formats never call it: the image is whole on return); on a
     * failure after the first call, rows_done(user, img, -1) comes before the buffer is
     * freed, and must not return while the consumer still reads it. */
    void (*rows_done)(void *user, const nvlm_image *img, int rows);
    void *user;
} img_ctl;

/* Format named by the first bytes (Pillow's _accept checks), IMG_UNKNOWN if none. */
img_format img_sniff(const uint8_t *data, size_t len);
const char *img_format_name(img_format f);

/* The format (IMG_UNKNOWN if none) and the decoded size its header announces. *exact is 1
 * when the decoder allocates exactly w x h pixels (PNG, JPEG, WebP, BMP); 0 when the size is
 * a hint or unknown (GIF: a first frame may overhang the canvas; a JPEG without a frame
 * header yet), and the caller must assume the pixel limit. Nothing is decoded. */
int img_probe(const uint8_t *data, size_t len, uint64_t *w, uint64_t *h, int *exact);

/* Decodes with one given decoder (no sniffing): what the fuzz targets call. */
int img_decode_as(img_format f, const uint8_t *data, size_t len, uint64_t max_pixels,
                  nvlm_image *out, nvlm_err *err);

/* nvlm_image_decode with a control block: sniffing, then the decoder. */
int img_decode_buf(const uint8_t *data, size_t len, img_ctl *ctl, nvlm_image *out,
                   nvlm_err *err);

/* The same with a control block (max_pixels 0 means the default). */
int img_decode_ctl(img_format f, const uint8_t *data, size_t len, img_ctl *ctl, nvlm_image *out,
                   nvlm_err *err);

int img_decode_jpeg(const uint8_t *data, size_t len, img_ctl *ctl, nvlm_image *out,
                    nvlm_err *err);
int img_decode_png(const uint8_t *data, size_t len, img_ctl *ctl, nvlm_image *out,
                   nvlm_err *err);
int img_decode_webp(const uint8_t *data, size_t len, uint64_t max_pixels, nvlm_image *out,
                    nvlm_err *err);
int img_decode_gif(const uint8_t *data, size_t len, uint64_t max_pixels, nvlm_image *out,
                   nvlm_err *err);
int img_decode_bmp(const uint8_t *data, size_t len, uint64_t max_pixels, nvlm_image *out,
                   nvlm_err *err);

/* Checks a decoded size against the limits (zero-sized, over max_pixels, over INT_MAX) and
 * allocates out->rgb (zero-filled when zero is set). fmt names the format in messages. */
int img_alloc(const char *fmt, uint64_t width, uint64_t height, uint64_t max_pixels, int zero,
              nvlm_image *out, nvlm_err *err);

/* Pillow's decompression-bomb error bound: 2 * Image.MAX_IMAGE_PIXELS. */
#define IMG_DEFAULT_MAX_PIXELS (2ull * 89478485ull)
#endif
