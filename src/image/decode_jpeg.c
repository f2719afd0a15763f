/* decode_jpeg.c - JPEG through libjpeg-turbo with the settings Pillow 9.4 leaves in place:
 * default decompress parameters (JDCT_ISLOW, fancy upsampling, no scaling), output JCS_RGB
 * for 3 components, JCS_GRAYSCALE (replicated) for 1, and for 4 components JCS_CMYK read as
 * Adobe-inverted data and converted with Pillow's cmyk2rgb. No EXIF rotation.
 *
 * Truncation: Pillow feeds libjpeg through a suspending source and raises "image file is
 * truncated" whenever libjpeg asks for bytes past the end of the file, including when
 * jpeg_finish_decompress looks for a missing EOI marker. Our source manager fails at the same
 * point (libjpeg's own memory source would insert a fake EOI and only warn). Other libjpeg
 * warnings (corrupt entropy data...) are ignored, as Pillow ignores them. */
#include "image/decode.h"
#include "core/err.h"
#include <stdio.h> /* before jpeglib.h, which uses FILE */
#include <jpeglib.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

typedef struct jpeg_ctx {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    int truncated;               /* the source ran out of bytes */
    int announced;               /* ctl->rows_done was told about the image buffer */
    char msg[JMSG_LENGTH_MAX];   /* libjpeg's message for the fatal error */
} jpeg_ctx;

static void on_error_exit(j_common_ptr cinfo) {
    jpeg_ctx *ctx = (jpeg_ctx *)cinfo->err;
    if (!ctx->truncated) cinfo->err->format_message(cinfo, ctx->msg);
    longjmp(ctx->jump, 1);
}

static void on_output_message(j_common_ptr cinfo) { (void)cinfo; /* warnings: ignored, as Pillow */ }

static void src_init(j_decompress_ptr cinfo) { (void)cinfo; }
static void src_term(j_decompress_ptr cinfo) { (void)cinfo; }

/* All bytes were handed over at the start: asking for more means the file is truncated. */
static boolean src_fill(j_decompress_ptr cinfo) {
    jpeg_ctx *ctx = (jpeg_ctx *)cinfo->err;
    ctx->truncated = 1;
    cinfo->err->error_exit((j_common_ptr)cinfo);
    return FALSE;
}

static void src_skip(j_decompress_ptr cinfo, long n) {
    struct jpeg_source_mgr *src = cinfo->src;
    if (n <= 0) return;
    if ((size_t)n > src->bytes_in_buffer) src_fill(cinfo);
    src->next_input_byte += n;
    src->bytes_in_buffer -= (size_t)n;
}

