/* decode_png_fast.c - the PNG fast path (see png_fast.h for when it is taken).
 *
 * Why each condition keeps libpng's answer (libpng 1.6 reads IDAT data lazily, row by row,
 * and after the last row inflates on to the end of the zlib stream, then skips the rest of
 * that IDAT chunk with its CRC; see png_read_IDAT_data / png_read_finish_IDAT):
 *   - we use only consecutive IDAT chunks present in full (data and CRC) and need the zlib
 *     stream to end inside them: libpng then reads exactly those bytes and no chunk header
 *     after them, so it cannot hit the end of the file or a non-IDAT chunk either;
 *   - libdeflate must succeed (which checks the Adler-32 too) with exactly h * (rowbytes+1)
 *     bytes: zlib then inflates the same rows and reaches Z_STREAM_END without an error;
 *     data past the end of the stream is only a benign "extra compressed data" warning;
 *   - the zlib header must declare the 32 KiB window: libpng lets zlib take the window size
 *     from the header, and zlib refuses a distance beyond a smaller declared window while
 *     libdeflate does not look;
 *   - every filter type must be 0..4 (libpng: "bad adaptive filter value").
 * IDAT CRCs are not checked (Pillow does not, and the libpng path is set to ignore them). */
#include "image/png_fast.h"
#include <libdeflate.h>
#include <stdlib.h>
#include <string.h>

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int channels(int color_type) {
    switch (color_type) {
    case 0: return 1; /* gray */
    case 2: return 3; /* RGB */
    case 3: return 1; /* palette */
    case 4: return 2; /* gray + alpha */
    case 6: return 4; /* RGBA */
    default: return 0;
    }
}

/* The zlib stream: the data of the consecutive complete IDAT chunks from the first one,
 * borrowed when there is one chunk, else copied into *owned. 0 when there is none. */
static const uint8_t *gather_idat(const png_fast_job *j, size_t *zlen, uint8_t **owned) {
    size_t pos = j->idat - 8, total = 0, n = 0;
    *owned = NULL;
    while (j->len - pos >= 8 && !memcmp(j->data + pos + 4, "IDAT", 4)) {
        uint32_t cl = be32(j->data + pos);
        if (cl > 0x7fffffffu || (size_t)cl + 4 > j->len - pos - 8) break; /* not complete */
        total += cl;
        n++;
        pos += 12 + (size_t)cl;
    }
    *zlen = total;
    if (n == 0) return NULL;
    if (n == 1) return j->data + j->idat;
    uint8_t *buf = malloc(total ? total : 1);
    if (!buf) return NULL;
    size_t off = 0;
    for (pos = j->idat - 8; off < total;) {
        uint32_t cl = be32(j->data + pos);
        memcpy(buf + off, j->data + pos + 8, cl);
        off += cl;
        pos += 12 + (size_t)cl;
    }
    *owned = buf;
    return buf;
}

/* Inflates the image data into *raw (h rows of 1 + rowbytes). 1 when beyond doubt. */
static int inflate_rows(const png_fast_job *j, size_t raw_len, uint8_t **raw) {
    size_t zlen;
    uint8_t *owned;
    *raw = NULL;
    const uint8_t *z = gather_idat(j, &zlen, &owned);
    /* zlib header: deflate with a 32 KiB window, no preset dictionary, valid check bits */
    if (!z || zlen < 2 || z[0] != 0x78 || (z[1] & 0x20) || ((unsigned)z[0] << 8 | z[1]) % 31) {
        free(owned);
        return 0;
    }
    int ok = 0;
    uint8_t *buf = malloc(raw_len);
    struct libdeflate_decompressor *d = libdeflate_alloc_decompressor();
    if (buf && d) {
        size_t in_used = 0, out_used = 0;
        enum libdeflate_result r =
            libdeflate_zlib_decompress_ex(d, z, zlen, buf, raw_len, &in_used, &out_used);
        ok = r == LIBDEFLATE_SUCCESS && out_used == raw_len;
    }
    if (d) libdeflate_free_decompressor(d);
    free(owned);
    if (!ok) {
        free(buf);
        return 0;
    }
    *raw = buf;
    return 1;
}

/* Samples of 1, 2 or 4 bits, most significant first, to one byte each (value unscaled). */
static void unpack_row(const uint8_t *in, uint8_t *out, size_t n, int bd) {
    int per = 8 / bd, mask = (1 << bd) - 1;
    for (size_t i = 0; i < n; i++) {
        int shift = 8 - bd * (int)(i % (size_t)per + 1);
        out[i] = (uint8_t)(in[i / (size_t)per] >> shift & mask);
    }
}

int png_fast_rows(const png_fast_job *j) {
    int ch = channels(j->color_type), bd = j->bit_depth;
    if (!ch || (bd != 1 && bd != 2 && bd != 4 && bd != 8 && bd != 16) || j->w == 0 || j->h == 0)
        return 0;
    if (j->idat < 8 || j->idat > j->len || memcmp(j->data + j->idat - 4, "IDAT", 4)) return 0;
    size_t bits = (size_t)ch * (size_t)bd, w = j->w, h = j->h;
    if (w > (SIZE_MAX - 7) / bits) return 0;
    size_t rowbytes = (w * bits + 7) / 8, bpp = bits >= 8 ? bits / 8 : 1;
    if (rowbytes + 1 > SIZE_MAX / h) return 0;
    size_t stride = rowbytes + 1, raw_len = stride * h;
    /* the whole inflated image is held at once: past 1 GiB, libpng's row-by-row reading
     * is the better trade */
    if (raw_len > ((size_t)1 << 30)) return 0;
    uint8_t *raw;
    if (!inflate_rows(j, raw_len, &raw)) return 0;
    for (size_t y = 0; y < h; y++)
        if (raw[y * stride] > 4) {
            free(raw);
            return 0;
        }
    /* rows: straight into the image for 8-bit RGB, else two row buffers and a conversion */
    int direct = j->to_rgb == NULL;
    uint8_t *zero = calloc(rowbytes, 1);
    uint8_t *rows = direct ? NULL : malloc(2 * rowbytes + (bd < 8 ? w : 0));
    if (!zero || (!direct && !rows)) {
        free(zero);
        free(rows);
        free(raw);
        return 0;
    }
    const uint8_t *prior = zero;
    for (size_t y = 0; y < h; y++) {
        const uint8_t *in = raw + y * stride;
        uint8_t *out = direct ? j->rgb + y * w * 3 : rows + (y & 1) * rowbytes;
        png_unfilter_row(in[0], in + 1, prior, out, rowbytes, bpp);
        prior = out;
        if (!direct) {
            const uint8_t *samples = out;
            if (bd < 8) {
                unpack_row(out, rows + 2 * rowbytes, w, bd);
                samples = rows + 2 * rowbytes;
            }
            j->to_rgb(j->ctx, samples, j->rgb + y * w * 3, (int)w);
        }
        if (j->rows_done && ((y & 7) == 7 || y + 1 == h)) j->rows_done(j->user, j->img, (int)y + 1);
    }
    free(zero);
    free(rows);
    free(raw);
    return 1;
}
