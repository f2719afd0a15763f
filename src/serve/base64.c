/* Strict base64 decoding of data: URLs (RFC 4648 standard alphabet). Written here rather than
 * OpenSSL's EVP_DecodeBlock because that one accepts trailing garbage silently and counts
 * padding as data; a request with a broken image should get a clear 400. */
#include "serve/serve_int.h"
#include <stdlib.h>

static int b64_value(unsigned char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

static int is_ws(unsigned char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

int serve_base64_decode(const char *in, size_t len, uint8_t **out, size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    uint8_t *o = malloc(len / 4 * 3 + 3);
    if (!o) return -2;
    size_t n = 0, pad = 0, digits = 0;
    uint32_t acc = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (is_ws(c)) continue;
        if (c == '=') {
            pad++;
            continue;
        }
        int v = b64_value(c);
        if (v < 0 || pad) goto bad; /* a foreign character, or data after padding */
        acc = acc << 6 | (uint32_t)v;
        if (++digits % 4 == 0) {
            o[n++] = (uint8_t)(acc >> 16), o[n++] = (uint8_t)(acc >> 8), o[n++] = (uint8_t)acc;
            acc = 0;
        }
    }
    size_t rest = digits % 4;
    if (rest == 1 || (pad && (rest == 0 || pad != 4 - rest))) goto bad;
    if (rest == 2) o[n++] = (uint8_t)(acc >> 4);
    if (rest == 3) o[n++] = (uint8_t)(acc >> 10), o[n++] = (uint8_t)(acc >> 2);
    *out = o;
    *out_len = n;
    return 0;
bad:
    free(o);
    return -1;
}
