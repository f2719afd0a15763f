/* decode_gif.c - GIF (first frame) through giflib, laid out as Pillow 9.4's GifImagePlugin:
 *   - the canvas is the logical screen, grown to hold the first frame if it sticks out;
 *   - pixels outside the frame are palette index 0, or the frame's transparency index when
 *     its graphic control extension has one; that index's colour then shows in the RGB;
 *   - colours come from the local colour table, else the global one; Pillow's palette
 *     starts as a gray ramp, so indices past the table (or no table at all) give (i, i, i);
 *   - transparency is otherwise ignored; interlaced rows are put back in order;
 *   - stray bytes between blocks are skipped, as Pillow does.
 * A file that ends before the first frame's pixels are complete is an error. */
#include "image/decode.h"
#include "core/err.h"
#include <gif_lib.h>
#include <stdlib.h>
#include <string.h>

typedef struct gif_src {
    const uint8_t *data;
    size_t len, pos;
} gif_src;

static int on_read(GifFileType *gif, GifByteType *dst, int n) {
    gif_src *s = gif->UserData;
    if (n <= 0) return 0;
    size_t k = (size_t)n;
    if (k > s->len - s->pos) k = s->len - s->pos;
    memcpy(dst, s->data + s->pos, k);
    s->pos += k;
    return (int)k;
}

static int gif_fail(GifFileType *gif, nvlm_err *err, const char *what) {
    int code = gif ? gif->Error : 0;
    const char *why = GifErrorString(code);
    if (code == D_GIF_ERR_READ_FAILED || code == D_GIF_ERR_EOF_TOO_SOON)
        return nvlm_fail(err, NVLM_E_FORMAT, "GIF: image file is truncated (%s)", what);
    return nvlm_fail(err, NVLM_E_FORMAT, "GIF: corrupt data while %s: %s", what,
                     why ? why : "unknown giflib error");
}

/* Skips an extension's sub-blocks; returns the transparency index it sets (or keeps *trns). */
static int read_extension(GifFileType *gif, int *trns, nvlm_err *err) {
    int code = 0;
    GifByteType *ext = NULL;
    if (DGifGetExtension(gif, &code, &ext) == GIF_ERROR) return gif_fail(gif, err, "reading an extension");
    if (code == GRAPHICS_EXT_FUNC_CODE) {
        /* Pillow reads flags = block[0] and, if bit 0 is set, the index block[3] */
        if (!ext || ext[0] < 1)
            return nvlm_fail(err, NVLM_E_FORMAT, "GIF: empty graphic control extension");
        if (ext[1] & 1) {
            if (ext[0] < 4)
                return nvlm_fail(err, NVLM_E_FORMAT, "GIF: short graphic control extension");
            *trns = ext[4];
        }
    }
    while (ext) {
        if (DGifGetExtensionNext(gif, &ext) == GIF_ERROR)
            return gif_fail(gif, err, "reading an extension");
    }
    return NVLM_OK;
}

