/* decode_png.c - PNG through libpng, converted as Pillow 9.4's PngImagePlugin + convert('RGB'):
 *   gray 1/2/4/8 bit: scaled to 8 bits (x255, x85, x17, x1), replicated to RGB;
 *   gray 16 bit: Pillow mode "I", convert clips the 16-bit value to 0..255 (no scaling);
 *   RGB/RGBA/gray+alpha 16 bit: the high byte; alpha is dropped, never composited;
 *   palette: Pillow's palette starts as a gray ramp, so an index past the PLTE entries
 *   gives (i, i, i); tRNS, gAMA, iCCP, sRGB and sBIT are all ignored.
 * CRCs: Pillow checks the CRC of every chunk before the image data but never the IDAT CRC,
 * so we error on bad CRCs up to the first IDAT and use IDAT data whatever its CRC.
 * Truncated files (the zlib stream or IDAT chunks end before the last row) are errors. */
#include "image/decode.h"
#include "image/png_fast.h"
#include "core/err.h"
#include <png.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

typedef struct png_src {
    const uint8_t *data;
    size_t len, pos;
    int truncated;
    int announced; /* ctl->rows_done was told about the image buffer */
    char msg[256];
} png_src;

static void on_read(png_structp png, png_bytep dst, size_t n) {
    png_src *s = png_get_io_ptr(png);
    if (n > s->len - s->pos) {
        s->truncated = 1;
        png_error(png, "image file is truncated");
    }
    memcpy(dst, s->data + s->pos, n);
    s->pos += n;
}

static void on_error(png_structp png, png_const_charp msg) {
    png_src *s = png_get_error_ptr(png);
    snprintf(s->msg, sizeof s->msg, "%s", msg ? msg : "error");
    png_longjmp(png, 1);
}

static void on_warning(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg; /* warnings are not errors for Pillow either */
}

/* One decoded row (libpng's layout after png_set_packing) to RGB. */
typedef struct png_layout {
    int color_type, bit_depth;
    uint8_t pal[256 * 3]; /* gray ramp, overwritten by PLTE entries */
} png_layout;

static void row_to_rgb(const void *ctx, const uint8_t *in, uint8_t *out, int w) {
    const png_layout *L = ctx;
    int ct = L->color_type, bd = L->bit_depth;
    int x;
    switch (ct) {
    case PNG_COLOR_TYPE_GRAY:
        if (bd == 16) {
            for (x = 0; x < w; x++, out += 3) {
                unsigned v = (unsigned)in[2 * x] << 8 | in[2 * x + 1];
                out[0] = out[1] = out[2] = (uint8_t)(v > 255 ? 255 : v);
            }
        } else {
            int mul = bd == 1 ? 255 : bd == 2 ? 85 : bd == 4 ? 17 : 1;
            for (x = 0; x < w; x++, out += 3) out[0] = out[1] = out[2] = (uint8_t)(in[x] * mul);
        }
        break;
    case PNG_COLOR_TYPE_GRAY_ALPHA: {
        int step = bd == 16 ? 4 : 2; /* high byte of the gray sample either way */
        for (x = 0; x < w; x++, out += 3) out[0] = out[1] = out[2] = in[x * step];
        break;
    }
    case PNG_COLOR_TYPE_RGB:
        if (bd == 8) {
            memcpy(out, in, (size_t)w * 3);
        } else {
            for (x = 0; x < w; x++, out += 3, in += 6) {
                out[0] = in[0];
                out[1] = in[2];
                out[2] = in[4];
            }
        }
        break;
    case PNG_COLOR_TYPE_RGB_ALPHA: {
        int step = bd == 16 ? 2 : 1;
        for (x = 0; x < w; x++, out += 3, in += 4 * step) {
            out[0] = in[0];
            out[1] = in[step];
            out[2] = in[2 * step];
        }
        break;
    }
    case PNG_COLOR_TYPE_PALETTE:
        for (x = 0; x < w; x++, out += 3) memcpy(out, L->pal + 3 * in[x], 3);
        break;
    }
}

/* The fast path (png_fast.h) for a non-interlaced image; 1 when it made the image. */
static int try_fast(const png_src *s, const png_layout *L, img_ctl *ctl, nvlm_image *img) {
    png_fast_job j;
    memset(&j, 0, sizeof j);
    j.data = s->data;
    j.len = s->len;
    j.idat = s->pos;
    j.w = (uint32_t)img->width;
    j.h = (uint32_t)img->height;
    j.bit_depth = L->bit_depth;
    j.color_type = L->color_type;
    j.to_rgb = L->color_type == PNG_COLOR_TYPE_RGB && L->bit_depth == 8 ? NULL : row_to_rgb;
    j.ctx = L;
    j.rgb = img->rgb;
    j.img = img;
    j.rows_done = ctl->rows_done;
    j.user = ctl->user;
    return png_fast_rows(&j);
}

