/* tok_vocab.c - the lookup tables of a loaded tokenizer: vocabulary hash, merge table,
 * per-id decode bytes, added-token sets. */
#include "tokenizer/tok.h"
#include "core/err.h"
#include <stdlib.h>
#include <string.h>

uint64_t tok_hash_str(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
    return h ^ (h >> 29);
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n) c *= 2;
    return c;
}

/* Slots hold (high 32 bits of the hash) << 32 | (id + 1); 0 is empty. The hash bits spare
 * most string comparisons (and their cache misses) on collisions. */
int tok_vocab_index(nvlm_tokenizer *t) {
    size_t cap = pow2_at_least(t->n_ids * 2 + 16);
    t->vhash = calloc(cap, sizeof *t->vhash);
    if (!t->vhash) return -1;
    t->vhash_mask = cap - 1;
    enum { AHEAD = 16 };
    uint64_t hs[AHEAD]; /* hashes of the next AHEAD ids, whose slots are being prefetched */
    for (size_t id = 0; id < t->n_ids + AHEAD; id++) {
        if (id >= AHEAD) {
            size_t k = id - AHEAD;
            uint32_t a = t->str_off[k], b = t->str_off[k + 1];
            if (a != b && t->kind[k] == 1) {
                uint64_t h = hs[k % AHEAD];
                size_t i = (size_t)h & t->vhash_mask;
                while (t->vhash[i]) i = (i + 1) & t->vhash_mask;
                t->vhash[i] = (h >> 32) << 32 | ((uint64_t)k + 1);
            }
        }
        if (id < t->n_ids) {
            uint32_t a = t->str_off[id], b = t->str_off[id + 1];
            hs[id % AHEAD] = tok_hash_str(t->str_pool + a, b - a);
            __builtin_prefetch(&t->vhash[(size_t)hs[id % AHEAD] & t->vhash_mask], 1);
        }
    }
    return 0;
}

