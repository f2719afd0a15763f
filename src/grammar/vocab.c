/* A grammar on a token vocabulary. Each token's bytes come from the tokenizer's decode table
 * (computed once at load); a trie over them, laid out in depth-first order, lets one walk find
 * every allowed token while skipping each refused prefix's whole subtree. The sampler checks
 * the few likeliest tokens one by one (gc_allowed) and walks the trie (gc_mask) only when
 * those do not settle the choice. */
#include "core/err.h"
#include "grammar/grammar.h"
#include "tokenizer/tok.h"
#include <stdlib.h>
#include <string.h>

static int by_bytes(const void *a, const void *b, void *ctx) {
    const gvocab *v = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    uint32_t lx = v->off[x + 1] - v->off[x], ly = v->off[y + 1] - v->off[y];
    int c = memcmp(v->pool + v->off[x], v->pool + v->off[y], lx < ly ? lx : ly);
    if (c) return c;
    if (lx != ly) return lx < ly ? -1 : 1;
    return x < y ? -1 : 1;
}

void gv_free(void *p) {
    gvocab *v = p;
    if (!v) return;
    free(v->usable);
    free(v->t_byte);
    free(v->t_depth);
    free(v->t_end);
    free(v->t_tok);
    free(v->dup_next);
    free(v);
}

static int build_trie(gvocab *v, nvlm_err *err) {
    size_t n_tok = 0, total = 0;
    for (size_t id = 0; id < v->n_ids; id++)
        if (v->usable[id]) n_tok++, total += v->off[id + 1] - v->off[id];
    int32_t *order = malloc(sizeof *order * (n_tok ? n_tok : 1));
    size_t cap = total + 1;
    v->t_byte = malloc(cap);
    v->t_depth = malloc(sizeof *v->t_depth * cap);
    v->t_end = malloc(sizeof *v->t_end * cap);
    v->t_tok = malloc(sizeof *v->t_tok * cap);
    v->dup_next = malloc(sizeof *v->dup_next * v->n_ids);
    uint32_t *path = malloc(sizeof *path * 65536);
    if (!order || !v->t_byte || !v->t_depth || !v->t_end || !v->t_tok || !v->dup_next || !path) {
        free(order), free(path);
        return nvlm_fail(err, NVLM_E_NOMEM, "out of memory indexing the vocabulary for the grammar");
    }
    n_tok = 0;
    for (size_t id = 0; id < v->n_ids; id++) {
        v->dup_next[id] = -1;
        if (v->usable[id]) order[n_tok++] = (int32_t)id;
    }
    qsort_r(order, n_tok, sizeof *order, by_bytes, v);
    /* path[d] = node at depth d + 1 on the current branch; closing a node sets its end */
    uint32_t n = 0, depth = 0, prev_len = 0;
    const uint8_t *prev = NULL;
    int32_t prev_id = -1;
    for (size_t k = 0; k < n_tok; k++) {
        int32_t id = order[k];
        const uint8_t *s = v->pool + v->off[id];
        uint32_t len = v->off[id + 1] - v->off[id];
        if (len > 65535) len = 65535; /* no real token is this long; depths are 16-bit */
        uint32_t lcp = 0;
        while (prev && lcp < len && lcp < prev_len && s[lcp] == prev[lcp]) lcp++;
        if (prev && lcp == len && len == prev_len) { /* the same bytes as the previous id */
            v->dup_next[prev_id] = id;
            prev_id = id;
            continue;
        }
        while (depth > lcp) v->t_end[path[--depth]] = n;
        for (; depth < len; depth++) {
            path[depth] = n;
            v->t_byte[n] = s[depth];
            v->t_depth[n] = (uint16_t)(depth + 1);
            v->t_tok[n] = -1;
            if (depth + 1 > v->max_depth) v->max_depth = (uint16_t)(depth + 1);
            n++;
        }
        v->t_tok[path[len - 1]] = id;
        prev = s, prev_len = len, prev_id = id;
    }
    while (depth > 0) v->t_end[path[--depth]] = n;
    v->n_trie = n;
    free(order);
    free(path);
    return NVLM_OK;
}