static int decode_frame(GifFileType *gif, int trns, uint64_t max_pixels, nvlm_image *img,
                        uint8_t **line, nvlm_err *err) {
    if (DGifGetImageDesc(gif) == GIF_ERROR) return gif_fail(gif, err, "reading the image descriptor");
    GifImageDesc *d = &gif->Image;
    if (d->Width <= 0 || d->Height <= 0)
        return nvlm_fail(err, NVLM_E_FORMAT, "GIF: zero-sized first frame");
    uint64_t cw = (uint64_t)gif->SWidth, ch = (uint64_t)gif->SHeight;
    uint64_t x1 = (uint64_t)d->Left + (uint64_t)d->Width, y1 = (uint64_t)d->Top + (uint64_t)d->Height;
    if (x1 > cw) cw = x1;
    if (y1 > ch) ch = y1;
    int rc = img_alloc("GIF", cw, ch, max_pixels, 0, img, err);
    if (rc != NVLM_OK) return rc;

    uint8_t pal[256 * 3];
    for (int i = 0; i < 256; i++) pal[3 * i] = pal[3 * i + 1] = pal[3 * i + 2] = (uint8_t)i;
    ColorMapObject *cm = d->ColorMap ? d->ColorMap : gif->SColorMap;
    if (cm && cm->Colors) {
        for (int i = 0; i < cm->ColorCount && i < 256; i++) {
            pal[3 * i] = cm->Colors[i].Red;
            pal[3 * i + 1] = cm->Colors[i].Green;
            pal[3 * i + 2] = cm->Colors[i].Blue;
        }
    }
    /* background: the fill index everywhere, then the frame on top */
    const uint8_t *bg = pal + 3 * (trns >= 0 ? trns : 0);
    size_t npix = (size_t)img->width * (size_t)img->height;
    for (size_t i = 0; i < npix; i++) memcpy(img->rgb + 3 * i, bg, 3);

    *line = malloc((size_t)d->Width);
    if (!*line) return nvlm_fail(err, NVLM_E_NOMEM, "GIF: out of memory");
    static const int start[4] = {0, 4, 2, 1}, step[4] = {8, 8, 4, 2};
    int npass = d->Interlace ? 4 : 1;
    for (int p = 0; p < npass; p++) {
        int y0 = d->Interlace ? start[p] : 0, dy = d->Interlace ? step[p] : 1;
        for (int y = y0; y < d->Height; y += dy) {
            if (DGifGetLine(gif, *line, d->Width) == GIF_ERROR)
                return gif_fail(gif, err, "decoding the first frame");
            uint8_t *dst = img->rgb + (((size_t)(d->Top + y)) * (size_t)img->width + (size_t)d->Left) * 3;
            for (int x = 0; x < d->Width; x++) memcpy(dst + 3 * x, pal + 3 * (*line)[x], 3);
        }
    }
    return NVLM_OK;
}

int img_decode_gif(const uint8_t *data, size_t len, uint64_t max_pixels, nvlm_image *out,
                   nvlm_err *err) {
    memset(out, 0, sizeof *out);
    gif_src src = {data, len, 0};
    int gerr = 0;
    GifFileType *gif = DGifOpen(&src, on_read, &gerr);
    if (!gif) {
        if (gerr == D_GIF_ERR_READ_FAILED)
            return nvlm_fail(err, NVLM_E_FORMAT, "GIF: image file is truncated (header)");
        const char *why = GifErrorString(gerr);
        return nvlm_fail(err, NVLM_E_FORMAT, "GIF: bad header: %s", why ? why : "unknown error");
    }
    nvlm_image img = {0, 0, NULL};
    uint8_t *line = NULL;
    int trns = -1, rc = NVLM_OK, done = 0;
    while (!done && rc == NVLM_OK) {
        GifRecordType t = UNDEFINED_RECORD_TYPE;
        if (DGifGetRecordType(gif, &t) == GIF_ERROR) {
            if (gif->Error == D_GIF_ERR_WRONG_RECORD) continue; /* Pillow skips stray bytes */
            rc = gif_fail(gif, err, "looking for the first frame");
            break;
        }
        switch (t) {
        case EXTENSION_RECORD_TYPE: rc = read_extension(gif, &trns, err); break;
        case IMAGE_DESC_RECORD_TYPE:
            rc = decode_frame(gif, trns, max_pixels, &img, &line, err);
            done = 1;
            break;
        case TERMINATE_RECORD_TYPE:
            rc = nvlm_fail(err, NVLM_E_FORMAT, "GIF: no image in the file");
            break;
        default: break;
        }
    }
    free(line);
    DGifCloseFile(gif, &gerr);
    if (rc != NVLM_OK) {
        nvlm_image_free(&img);
        return rc;
    }
    *out = img;
    return NVLM_OK;
}
