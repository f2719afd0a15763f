/* tok_encode.c - nvlm_tokenizer_encode and the small lookups of the public API. */
#include "tokenizer/tok.h"
#include "core/err.h"
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* Pieces of long texts repeat (words); a direct-mapped cache of their ids saves the BPE.
 * Per call, so that encoding never writes to the shared tokenizer. */
#define CACHE_MIN_TEXT 16384
#define CACHE_SLOTS 8192
#define CACHE_BYTES 26
#define CACHE_IDS 8
typedef struct cache_slot {
    uint32_t hash;
    uint8_t len, n_ids;
    uint8_t bytes[CACHE_BYTES];
    int32_t ids[CACHE_IDS];
} cache_slot;

typedef struct enc {
    const nvlm_tokenizer *t;
    tok_ids out;
    tok_bpe_work w;
    cache_slot *cache; /* NULL for short texts */
} enc;

static uint32_t piece_hash(const uint8_t *p, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 16777619u;
    return h ^ (h >> 15);
}

static int encode_piece(enc *e, const uint8_t *p, size_t n) {
    if (n == 1 && e->t->byte_id[p[0]] >= 0 && !e->t->ignore_merges) return tok_ids_push(&e->out, e->t->byte_id[p[0]]);
    if (!e->cache || n > CACHE_BYTES) return tok_bpe(e->t, p, n, &e->w, &e->out);
    uint32_t h = piece_hash(p, n);
    cache_slot *c = &e->cache[h & (CACHE_SLOTS - 1)];
    if (c->hash == h && c->len == n && !memcmp(c->bytes, p, n)) {
        for (size_t i = 0; i < c->n_ids; i++)
            if (tok_ids_push(&e->out, c->ids[i])) return -1;
        return 0;
    }
    size_t before = e->out.n;
    if (tok_bpe(e->t, p, n, &e->w, &e->out)) return -1;
    size_t k = e->out.n - before;
    if (k <= CACHE_IDS) {
        c->hash = h, c->len = (uint8_t)n, c->n_ids = (uint8_t)k;
        memcpy(c->bytes, p, n);
        memcpy(c->ids, e->out.p + before, k * sizeof *c->ids);
    }
    return 0;
}

static int pretokenize(enc *e, const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        size_t end = tok_pretok_next(s, n, i);
        if (encode_piece(e, s + i, end - i)) return -1;
        i = end;
    }
    return 0;
}

/* Added tokens flagged `normalized` are matched in the NFC text. */
static int split_normalized(enc *e, const uint8_t *s, size_t n) {
    size_t pos = 0, start;
    const tok_added *a;
    while ((a = tok_added_find(&e->t->norm_set, s, n, pos, &start))) {
        if (pretokenize(e, s + pos, start - pos) || tok_ids_push(&e->out, a->id)) return -1;
        pos = start + a->len;
    }
    return pretokenize(e, s + pos, n - pos);
}

/* 1 when NFC leaves the character alone and it cannot combine with what precedes it. */
static int nfc_inert(uint32_t cp) {
    if (cp < 0x300) return 1;
    if ((cp >= 0x1161 && cp <= 0x1175) || (cp >= 0x11A8 && cp <= 0x11C2)) return 0; /* Hangul V, T */
    const utf8proc_property_t *p = utf8proc_get_property((utf8proc_int32_t)cp);
    if (p->combining_class) return 0;
    if (p->decomp_seqindex != UINT16_MAX && p->decomp_type == 0) return 0; /* canonical decomposition */
    if (p->comb_index != UINT16_MAX && p->comb_index >= 0x8000) return 0; /* second of a pair */
    return 1;
}

static int needs_nfc(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        if (c < 0xCC) { /* below U+0300 (lead bytes up to 0xCB) */
            i += c < 0x80 ? 1 : 2;
            continue;
        }
        utf8proc_int32_t cp;
        utf8proc_ssize_t l = utf8proc_iterate(s + i, (utf8proc_ssize_t)(n - i), &cp);
        if (l <= 0) return 1;
        if (!nfc_inert((uint32_t)cp)) return 1;
        i += (size_t)l;
    }
    return 0;
}

static int encode_segment(enc *e, const uint8_t *s, size_t n) {
    if (!n) return 0;
    if (!needs_nfc(s, n)) return split_normalized(e, s, n);
    utf8proc_uint8_t *nfc = NULL;
    utf8proc_ssize_t m = utf8proc_map(s, (utf8proc_ssize_t)n, &nfc, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    if (m < 0) {
        free(nfc);
        return m == UTF8PROC_ERROR_NOMEM ? -1 : -2;
    }
    int rc = split_normalized(e, nfc, (size_t)m);
    free(nfc);
    return rc;
}

int nvlm_tokenizer_encode(const nvlm_tokenizer *t, const char *text, size_t len, int32_t **ids,
                          size_t *n_ids, nvlm_err *err) {
    if (!t || (!text && len) || !ids || !n_ids)
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "nvlm_tokenizer_encode: NULL argument");
    *ids = NULL;
    *n_ids = 0;
    const uint8_t *s = (const uint8_t *)(text ? text : "");
    tok_bytes fixed = {0};
    enc e = {.t = t};
    int rc = 0;
    if (tok_utf8_valid_prefix(s, len) < len) { /* invalid UTF-8: U+FFFD per maximal subpart */
        if (tok_utf8_lossy(s, len, 0, NULL, &fixed)) rc = -1;
        s = fixed.p;
        len = fixed.n;
    }
    if (!rc && len >= CACHE_MIN_TEXT) e.cache = calloc(CACHE_SLOTS, sizeof *e.cache);
    if (!rc && !(e.out.p = malloc(sizeof *e.out.p * (len / 3 + 16)))) rc = -1;
    e.out.cap = e.out.p ? len / 3 + 16 : 0;
    size_t pos = 0, start;
    const tok_added *a;
    while (!rc && (a = tok_added_find(&t->raw_set, s, len, pos, &start))) {
        rc = encode_segment(&e, s + pos, start - pos);
        if (!rc) rc = tok_ids_push(&e.out, a->id);
        pos = start + a->len;
    }
    if (!rc) rc = encode_segment(&e, s + pos, len - pos);
    free(fixed.p);
    free(e.cache);
    tok_bpe_work_free(&e.w);
    if (rc) {
        free(e.out.p);
        if (rc == -2) return nvlm_fail(err, NVLM_E_INTERNAL, "tokenizer: NFC normalization failed");
        return nvlm_fail(err, NVLM_E_NOMEM, "tokenizer: out of memory encoding %zu bytes", len);
    }
    *ids = e.out.p;
    *n_ids = e.out.n;
    return 0;
}

int32_t nvlm_tokenizer_token_id(const nvlm_tokenizer *t, const char *token) {
    if (!t || !token) return -1;
    size_t n = strlen(token);
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].len == n && !memcmp(t->added[i].content, token, n)) return t->added[i].id;
    return tok_vocab_find(t, token, n);
}

size_t nvlm_tokenizer_size(const nvlm_tokenizer *t) { return t ? t->n_ids : 0; }

int nvlm_tokenizer_is_special(const nvlm_tokenizer *t, int32_t id) {
    return t && id >= 0 && (size_t)id < t->n_ids && t->kind[id] == 3;
}