static gvocab *gv_build(const nvlm_tokenizer *tok, nvlm_err *err) {
    gvocab *v = calloc(1, sizeof *v);
    if (!v) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory"), NULL;
    v->cache.free = gv_free;
    v->n_ids = tok->n_ids, v->pool = tok->dec_pool, v->off = tok->dec_off;
    v->usable = calloc(v->n_ids ? v->n_ids : 1, 1);
    if (!v->usable) {
        gv_free(v);
        return nvlm_fail(err, NVLM_E_NOMEM, "out of memory"), NULL;
    }
    for (size_t id = 0; id < v->n_ids; id++)
        v->usable[id] = tok->kind[id] == 1 && v->off[id + 1] > v->off[id];
    if (build_trie(v, err)) {
        gv_free(v);
        return NULL;
    }
    return v;
}

const gvocab *gv_get(const nvlm_tokenizer *tok, nvlm_err *err) {
    nvlm_tokenizer *t = (nvlm_tokenizer *)tok; /* the index is a cache: logically const */
    tok_cache *have = atomic_load(&t->grammar_index);
    if (have) return (const gvocab *)have;
    gvocab *v = gv_build(tok, err);
    if (!v) return NULL;
    tok_cache *expected = NULL;
    if (!atomic_compare_exchange_strong(&t->grammar_index, &expected, &v->cache)) { /* another thread won */
        gv_free(v);
        return (const gvocab *)expected;
    }
    return v;
}

/* ------------------------------------------------------------------ constraint */

/* The state's key (each stack's positions, top to bottom, then a separator; the accept flag)
 * and its cache entry. Sets reached the same way list their stacks in the same order. */
static int refresh_state(gconstraint *c) {
    gm_first_bytes(&c->m, &c->first);
    c->key_len = 0;
    c->hit = -1;
    uint64_t h = 1469598103934665603ull;
    for (uint32_t i = 0; i <= c->m.cur.n; i++) {
        int32_t x = i < c->m.cur.n ? c->m.tops[c->m.cur.off + i] : -1;
        for (;; x = c->m.nodes[x].parent) {
            if (c->key_len == c->key_cap) {
                size_t cap = c->key_cap ? 2 * c->key_cap : 256;
                uint32_t *k = realloc(c->key, sizeof *k * cap);
                if (!k) return -1;
                c->key = k, c->key_cap = cap;
            }
            uint32_t v = x < 0 ? (i < c->m.cur.n ? 0xffffffffu : 0xfffffffeu - (uint32_t)c->m.cur.accept)
                               : c->m.nodes[x].pos;
            c->key[c->key_len++] = v;
            h = (h ^ v) * 1099511628211ull;
            if (x < 0) break;
        }
    }
    c->key_hash = h;
    for (int e = 0; e < GC_CACHE; e++) {
        const gcache *ce = &c->cache[e];
        if (ce->mask && ce->hash == h && ce->key_len == c->key_len && !memcmp(ce->key, c->key, sizeof *c->key * c->key_len)) {
            c->hit = e;
            c->cache[e].used = ++c->clock;
            break;
        }
    }
    return 0;
}

int gc_init(gconstraint *c, const nvlm_grammar *g, const nvlm_tokenizer *tok, int n_vocab, int32_t eos,
            nvlm_err *err) {
    memset(c, 0, sizeof *c);
    if (!g || !tok) return nvlm_fail(err, NVLM_E_INVALID_ARG, "no grammar or no tokenizer");
    c->v = gv_get(tok, err);
    if (!c->v) return err && err->code ? err->code : NVLM_E_NOMEM;
    c->n_vocab = n_vocab, c->eos = eos;
    c->st = malloc(sizeof *c->st * ((size_t)c->v->max_depth + 1));
    c->mk = malloc(sizeof *c->mk * ((size_t)c->v->max_depth + 1));
    if (!c->st || !c->mk || gm_init(&c->m, g)) {
        gc_free(c);
        return nvlm_fail(err, NVLM_E_NOMEM, "out of memory for the grammar matcher");
    }
    if (gm_start(&c->m)) {
        int oom = c->m.oom;
        gc_free(c);
        return oom ? nvlm_fail(err, NVLM_E_NOMEM, "out of memory starting the grammar")
                   : nvlm_fail(err, NVLM_E_UNSUPPORTED, "the grammar is too ambiguous to follow");
    }
    if (refresh_state(c)) {
        gc_free(c);
        return nvlm_fail(err, NVLM_E_NOMEM, "out of memory for the grammar matcher");
    }
    return NVLM_OK;
}

