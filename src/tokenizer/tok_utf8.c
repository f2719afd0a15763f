/* tok_utf8.c - growable buffers, UTF-8 validation and lossy repair, the byte-level alphabet. */
#include "tokenizer/tok.h"
#include <stdlib.h>
#include <string.h>

int tok_bytes_reserve(tok_bytes *b, size_t extra) {
    if (b->cap - b->n >= extra) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap - b->n < extra) {
        if (cap > SIZE_MAX / 2) return -1;
        cap *= 2;
    }
    uint8_t *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

int tok_bytes_put(tok_bytes *b, const void *src, size_t n) {
    if (tok_bytes_reserve(b, n + 1)) return -1;
    if (n) memcpy(b->p + b->n, src, n);
    b->n += n;
    b->p[b->n] = 0; /* always NUL-terminated for callers that hand out strings */
    return 0;
}

int tok_ids_push(tok_ids *v, int32_t id) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        int32_t *p = realloc(v->p, cap * sizeof *p);
        if (!p) return -1;
        v->p = p;
        v->cap = cap;
    }
    v->p[v->n++] = id;
    return 0;
}

/* Length of the well-formed sequence at s (Unicode Table 3-7), or the negated length of its
 * maximal invalid subpart (at least 1). *incomplete is set when that subpart is a valid
 * prefix cut short by the end of the input. */
static long seq_len(const uint8_t *s, size_t n, int *incomplete) {
    uint8_t c = s[0];
    *incomplete = 0;
    if (c < 0x80) return 1;
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) need = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else
        return -1;
    for (size_t j = 1; j < need; j++) {
        if (j >= n) {
            *incomplete = 1;
            return -(long)j;
        }
        uint8_t b = s[j];
        if (b < lo || b > hi) return -(long)j;
        lo = 0x80;
        hi = 0xBF;
    }
    return (long)need;
}

size_t tok_utf8_valid_prefix(const uint8_t *s, size_t n) {
    size_t i = 0;
    for (;;) {
        while (i + 8 <= n) { /* ASCII runs 8 bytes at a time */
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ull) break;
            i += 8;
        }
        if (i >= n) return n;
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int inc;
        long l = seq_len(s + i, n - i, &inc);
        if (l < 0) return i;
        i += (size_t)l;
    }
}

int tok_utf8_lossy(const uint8_t *s, size_t n, int keep_tail, size_t *tail, tok_bytes *out) {
    static const uint8_t fffd[3] = {0xEF, 0xBF, 0xBD};
    if (tail) *tail = 0;
    size_t i = 0;
    while (i < n) {
        size_t ok = tok_utf8_valid_prefix(s + i, n - i);
        if (tok_bytes_put(out, s + i, ok)) return -1;
        i += ok;
        if (i >= n) break;
        int inc;
        long l = seq_len(s + i, n - i, &inc);
        if (inc && keep_tail) {
            if (tail) *tail = (size_t)-l;
            return 0;
        }
        if (tok_bytes_put(out, fffd, 3)) return -1;
        i += (size_t)-l;
    }
    return 0;
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the 68 others
 * (controls, space, 0x7F-0xA0, 0xAD) are numbered from U+0100 upwards in byte order. */
static int printable(unsigned b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
}

uint32_t tok_byte_to_cp(uint8_t b) {
    if (printable(b)) return b;
    unsigned k = 0;
    for (unsigned x = 0; x < b; x++) k += !printable(x);
    return 256 + k;
}

int tok_cp_to_byte(uint32_t cp) {
    if (cp < 256) return printable(cp) ? (int)cp : -1;
    if (cp >= 256 + 68) return -1;
    unsigned k = cp - 256;
    for (unsigned x = 0; x < 256; x++)
        if (!printable(x) && k-- == 0) return (int)x;
    return -1;
}
