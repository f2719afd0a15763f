/* decode_bmp.c - BMP, parsed here following Pillow 9.4's BmpImagePlugin step by step (Pillow
 * has its own parser too, so its quirks are the reference):
 *   - headers of 12 (OS/2 v1), 40, 64, 108 and 124 bytes; a height whose top byte is 0xFF
 *     means top-down; 1/4/8-bit palette, 16-bit 5-5-5, 24-bit, 32-bit read as BGRX;
 *   - BI_BITFIELDS only with the mask sets Pillow knows; RLE8 and RLE4;
 *   - a palette that is exactly a gray ramp (or black/white for 2 colours) switches Pillow to
 *     mode "L" (or "1") and the pixel bytes are then read with that raw mode;
 *   - palette entries past the stored ones are gray (i, i, i);
 *   - rows missing at the end of the file are an error ("image file is truncated"), and so is
 *     RLE data that does not fill the image ("not enough image data").
 * Every read is bounds-checked against the buffer. */
#include "image/decode.h"
#include "core/err.h"
#include <stdlib.h>
#include <string.h>

static uint32_t u16le(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }
static uint32_t u32le(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* How the pixel bytes are unpacked (Pillow raw modes). */
typedef enum bmp_raw {
    RAW_P1, RAW_P4, RAW_P8, /* palette indices */
    RAW_BIT1, RAW_L,        /* mode "1" and mode "L" (gray palettes) */
    RAW_BGR15, RAW_BGR16, RAW_BGR, RAW_BGRX, RAW_XBGR, RAW_ABGR, RAW_RGBA
} bmp_raw;

static int raw_bits(bmp_raw r) {
    switch (r) {
    case RAW_P1: case RAW_BIT1: return 1;
    case RAW_P4: return 4;
    case RAW_P8: case RAW_L: return 8;
    case RAW_BGR15: case RAW_BGR16: return 16;
    case RAW_BGR: return 24;
    default: return 32;
    }
}

typedef struct bmp_info {
    uint64_t width, height;
    int bits, direction; /* direction -1: bottom-up (file rows start at the bottom) */
    uint32_t header_size, compression, colors;
    uint32_t mask[4];
    size_t pos;          /* file position after the header (and 40-byte bitfield masks) */
} bmp_info;

static int bmp_trunc(nvlm_err *err, const char *what) {
    return nvlm_fail(err, NVLM_E_FORMAT, "BMP: image file is truncated (%s)", what);
}

static int parse_header(const uint8_t *d, size_t n, bmp_info *bi, nvlm_err *err) {
    if (n < 18) return bmp_trunc(err, "file header");
    uint32_t hs = u32le(d + 14);
    if (hs != 12 && hs != 40 && hs != 64 && hs != 108 && hs != 124)
        return nvlm_fail(err, NVLM_E_UNSUPPORTED, "BMP: unsupported header type (%u)", hs);
    if (n < 14 + (size_t)hs) return bmp_trunc(err, "info header");
    const uint8_t *h = d + 18; /* header data without its size field */
    bi->pos = 14 + hs;
    bi->header_size = hs;
    bi->colors = 0;
    memset(bi->mask, 0, sizeof bi->mask);
    if (hs == 12) {
        bi->width = u16le(h);
        bi->height = u16le(h + 2);
        bi->bits = (int)u16le(h + 6);
        bi->compression = 0;
        bi->direction = -1;
        return NVLM_OK;
    }
    int flip = h[7] == 0xFF;
    bi->direction = flip ? 1 : -1;
    bi->width = u32le(h);
    bi->height = flip ? (1ull << 32) - u32le(h + 4) : u32le(h + 4);
    bi->bits = (int)u16le(h + 10);
    bi->compression = u32le(h + 12);
    bi->colors = u32le(h + 28);
    if (bi->compression == 3) {
        if (hs - 4 >= 52) {
            for (int i = 0; i < 4; i++) bi->mask[i] = u32le(h + 36 + 4 * i);
        } else {
            /* 40-byte header: three masks follow it */
            if (n < bi->pos + 12) return bmp_trunc(err, "bitfield masks");
            for (int i = 0; i < 3; i++) bi->mask[i] = u32le(d + bi->pos + 4 * i);
            bi->pos += 12;
        }
    }
    return NVLM_OK;
}

/* Raw mode for BI_BITFIELDS, as Pillow's MASK_MODES table; -1 if unsupported. */
static int bitfields_mode(const bmp_info *bi) {
    const uint32_t *m = bi->mask;
#define MASKS(r, g, b, a) (m[0] == (r) && m[1] == (g) && m[2] == (b) && m[3] == (a))
#define MASKS3(r, g, b) (m[0] == (r) && m[1] == (g) && m[2] == (b))
    if (bi->bits == 32) {
        if (MASKS(0xFF0000u, 0xFF00u, 0xFFu, 0u)) return RAW_BGRX;
        if (MASKS(0xFF000000u, 0xFF0000u, 0xFF00u, 0u)) return RAW_XBGR;
        if (MASKS(0xFF000000u, 0xFF0000u, 0xFF00u, 0xFFu)) return RAW_ABGR;
        if (MASKS(0xFFu, 0xFF00u, 0xFF0000u, 0xFF000000u)) return RAW_RGBA;
        if (MASKS(0xFF0000u, 0xFF00u, 0xFFu, 0xFF000000u)) return RAW_BGRX; /* BGRA */
        if (MASKS(0u, 0u, 0u, 0u)) return RAW_BGRX;                          /* BGRA */
    } else if (bi->bits == 24) {
        if (MASKS3(0xFF0000u, 0xFF00u, 0xFFu)) return RAW_BGR;
    } else if (bi->bits == 16) {
        if (MASKS3(0xF800u, 0x7E0u, 0x1Fu)) return RAW_BGR16;
        if (MASKS3(0x7C00u, 0x3E0u, 0x1Fu)) return RAW_BGR15;
    }
#undef MASKS
#undef MASKS3
    return -1;
}

static void unpack_row(bmp_raw r, const uint8_t *in, const uint8_t *pal, uint8_t *out, int w) {
    int x;
    switch (r) {
    case RAW_P1: case RAW_BIT1:
        for (x = 0; x < w; x++, out += 3) {
            int v = in[x >> 3] >> (7 - (x & 7)) & 1;
            if (r == RAW_BIT1) out[0] = out[1] = out[2] = (uint8_t)(v ? 255 : 0);
            else memcpy(out, pal + 3 * v, 3);
        }
        break;
    case RAW_P4:
        for (x = 0; x < w; x++, out += 3) {
            int v = (x & 1) ? in[x >> 1] & 15 : in[x >> 1] >> 4;
            memcpy(out, pal + 3 * v, 3);
        }
        break;
    case RAW_P8:
        for (x = 0; x < w; x++, out += 3) memcpy(out, pal + 3 * in[x], 3);
        break;
    case RAW_L:
        for (x = 0; x < w; x++, out += 3) out[0] = out[1] = out[2] = in[x];
        break;
    case RAW_BGR15: case RAW_BGR16:
        for (x = 0; x < w; x++, out += 3, in += 2) {
            int p = in[0] | in[1] << 8;
            out[2] = (uint8_t)((p & 31) * 255 / 31);
            if (r == RAW_BGR15) {
                out[1] = (uint8_t)(((p >> 5) & 31) * 255 / 31);
                out[0] = (uint8_t)(((p >> 10) & 31) * 255 / 31);
            } else {
                out[1] = (uint8_t)(((p >> 5) & 63) * 255 / 63);
                out[0] = (uint8_t)(((p >> 11) & 31) * 255 / 31);
            }
        }
        break;
    case RAW_BGR: case RAW_BGRX: {
        int s = r == RAW_BGR ? 3 : 4;
        for (x = 0; x < w; x++, out += 3, in += s) {
            out[0] = in[2];
            out[1] = in[1];
            out[2] = in[0];
        }
        break;
    }
    case RAW_XBGR: case RAW_ABGR:
        for (x = 0; x < w; x++, out += 3, in += 4) {
            out[0] = in[3];
            out[1] = in[2];
            out[2] = in[1];
        }
        break;
    case RAW_RGBA:
        for (x = 0; x < w; x++, out += 3, in += 4) memcpy(out, in, 3);
        break;
    }
}

/* Pillow's BmpRleDecoder, quirks included: fills idx (w*h bytes, zeroed, in file row order);
 * returns how many bytes the decoder produced (may exceed w*h). */
static uint64_t rle_decode(const uint8_t *d, size_t n, size_t pos, int rle4, uint64_t w,
                           uint64_t total, uint8_t *idx) {
    uint64_t len = 0, x = 0;
#define PUT(v) do { if (len < total) idx[len] = (uint8_t)(v); len++; } while (0)
    while (len < total) {
        if (pos >= n || n - pos < 2) break;
        unsigned cnt = d[pos], byte = d[pos + 1];
        pos += 2;
        if (cnt) { /* encoded run, clipped at the end of the row */
            uint64_t k = cnt;
            if (x + k > w) k = x < w ? w - x : 0;
            for (uint64_t i = 0; i < k; i++) PUT(rle4 ? ((i & 1) ? byte & 15 : byte >> 4) : byte);
            x += k;
        } else if (byte == 0) { /* end of line: pad to a row boundary */
            if (len % w) len += w - len % w;
            x = 0;
        } else if (byte == 1) { /* end of bitmap */
            break;
        } else if (byte == 2) { /* delta: zeros */
            if (n - pos < 2) break;
            len += d[pos] + (uint64_t)d[pos + 1] * w;
            pos += 2;
            x = len % w;
        } else { /* absolute run: not clipped, may wrap into the next row */
            size_t want = rle4 ? byte / 2 : byte;
            size_t got = n - pos < want ? n - pos : want;
            for (size_t i = 0; i < got; i++) {
                if (rle4) {
                    PUT(d[pos + i] >> 4);
                    PUT(d[pos + i] & 15);
                } else {
                    PUT(d[pos + i]);
                }
            }
            pos += got;
            if (got < want) break;
            x += byte;
            if (pos % 2) pos++; /* word alignment of the absolute file position */
        }
    }
#undef PUT
    return len;
}

static int decode_pixels(const uint8_t *d, size_t n, const bmp_info *bi, bmp_raw raw, int rle,
                         size_t offset, const uint8_t *pal, nvlm_image *img, nvlm_err *err) {
    uint64_t w = bi->width, h = bi->height;
    if (rle) {
        if (raw == RAW_BIT1)
            return nvlm_fail(err, NVLM_E_UNSUPPORTED, "BMP: RLE data with a black/white palette");
        uint8_t *idx = calloc((size_t)(w * h), 1);
        if (!idx) return nvlm_fail(err, NVLM_E_NOMEM, "BMP: out of memory");
        uint64_t got = offset < n ? rle_decode(d, n, offset, bi->compression == 2, w, w * h, idx) : 0;
        if (got < w * h) {
            free(idx);
            return nvlm_fail(err, NVLM_E_FORMAT, "BMP: not enough RLE image data (truncated or corrupt)");
        }
        for (uint64_t i = 0; i < h; i++) {
            uint64_t y = bi->direction < 0 ? h - 1 - i : i;
            unpack_row(raw == RAW_L ? RAW_L : RAW_P8, idx + i * w, pal, img->rgb + y * w * 3, (int)w);
        }
        free(idx);
        return NVLM_OK;
    }
    uint64_t stride = ((w * (uint64_t)bi->bits + 31) >> 3) & ~(uint64_t)3;
    uint64_t rowbytes = (w * (uint64_t)raw_bits(raw) + 7) / 8;
    if (rowbytes > stride)
        return nvlm_fail(err, NVLM_E_UNSUPPORTED,
                         "BMP: %d-bit rows cannot be read in the gray mode their palette selects",
                         bi->bits);
    if (offset > n || n - offset < rowbytes || (n - offset - rowbytes) / stride < h - 1)
        return bmp_trunc(err, "pixel data");
    for (uint64_t i = 0; i < h; i++) {
        uint64_t y = bi->direction < 0 ? h - 1 - i : i;
        unpack_row(raw, d + offset + i * stride, pal, img->rgb + y * w * 3, (int)w);
    }
    return NVLM_OK;
}

int img_decode_bmp(const uint8_t *d, size_t n, uint64_t max_pixels, nvlm_image *out,
                   nvlm_err *err) {
    memset(out, 0, sizeof *out);
    bmp_info bi;
    int rc = parse_header(d, n, &bi, err);
    if (rc != NVLM_OK) return rc;
    uint64_t offset = u32le(d + 10);
    uint64_t colors = bi.colors ? bi.colors : (bi.bits < 64 ? 1ull << bi.bits : 0);
    /* Pillow: an offset pointing right after the info header skips a palette */
    if (offset == 14 + (uint64_t)bi.header_size && bi.bits <= 8) offset += 4 * colors;
    bmp_raw raw;
    switch (bi.bits) {
    case 1: raw = RAW_P1; break;
    case 4: raw = RAW_P4; break;
    case 8: raw = RAW_P8; break;
    case 16: raw = RAW_BGR15; break;
    case 24: raw = RAW_BGR; break;
    case 32: raw = RAW_BGRX; break;
    default: return nvlm_fail(err, NVLM_E_UNSUPPORTED, "BMP: unsupported pixel depth (%d)", bi.bits);
    }
    int rle = 0;
    if (bi.compression == 3) {
        int m = bitfields_mode(&bi);
        if (m < 0) return nvlm_fail(err, NVLM_E_UNSUPPORTED, "BMP: unsupported bitfields layout");
        raw = (bmp_raw)m;
    } else if (bi.compression == 1 || bi.compression == 2) {
        rle = 1;
        if (bi.bits > 8)
            return nvlm_fail(err, NVLM_E_UNSUPPORTED, "BMP: RLE compression with %d-bit pixels",
                             bi.bits);
    } else if (bi.compression != 0) {
        return nvlm_fail(err, NVLM_E_UNSUPPORTED, "BMP: unsupported compression (%u)",
                         bi.compression);
    }
    uint8_t pal[256 * 3];
    for (int i = 0; i < 256; i++) pal[3 * i] = pal[3 * i + 1] = pal[3 * i + 2] = (uint8_t)i;
    size_t pos = bi.pos;
    if (bi.bits <= 8) {
        if (colors == 0 || colors > 256)
            return nvlm_fail(err, NVLM_E_UNSUPPORTED, "BMP: unsupported palette size (%llu)",
                             (unsigned long long)colors);
        size_t pad = bi.header_size == 12 ? 3 : 4; /* OS/2 v1 palettes have 3-byte entries */
        size_t want = pad * (size_t)colors;
        size_t have = pos < n ? (n - pos < want ? n - pos : want) : 0;
        const uint8_t *p = d + (pos < n ? pos : n);
        int gray = 1;
        for (size_t i = 0; i < colors; i++) {
            unsigned v = colors == 2 ? (i ? 255u : 0u) : (unsigned)i;
            if (i * pad + 3 > have || p[i * pad] != v || p[i * pad + 1] != v || p[i * pad + 2] != v)
                gray = 0;
        }
        if (gray) {
            raw = colors == 2 ? RAW_BIT1 : RAW_L;
        } else {
            for (size_t i = 0; i < have / pad; i++) { /* stored as BGR(X) */
                pal[3 * i] = p[i * pad + 2];
                pal[3 * i + 1] = p[i * pad + 1];
                pal[3 * i + 2] = p[i * pad];
            }
        }
        pos += have;
    }
    if (offset == 0) offset = pos;
    rc = img_alloc("BMP", bi.width, bi.height, max_pixels, 0, out, err);
    if (rc != NVLM_OK) return rc;
    rc = decode_pixels(d, n, &bi, raw, rle, offset > n ? n + 1 : (size_t)offset, pal, out, err);
    if (rc != NVLM_OK) nvlm_image_free(out);
    return rc;
}