static int decode_body(png_structp png, png_infop info, png_src *src, img_ctl *ctl,
                       nvlm_image *img, uint8_t **buf, nvlm_err *err) {
    png_layout L;
    png_uint_32 w, h;
    int bd, ct, il;

    png_read_info(png, info);
    png_get_IHDR(png, info, &w, &h, &bd, &ct, &il, NULL, NULL);
    /* from here on (the IDAT chunks and what follows) CRCs are not checked, as in Pillow */
    png_set_crc_action(png, PNG_CRC_QUIET_USE, PNG_CRC_QUIET_USE);
    L.color_type = ct;
    L.bit_depth = bd;
    for (int i = 0; i < 256; i++) L.pal[3 * i] = L.pal[3 * i + 1] = L.pal[3 * i + 2] = (uint8_t)i;
    if (ct == PNG_COLOR_TYPE_PALETTE) {
        png_colorp pal = NULL;
        int n = 0;
        if (!png_get_PLTE(png, info, &pal, &n) || !pal)
            return nvlm_fail(err, NVLM_E_FORMAT, "PNG: palette image without a PLTE chunk");
        for (int i = 0; i < n && i < 256; i++) {
            L.pal[3 * i] = pal[i].red;
            L.pal[3 * i + 1] = pal[i].green;
            L.pal[3 * i + 2] = pal[i].blue;
        }
    }
    int rc = img_alloc("PNG", w, h, ctl->max_pixels, 0, img, err);
    if (rc != NVLM_OK) return rc;
    if (ctl->rows_done) {
        src->announced = 1;
        ctl->rows_done(ctl->user, img, 0);
    }
    if (il == PNG_INTERLACE_NONE && !ctl->png_libpng_only && try_fast(src, &L, ctl, img)) {
        ctl->png_fast_taken = 1;
        return NVLM_OK;
    }
    if (bd < 8) png_set_packing(png); /* one byte per sample, value unscaled */
    int passes = png_set_interlace_handling(png);
    png_read_update_info(png, info);
    size_t rowbytes = png_get_rowbytes(png, info);
    if (rowbytes == 0 || rowbytes > SIZE_MAX / h)
        return nvlm_fail(err, NVLM_E_LIMIT, "PNG: row size overflow");
    if (passes > 1) {
        /* Adam7: libpng merges the passes into a whole image; one block holds the row
         * pointers and the pixels so that a longjmp leaks nothing */
        size_t ptrbytes = sizeof(png_bytep) * h;
        if (rowbytes > (SIZE_MAX - ptrbytes) / h)
            return nvlm_fail(err, NVLM_E_LIMIT, "PNG: image too large");
        *buf = malloc(ptrbytes + rowbytes * h);
        if (!*buf) return nvlm_fail(err, NVLM_E_NOMEM, "PNG: out of memory");
        png_bytepp rows = (png_bytepp)(void *)*buf;
        uint8_t *pix = *buf + ptrbytes;
        for (png_uint_32 y = 0; y < h; y++) rows[y] = pix + rowbytes * y;
        png_read_image(png, rows);
        for (png_uint_32 y = 0; y < h; y++)
            row_to_rgb(&L, rows[y], img->rgb + (size_t)y * w * 3, (int)w);
        if (ctl->rows_done) ctl->rows_done(ctl->user, img, (int)h);
    } else {
        int direct = ct == PNG_COLOR_TYPE_RGB && bd == 8;
        if (!direct) {
            *buf = malloc(rowbytes);
            if (!*buf) return nvlm_fail(err, NVLM_E_NOMEM, "PNG: out of memory");
        }
        for (png_uint_32 y = 0; y < h; y++) {
            uint8_t *dst = img->rgb + (size_t)y * w * 3;
            png_read_row(png, direct ? dst : *buf, NULL);
            if (!direct) row_to_rgb(&L, *buf, dst, (int)w);
            if (ctl->rows_done) ctl->rows_done(ctl->user, img, (int)y + 1);
        }
    }
    /* No png_read_end: Pillow stops reading once the image is complete. */
    return NVLM_OK;
}

int img_decode_png(const uint8_t *data, size_t len, img_ctl *ctl, nvlm_image *out,
                   nvlm_err *err) {
    png_src src = {data, len, 0, 0, 0, {0}};
    nvlm_image img = {0, 0, NULL};
    uint8_t *buf = NULL;
    nvlm_image *volatile pimg = &img;
    uint8_t **volatile pbuf = &buf;
    int rc;

    memset(out, 0, sizeof *out);
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, on_error, on_warning);
    if (!png) return nvlm_fail(err, NVLM_E_NOMEM, "PNG: cannot create the libpng reader");
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        return nvlm_fail(err, NVLM_E_NOMEM, "PNG: cannot create the libpng reader");
    }
    if (setjmp(png_jmpbuf(png))) {
        if (src.truncated) rc = nvlm_fail(err, NVLM_E_FORMAT, "PNG: image file is truncated");
        else rc = nvlm_fail(err, NVLM_E_FORMAT, "PNG: corrupt data: %s", src.msg);
        png_destroy_read_struct(&png, &info, NULL);
        free(*pbuf);
        if (src.announced) ctl->rows_done(ctl->user, pimg, -1);
        nvlm_image_free(pimg);
        return rc;
    }
    /* Pillow raises on a bad CRC in any chunk it parses before the image data */
    png_set_crc_action(png, PNG_CRC_ERROR_QUIT, PNG_CRC_ERROR_QUIT);
    png_set_benign_errors(png, 1);
    png_set_check_for_invalid_index(png, 0);
    png_set_user_limits(png, 0x7fffffff, 0x7fffffff); /* our pixel limit applies instead */
    png_set_read_fn(png, &src, on_read);
    rc = decode_body(png, info, &src, ctl, pimg, pbuf, err);
    png_destroy_read_struct(&png, &info, NULL);
    free(buf);
    if (rc != NVLM_OK) {
        if (src.announced) ctl->rows_done(ctl->user, &img, -1);
        nvlm_image_free(&img);
        return rc;
    }
    *out = img;
    return NVLM_OK;
}