void gc_free(gconstraint *c) {
    gm_free(&c->m);
    free(c->key);
    for (int e = 0; e < GC_CACHE; e++) free(c->cache[e].key), free(c->cache[e].mask);
    free(c->st);
    free(c->mk);
    memset(c, 0, sizeof *c);
}

int gc_allowed(gconstraint *c, int32_t id) {
    if (c->hit >= 0) return id >= 0 && id < c->n_vocab && c->cache[c->hit].mask[id];
    if (id == c->eos) return c->m.cur.accept;
    if (id < 0 || (size_t)id >= c->v->n_ids || id >= c->n_vocab || !c->v->usable[id]) return 0;
    const uint8_t *b = c->v->pool + c->v->off[id];
    if (!gset_has(&c->first, b[0])) return 0;
    return gm_try(&c->m, b, c->v->off[id + 1] - c->v->off[id]);
}

/* The slot for a new mask: an empty one, or the least recently used. */
static gcache *cache_slot(gconstraint *c) {
    gcache *best = &c->cache[0];
    for (int e = 0; e < GC_CACHE; e++) {
        if (!c->cache[e].mask) return &c->cache[e];
        if (c->cache[e].used < best->used) best = &c->cache[e];
    }
    return best;
}

long gc_mask(gconstraint *c, const uint8_t **out) {
    if (c->hit >= 0) {
        *out = c->cache[c->hit].mask;
        return c->cache[c->hit].count;
    }
    const gvocab *v = c->v;
    gcache *ce = cache_slot(c);
    uint32_t *key = realloc(ce->key, sizeof *key * (c->key_len ? c->key_len : 1));
    if (key) ce->key = key;
    if (!ce->mask) ce->mask = malloc((size_t)c->n_vocab);
    if (!key || !ce->mask) return -1;
    uint8_t *mask = ce->mask;
    memset(mask, 0, (size_t)c->n_vocab);
    long count = 0;
    if (c->eos >= 0 && c->eos < c->n_vocab && c->m.cur.accept) mask[c->eos] = 1, count++;
    c->st[0] = c->m.cur;
    c->mk[0] = gm_mark(&c->m);
    gmark base = c->mk[0];
    for (uint32_t i = 0; i < v->n_trie;) {
        unsigned d = v->t_depth[i];
        if (d == 1 && !gset_has(&c->first, v->t_byte[i])) {
            i = v->t_end[i];
            continue;
        }
        gm_reset(&c->m, c->mk[d - 1]);
        gm_step(&c->m, &c->st[d - 1], v->t_byte[i], &c->st[d]);
        if (!gstate_alive(&c->st[d])) {
            i = v->t_end[i];
            continue;
        }
        c->mk[d] = gm_mark(&c->m);
        for (int32_t id = v->t_tok[i]; id >= 0; id = v->dup_next[id])
            if (id < c->n_vocab) mask[id] = 1, count++;
        i++;
    }
    gm_reset(&c->m, base);
    if (c->m.oom) {
        ce->hash = 0, ce->key_len = 0; /* a partial mask is never found */
        return -1;
    }
    memcpy(ce->key, c->key, sizeof *key * c->key_len);
    ce->key_len = c->key_len, ce->hash = c->key_hash, ce->count = count, ce->used = ++c->clock;
    c->hit = (int)(ce - c->cache);
    *out = mask;
    return count;
}

int gc_accept(gconstraint *c, int32_t id, nvlm_err *err) {
    if (id == c->eos && c->m.cur.accept) {
        c->finished = 1;
        return NVLM_OK;
    }
    if (id < 0 || (size_t)id >= c->v->n_ids || !c->v->usable[id] ||
        gm_feed(&c->m, c->v->pool + c->v->off[id], c->v->off[id + 1] - c->v->off[id]))
        return c->m.oom ? nvlm_fail(err, NVLM_E_NOMEM, "out of memory following the grammar")
                        : nvlm_fail(err, NVLM_E_INTERNAL, "token %d does not fit the grammar", (int)id);
    if (refresh_state(c)) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory following the grammar");
    return NVLM_OK;
}
