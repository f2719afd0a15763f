/* probe.c - an image's size from its header, before any decoding: what lets the server
 * count an image's decoded memory against its budget before that memory exists. */
#include "image/decode.h"
#include <string.h>
#include <webp/decode.h>

static uint32_t be16(const uint8_t *p) { return (uint32_t)p[0] << 8 | p[1]; }
static uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static uint32_t le16(const uint8_t *p) { return (uint32_t)p[1] << 8 | p[0]; }
static uint32_t le32(const uint8_t *p) { return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0]; }

/* The first start-of-frame marker's size (the one libjpeg decodes). */
static int probe_jpeg(const uint8_t *d, size_t n, uint64_t *w, uint64_t *h) {
    size_t i = 2;
    while (i + 4 <= n) {
        if (d[i] != 0xFF) return -1;
        while (i < n && d[i] == 0xFF) i++;
        if (i >= n) return -1;
        uint8_t m = d[i++];
        if (m == 0xD8 || m == 0x01 || (m >= 0xD0 && m <= 0xD7)) continue;
        if (m == 0xD9 || m == 0xDA || i + 2 > n) return -1; /* end or scan before any frame */
        uint32_t len = be16(d + i);
        if (len < 2) return -1;
        if (m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC) {
            if (i + 7 > n) return -1;
            *h = be16(d + i + 3);
            *w = be16(d + i + 5);
            return 0;
        }
        i += len;
    }
    return -1;
}

int img_probe(const uint8_t *d, size_t n, uint64_t *w, uint64_t *h, int *exact) {
    *w = *h = 0;
    *exact = 0;
    img_format f = img_sniff(d, n);
    int wi = 0, hi = 0;
    switch (f) {
    case IMG_PNG:
        if (n < 24 || memcmp(d + 12, "IHDR", 4)) return IMG_UNKNOWN;
        *w = be32(d + 16), *h = be32(d + 20), *exact = 1;
        break;
    case IMG_JPEG:
        *exact = probe_jpeg(d, n, w, h) == 0;
        break;
    case IMG_WEBP:
        if (WebPGetInfo(d, n, &wi, &hi)) *w = (uint64_t)wi, *h = (uint64_t)hi, *exact = 1;
        break;
    case IMG_GIF: /* the canvas grows to a first frame that overhangs it: a hint only */
        if (n >= 10) *w = le16(d + 6), *h = le16(d + 8);
        break;
    case IMG_BMP:
        if (n < 26) break;
        if (le32(d + 14) == 12) {
            *w = le16(d + 18), *h = le16(d + 20);
        } else {
            *w = le32(d + 18);
            *h = d[25] == 0xFF ? (1ull << 32) - le32(d + 22) : le32(d + 22);
        }
        *exact = 1;
        break;
    default: break;
    }
    return f;
}