/* Pillow's "CMYK;I" unpack (C = 255 - c') followed by cmyk2rgb; with nk = 255 - K = k'. */
static void cmyk_row_to_rgb(const uint8_t *in, uint8_t *out, int w) {
    for (int x = 0; x < w; x++, in += 4, out += 3) {
        int nk = in[3];
        for (int c = 0; c < 3; c++) {
            int t = (255 - in[c]) * nk + 128;
            int v = nk - (((t >> 8) + t) >> 8);
            out[c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
    }
}

static void gray_row_to_rgb(const uint8_t *in, uint8_t *out, int w) {
    for (int x = 0; x < w; x++, out += 3) out[0] = out[1] = out[2] = in[x];
}

/* The part that may longjmp; everything it owns lives in *img / *row so the caller frees it. */
static int decode_body(struct jpeg_decompress_struct *cinfo, img_ctl *ctl, jpeg_ctx *ctx,
                       nvlm_image *img, uint8_t **row, nvlm_err *err) {
    jpeg_read_header(cinfo, TRUE);
    int nc = cinfo->num_components;
    if (nc == 1) cinfo->out_color_space = JCS_GRAYSCALE;
    else if (nc == 3) cinfo->out_color_space = JCS_RGB;
    else if (nc == 4) cinfo->out_color_space = JCS_CMYK;
    else return nvlm_fail(err, NVLM_E_UNSUPPORTED, "JPEG: cannot handle %d-component images", nc);
    int rc = img_alloc("JPEG", cinfo->image_width, cinfo->image_height, ctl->max_pixels, 0, img,
                       err);
    if (rc != NVLM_OK) return rc;
    if (ctl->rows_done) {
        ctx->announced = 1;
        ctl->rows_done(ctl->user, img, 0);
    }
    jpeg_start_decompress(cinfo);
    if ((int)cinfo->output_width != img->width || (int)cinfo->output_height != img->height ||
        cinfo->output_components != (nc == 4 ? 4 : nc))
        return nvlm_fail(err, NVLM_E_INTERNAL, "JPEG: unexpected output geometry");
    size_t w = (size_t)img->width;
    if (nc != 3) {
        *row = malloc(w * (size_t)nc);
        if (!*row) return nvlm_fail(err, NVLM_E_NOMEM, "JPEG: out of memory");
    }
    while (cinfo->output_scanline < cinfo->output_height) {
        JDIMENSION y = cinfo->output_scanline;
        uint8_t *dst = img->rgb + (size_t)y * w * 3;
        if (nc == 3) {
            /* several rows per call: fewer calls, same pixels */
            JSAMPROW rows[16];
            JDIMENSION k, n = cinfo->output_height - y;
            if (n > 16) n = 16;
            for (k = 0; k < n; k++) rows[k] = dst + k * w * 3;
            jpeg_read_scanlines(cinfo, rows, n);
        } else {
            JSAMPROW r = *row;
            if (jpeg_read_scanlines(cinfo, &r, 1) != 1) continue;
            if (nc == 1) gray_row_to_rgb(*row, dst, (int)w);
            else cmyk_row_to_rgb(*row, dst, (int)w);
        }
        if (ctl->rows_done) ctl->rows_done(ctl->user, img, (int)cinfo->output_scanline);
    }
    jpeg_finish_decompress(cinfo);
    return NVLM_OK;
}

int img_decode_jpeg(const uint8_t *data, size_t len, img_ctl *ctl, nvlm_image *out,
                    nvlm_err *err) {
    struct jpeg_decompress_struct cinfo;
    jpeg_ctx ctx;
    struct jpeg_source_mgr src;
    /* volatile: these change after setjmp and are read after a longjmp */
    nvlm_image img = {0, 0, NULL};
    uint8_t *row = NULL;
    nvlm_image *volatile pimg = &img;
    uint8_t **volatile prow = &row;
    int rc;

    memset(out, 0, sizeof *out);
    memset(&ctx, 0, sizeof ctx);
    cinfo.err = jpeg_std_error(&ctx.pub);
    ctx.pub.error_exit = on_error_exit;
    ctx.pub.output_message = on_output_message;
    if (setjmp(ctx.jump)) {
        if (ctx.truncated)
            rc = nvlm_fail(err, NVLM_E_FORMAT, "JPEG: image file is truncated");
        else
            rc = nvlm_fail(err, NVLM_E_FORMAT, "JPEG: corrupt data: %s", ctx.msg);
        jpeg_destroy_decompress(&cinfo);
        free(*prow);
        if (ctx.announced) ctl->rows_done(ctl->user, pimg, -1);
        nvlm_image_free(pimg);
        return rc;
    }
    jpeg_create_decompress(&cinfo);
    memset(&src, 0, sizeof src);
    src.init_source = src_init;
    src.fill_input_buffer = src_fill;
    src.skip_input_data = src_skip;
    src.resync_to_restart = jpeg_resync_to_restart;
    src.term_source = src_term;
    src.next_input_byte = data;
    src.bytes_in_buffer = len;
    cinfo.src = &src;
    rc = decode_body(&cinfo, ctl, &ctx, pimg, prow, err);
    jpeg_destroy_decompress(&cinfo);
    free(row);
    if (rc != NVLM_OK) {
        if (ctx.announced) ctl->rows_done(ctl->user, &img, -1);
        nvlm_image_free(&img);
        return rc;
    }
    *out = img;
    return NVLM_OK;
}