/* (tokens are short: a loop beats a call to memcmp) */
static inline int same(const char *a, const char *b, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

int32_t tok_vocab_find(const nvlm_tokenizer *t, const char *s, size_t n) {
    return tok_vocab_find_h(t, s, n, tok_hash_str(s, n));
}

void tok_vocab_prefetch(const nvlm_tokenizer *t, uint64_t h) {
    __builtin_prefetch(&t->vhash[(size_t)h & t->vhash_mask]);
}

int32_t tok_vocab_find_h(const nvlm_tokenizer *t, const char *s, size_t n, uint64_t h) {
    if (!t->vhash || n == 0) return -1;
    size_t i = (size_t)h & t->vhash_mask;
    for (;;) {
        uint64_t v = t->vhash[i];
        if (!v) return -1;
        if (v >> 32 == h >> 32) {
            uint32_t id = (uint32_t)v - 1, a = t->str_off[id], b = t->str_off[id + 1];
            if (b - a == n && same(t->str_pool + a, s, n)) return (int32_t)id;
        }
        i = (i + 1) & t->vhash_mask;
    }
}

int tok_merges_alloc(nvlm_tokenizer *t, size_t n_merges) {
    size_t cap = pow2_at_least(n_merges + n_merges / 2 + 16);
    t->merges = calloc(cap, sizeof *t->merges);
    if (!t->merges) return -1;
    t->merges_mask = cap - 1;
    return 0;
}

void tok_merges_prefetch(const nvlm_tokenizer *t, uint64_t key) {
    __builtin_prefetch(&t->merges[(size_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & t->merges_mask], 1);
}

void tok_merges_put_key(nvlm_tokenizer *t, uint64_t key, uint32_t rank, int32_t id) {
    size_t i = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & t->merges_mask;
    while (t->merges[i].key && t->merges[i].key != key) i = (i + 1) & t->merges_mask;
    /* a repeated merge keeps its last rank, as the HashMap Hugging Face builds does */
    t->merges[i] = (tok_merge){key, rank, id};
}

static int cmp_len_desc(const void *a, const void *b) {
    const tok_added *x = *(const tok_added *const *)a, *y = *(const tok_added *const *)b;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

int tok_added_set_build(tok_added_set *set, const tok_added *tok, size_t n, int normalized) {
    memset(set, 0, sizeof *set);
    set->by_len = calloc(n ? n : 1, sizeof *set->by_len);
    if (!set->by_len) return -1;
    for (size_t i = 0; i < n; i++) {
        if (!tok[i].normalized != !normalized || tok[i].len == 0) continue;
        set->by_len[set->n++] = &tok[i];
        set->first[(uint8_t)tok[i].content[0]] = 1;
    }
    qsort(set->by_len, set->n, sizeof *set->by_len, cmp_len_desc);
    return 0;
}

const tok_added *tok_added_find(const tok_added_set *set, const uint8_t *s, size_t n,
                                size_t from, size_t *start) {
    if (!set->n) return NULL;
    for (size_t i = from; i < n; i++) {
        if (!set->first[s[i]]) continue;
        for (size_t k = 0; k < set->n; k++) { /* longest first: the first hit is the longest */
            const tok_added *a = set->by_len[k];
            if (a->len <= n - i && (uint8_t)a->content[0] == s[i] && !memcmp(a->content, s + i, a->len)) {
                *start = i;
                return a;
            }
        }
    }
    return NULL;
}

/* Bytes a token string decodes to: Hugging Face's ByteLevel decoder maps every character
 * back to its byte, but keeps the token's own UTF-8 when any character is outside the
 * byte-level alphabet. */
static int decode_bytes(const int16_t *inv, const char *s, size_t n, tok_bytes *out) {
    size_t start = out->n;
    if (tok_bytes_reserve(out, n + 1)) return -1; /* never longer than the token text */
    for (size_t i = 0; i < n;) {
        uint8_t c = (uint8_t)s[i];
        uint32_t cp;
        size_t l;
        if (c < 0x80) cp = c, l = 1;
        else if ((c & 0xE0) == 0xC0 && i + 1 < n) cp = (uint32_t)(c & 0x1F) << 6 | (s[i + 1] & 0x3F), l = 2;
        else cp = 0xFFFFFFFF, l = 1;
        if (cp >= 324 || inv[cp] < 0) {
            out->n = start;
            return tok_bytes_put(out, s, n);
        }
        out->p[out->n++] = (uint8_t)inv[cp];
        i += l;
    }
    return 0;
}

int tok_finish(nvlm_tokenizer *t, nvlm_err *err) {
    int16_t inv[324];
    for (int i = 0; i < 324; i++) inv[i] = -1;
    for (int b = 0; b < 256; b++) {
        uint32_t cp = tok_byte_to_cp((uint8_t)b);
        t->byte_cp[b] = (uint16_t)cp;
        inv[cp] = (int16_t)b;
        char u[2];
        size_t ul = 1;
        if (cp < 0x80) u[0] = (char)cp;
        else u[0] = (char)(0xC0 | cp >> 6), u[1] = (char)(0x80 | (cp & 0x3F)), ul = 2;
        t->byte_id[b] = tok_vocab_find(t, u, ul);
    }
    tok_bytes pool = {0};
    t->dec_off = malloc((t->n_ids + 1) * sizeof *t->dec_off);
    if (!t->dec_off) return nvlm_fail(err, NVLM_E_NOMEM, "tokenizer: out of memory");
    for (size_t id = 0; id < t->n_ids; id++) {
        t->dec_off[id] = (uint32_t)pool.n;
        uint32_t a = t->str_off[id], b = t->str_off[id + 1];
        if (decode_bytes(inv, t->str_pool + a, b - a, &pool)) {
            free(pool.p);
            return nvlm_fail(err, NVLM_E_NOMEM, "tokenizer: out of memory");
        }
    }
    t->dec_off[t->n_ids] = (uint32_t)pool.n;
    t->dec_pool = pool.p ? pool.p : malloc(1);
    if (!t->dec_pool || tok_added_set_build(&t->raw_set, t->added, t->n_added, 0) ||
        tok_added_set_build(&t->norm_set, t->added, t->n_added, 1))
        return nvlm_fail(err, NVLM_E_NOMEM, "tokenizer: out of memory");
    return 0;
}
