/* tok_bpe.c - byte-level BPE of one pre-token: repeatedly merge the adjacent pair of lowest
 * merge rank, leftmost first (Hugging Face's order). Short pieces use a rank array scanned
 * per merge (fast for the usual word); long ones a binary heap with lazy invalidation, so a
 * 1 MB run of one character stays O(n log n). */
#include "tokenizer/tok.h"
#include <stdlib.h>
#include <string.h>

#define NO_RANK UINT32_MAX
#define SHORT_PIECE 48

void tok_bpe_work_free(tok_bpe_work *w) {
    free(w->sym);
    free(w->rank);
    free(w->prev);
    free(w->next);
    free(w->heap);
    memset(w, 0, sizeof *w);
}

static int work_reserve(tok_bpe_work *w, size_t n) {
    if (n <= w->cap) return 0;
    size_t cap = w->cap ? w->cap : 256;
    while (cap < n) cap *= 2;
    int32_t *sym = realloc(w->sym, cap * sizeof *sym);
    if (sym) w->sym = sym;
    uint32_t *rank = realloc(w->rank, cap * sizeof *rank);
    if (rank) w->rank = rank;
    int32_t *prev = realloc(w->prev, cap * sizeof *prev);
    if (prev) w->prev = prev;
    int32_t *next = realloc(w->next, cap * sizeof *next);
    if (next) w->next = next;
    uint64_t *heap = realloc(w->heap, 2 * cap * sizeof *heap);
    if (heap) w->heap = heap;
    if (!sym || !rank || !prev || !next || !heap) return -1;
    w->cap = cap;
    return 0;
}

static inline uint32_t rank_of(const nvlm_tokenizer *t, int32_t a, int32_t b, int32_t *id) {
    const tok_merge *m = tok_merge_find(t, a, b);
    if (!m) return NO_RANK;
    *id = m->id;
    return m->rank;
}

static int bpe_short(const nvlm_tokenizer *t, int32_t *sym, uint32_t *rank, size_t n, tok_ids *out) {
    int32_t dummy;
    for (size_t i = 0; i + 1 < n; i++) rank[i] = rank_of(t, sym[i], sym[i + 1], &dummy);
    while (n > 1) {
        size_t best = 0;
        for (size_t i = 1; i + 1 < n; i++)
            if (rank[i] < rank[best]) best = i;
        if (rank[best] == NO_RANK) break;
        rank_of(t, sym[best], sym[best + 1], &sym[best]);
        memmove(sym + best + 1, sym + best + 2, (n - best - 2) * sizeof *sym);
        memmove(rank + best + 1, rank + best + 2, (n > best + 2 ? n - best - 2 : 0) * sizeof *rank);
        n--;
        if (best > 0) rank[best - 1] = rank_of(t, sym[best - 1], sym[best], &dummy);
        if (best + 1 < n) rank[best] = rank_of(t, sym[best], sym[best + 1], &dummy);
    }
    for (size_t i = 0; i < n; i++)
        if (tok_ids_push(out, sym[i])) return -1;
    return 0;
}

/* min-heap of (rank << 32 | position): lower rank first, then leftmost */
static void heap_push(uint64_t *h, size_t *n, uint64_t v) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p] <= v) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static uint64_t heap_pop(uint64_t *h, size_t *n) {
    uint64_t top = h[0], v = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && h[c + 1] < h[c]) c++;
        if (h[c] >= v) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = v;
    return top;
}

static int bpe_heap(const nvlm_tokenizer *t, tok_bpe_work *w, size_t n, tok_ids *out) {
    int32_t *sym = w->sym, *prev = w->prev, *next = w->next, id;
    uint64_t *h = w->heap;
    size_t hn = 0;
    for (size_t i = 0; i < n; i++) {
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    for (size_t i = 0; i + 1 < n; i++) {
        uint32_t r = rank_of(t, sym[i], sym[i + 1], &id);
        if (r != NO_RANK) heap_push(h, &hn, (uint64_t)r << 32 | i);
    }
    while (hn) {
        uint64_t top = heap_pop(h, &hn);
        uint32_t r = (uint32_t)(top >> 32), pos = (uint32_t)top;
        int32_t nx = next[pos];
        /* stale entries: the symbol was absorbed (sym < 0) or its pair changed */
        if (sym[pos] < 0 || nx < 0 || rank_of(t, sym[pos], sym[nx], &id) != r) continue;
        sym[pos] = id;
        sym[nx] = -1;
        next[pos] = next[nx];
        if (next[nx] >= 0) prev[next[nx]] = (int32_t)pos;
        /* the heap holds at most one live entry per position plus stale ones; each merge
         * adds two, so 2n entries always suffice */
        if (prev[pos] >= 0 && (r = rank_of(t, sym[prev[pos]], sym[pos], &id)) != NO_RANK)
            heap_push(h, &hn, (uint64_t)r << 32 | (uint32_t)prev[pos]);
        if (next[pos] >= 0 && (r = rank_of(t, sym[pos], sym[next[pos]], &id)) != NO_RANK)
            heap_push(h, &hn, (uint64_t)r << 32 | pos);
    }
    for (int32_t i = 0; i >= 0; i = next[i])
        if (tok_ids_push(out, sym[i])) return -1;
    return 0;
}

/* ignore_merges: the id of the whole piece when its byte-level text is a vocabulary entry. */
static int32_t whole_piece(const nvlm_tokenizer *t, const uint8_t *p, size_t n) {
    char buf[512];
    if (n > sizeof buf / 2) return -1; /* longer than any vocabulary entry worth a lookup */
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        uint16_t cp = t->byte_cp[p[i]];
        if (cp < 0x80) buf[k++] = (char)cp;
        else buf[k++] = (char)(0xC0 | cp >> 6), buf[k++] = (char)(0x80 | (cp & 0x3F));
    }
    return tok_vocab_find(t, buf, k);
}

int tok_bpe(const nvlm_tokenizer *t, const uint8_t *p, size_t n, tok_bpe_work *w, tok_ids *out) {
    if (t->ignore_merges) {
        int32_t id = whole_piece(t, p, n);
        if (id >= 0) return tok_ids_push(out, id);
    }
    if (work_reserve(w, n)) return -1;
    size_t m = 0;
    for (size_t i = 0; i < n; i++) /* a byte without a symbol is dropped, as HF does without unk */
        if (t->byte_id[p[i]] >= 0) w->sym[m++] = t->byte_id[p[i]];
    if (m == 1) return tok_ids_push(out, w->sym[0]);
    if (m <= SHORT_PIECE) return bpe_short(t, w->sym, w->rank, m, out);
    return bpe_heap(t, w, m, out);
}
