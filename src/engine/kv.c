/* The paged KV store: pages are allocated on first use (up to the bound) and kept on a free
 * list once released, so a busy server reaches its working set and stops calling malloc. */
#include "engine/kv.h"
#include "core/err.h"
#include <stdlib.h>
#include <string.h>

typedef struct kv_seq {
    int used, len;
    int *pages;
    int n_pages, cap_pages;
} kv_seq;

struct nvlm_kvstore {
    nvlm_kv_opts o;
    size_t elem, page_bytes;
    void **mem;          /* [cap_mem]: page storage, NULL until first used */
    int *refs;           /* [cap_mem] */
    int *free_ids;       /* stack of allocated pages with refs 0 */
    size_t n_mem, cap_mem, n_free;
    kv_seq *seqs;
    int n_seqs, cap_seqs;
};

int nvlm_kvstore_new(const nvlm_kv_opts *o, nvlm_kvstore **out, nvlm_err *err) {
    *out = NULL;
    if (o->n_layers <= 0 || o->kv_dim <= 0 || o->page_tokens < 0)
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "KV store: bad shape (%d layers, kv_dim %d, %d tokens a page)",
                         o->n_layers, o->kv_dim, o->page_tokens);
    nvlm_kvstore *kv = calloc(1, sizeof *kv);
    if (!kv) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory for the KV store");
    kv->o = *o;
    if (!kv->o.page_tokens) kv->o.page_tokens = 16;
    kv->elem = o->f16 ? sizeof(uint16_t) : sizeof(float);
    kv->page_bytes = kv->elem * 2 * (size_t)o->n_layers * (size_t)kv->o.page_tokens * (size_t)o->kv_dim;
    *out = kv;
    return NVLM_OK;
}

void nvlm_kvstore_free(nvlm_kvstore *kv) {
    if (!kv) return;
    for (size_t i = 0; i < kv->n_mem; i++) free(kv->mem[i]);
    for (int s = 0; s < kv->n_seqs; s++) free(kv->seqs[s].pages);
    free(kv->mem), free(kv->refs), free(kv->free_ids), free(kv->seqs);
    free(kv);
}

void nvlm_kvstore_stats(const nvlm_kvstore *kv, nvlm_kv_stats *st) {
    memset(st, 0, sizeof *st);
    st->pages_used = kv->n_mem - kv->n_free;
    st->pages_free = kv->o.max_pages ? kv->o.max_pages - st->pages_used : kv->n_free;
    st->pages_max = kv->o.max_pages;
    st->page_bytes = kv->page_bytes;
    st->bytes_allocated = kv->n_mem * kv->page_bytes;
    st->page_tokens = kv->o.page_tokens;
    for (int s = 0; s < kv->n_seqs; s++) st->sequences += kv->seqs[s].used;
}

size_t nvlm_kv_pages_for(const nvlm_kvstore *kv, size_t n) {
    return (n + (size_t)kv->o.page_tokens - 1) / (size_t)kv->o.page_tokens;
}

int nvlm_kv_is_f16(const nvlm_kvstore *kv) { return kv->o.f16; }
int nvlm_kv_dim(const nvlm_kvstore *kv) { return kv->o.kv_dim; }

static kv_seq *seq_at(const nvlm_kvstore *kv, int seq) {
    return seq >= 0 && seq < kv->n_seqs && kv->seqs[seq].used ? &kv->seqs[seq] : NULL;
}

int nvlm_kv_seq_len(const nvlm_kvstore *kv, int seq) {
    const kv_seq *s = seq_at(kv, seq);
    return s ? s->len : -1;
}

/* Pages that can still be taken (free ones and ones not allocated yet). */
static size_t pages_available(const nvlm_kvstore *kv) {
    if (!kv->o.max_pages) return (size_t)-1;
    return kv->o.max_pages - (kv->n_mem - kv->n_free);
}

/* A page with refs 1; -1 when out of memory (the bound is checked by the caller). */
static int page_take(nvlm_kvstore *kv) {
    if (kv->n_free) {
        int p = kv->free_ids[--kv->n_free];
        kv->refs[p] = 1;
        return p;
    }
    if (kv->n_mem == kv->cap_mem) {
        size_t cap = kv->cap_mem ? 2 * kv->cap_mem : 64;
        void **mem = realloc(kv->mem, sizeof *mem * cap);
        if (mem) kv->mem = mem;
        int *refs = mem ? realloc(kv->refs, sizeof *refs * cap) : NULL;
        if (refs) kv->refs = refs;
        int *fr = refs ? realloc(kv->free_ids, sizeof *fr * cap) : NULL;
        if (fr) kv->free_ids = fr;
        if (!fr) return -1;
        kv->cap_mem = cap;
    }
    void *m = malloc(kv->page_bytes);
    if (!m) return -1;
    kv->mem[kv->n_mem] = m;
    kv->refs[kv->n_mem] = 1;
    return (int)kv->n_mem++;
}

static void page_release(nvlm_kvstore *kv, int p) {
    if (--kv->refs[p] == 0) kv->free_ids[kv->n_free++] = p;
}

static int seq_slot(nvlm_kvstore *kv, nvlm_err *err) {
    for (int s = 0; s < kv->n_seqs; s++)
        if (!kv->seqs[s].used) return s;
    if (kv->n_seqs == kv->cap_seqs) {
        int cap = kv->cap_seqs ? 2 * kv->cap_seqs : 16;
        kv_seq *n = realloc(kv->seqs, sizeof *n * (size_t)cap);
        if (!n) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory for a KV sequence");
        kv->seqs = n;
        kv->cap_seqs = cap;
    }
    memset(&kv->seqs[kv->n_seqs], 0, sizeof kv->seqs[0]);
    return kv->n_seqs++;
}

static int seq_pages_cap(kv_seq *s, int n, nvlm_err *err) {
    if (n <= s->cap_pages) return NVLM_OK;
    int cap = s->cap_pages ? s->cap_pages : 16;
    while (cap < n) cap *= 2;
    int *p = realloc(s->pages, sizeof *p * (size_t)cap);
    if (!p) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory for a KV page table");
    s->pages = p;
    s->cap_pages = cap;
    return NVLM_OK;
}

int nvlm_kv_seq_new(nvlm_kvstore *kv, int *seq, nvlm_err *err) {
    int s = seq_slot(kv, err);
    if (s < 0) return s;
    kv->seqs[s].used = 1;
    kv->seqs[s].len = 0;
    kv->seqs[s].n_pages = 0;
    *seq = s;
    return NVLM_OK;
}

int nvlm_kv_seq_fork(nvlm_kvstore *kv, int src, int n_tokens, int *dst, nvlm_err *err) {
    if (!seq_at(kv, src)) return nvlm_fail(err, NVLM_E_INVALID_ARG, "KV store: no sequence %d to fork", src);
    if (n_tokens < 0 || n_tokens > kv->seqs[src].len)
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "KV store: cannot fork %d positions of a sequence of %d", n_tokens,
                         kv->seqs[src].len);
    int d = seq_slot(kv, err); /* may move kv->seqs */
    if (d < 0) return d;
    kv_seq *t = &kv->seqs[d];
    int np = (int)nvlm_kv_pages_for(kv, (size_t)n_tokens);
    int rc = seq_pages_cap(t, np, err);
    if (rc) return rc;
    const kv_seq *s = &kv->seqs[src];
    for (int i = 0; i < np; i++) t->pages[i] = s->pages[i], kv->refs[s->pages[i]]++;
    t->used = 1;
    t->len = n_tokens;
    t->n_pages = np;
    *dst = d;
    return NVLM_OK;
}

void nvlm_kv_seq_truncate(nvlm_kvstore *kv, int seq, int n_tokens) {
    kv_seq *s = seq_at(kv, seq);
    if (!s || n_tokens >= s->len) return;
    if (n_tokens < 0) n_tokens = 0;
    int keep = (int)nvlm_kv_pages_for(kv, (size_t)n_tokens);
    for (int i = keep; i < s->n_pages; i++) page_release(kv, s->pages[i]);
    if (s->n_pages > keep) s->n_pages = keep;
    s->len = n_tokens;
}

void nvlm_kv_seq_free(nvlm_kvstore *kv, int seq) {
    kv_seq *s = seq_at(kv, seq);
    if (!s) return;
    for (int i = 0; i < s->n_pages; i++) page_release(kv, s->pages[i]);
    s->n_pages = 0;
    s->len = 0;
    s->used = 0;
}

int nvlm_kv_seq_reserve(nvlm_kvstore *kv, int seq, int n, nvlm_err *err) {
    kv_seq *s = seq_at(kv, seq);
    if (!s || n < 0) return nvlm_fail(err, NVLM_E_INVALID_ARG, "KV store: no sequence %d", seq);
    if (n == 0) return NVLM_OK;
    const int P = kv->o.page_tokens;
    int first = s->len / P, need = (int)nvlm_kv_pages_for(kv, (size_t)s->len + (size_t)n);
    /* count what must be taken: missing pages, and shared pages that will be written */
    size_t take = 0;
    for (int i = first; i < need; i++) take += i >= s->n_pages || kv->refs[s->pages[i]] > 1;
    if (take > pages_available(kv)) {
        size_t mib = kv->o.max_pages * kv->page_bytes >> 20;
        return nvlm_fail(err, NVLM_E_BUSY,
                         "the KV cache is full: %zu more pages of %d positions are needed, %zu of %zu are free "
                         "(%zu MiB; raise --kv-size or lower --parallel)", take, P, pages_available(kv),
                         kv->o.max_pages, mib);
    }
    int rc = seq_pages_cap(s, need, err);
    if (rc) return rc;
    for (int i = first; i < need; i++) {
        if (i < s->n_pages && kv->refs[s->pages[i]] == 1) continue;
        int p = page_take(kv);
        if (p < 0) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory for a KV page (%zu bytes)", kv->page_bytes);
        if (i < s->n_pages) { /* copy on write: the shared page's filled rows (all of it: cheaper than per layer) */
            memcpy(kv->mem[p], kv->mem[s->pages[i]], kv->page_bytes);
            page_release(kv, s->pages[i]);
        } else {
            s->n_pages = i + 1;
        }
        s->pages[i] = p;
    }
    return NVLM_OK;
}

void nvlm_kv_seq_advance(nvlm_kvstore *kv, int seq, int n) {
    kv_seq *s = seq_at(kv, seq);
    if (s) s->len += n;
}

static size_t row_off(const nvlm_kvstore *kv, int l, int which, int off) {
    return (((size_t)l * 2 + (size_t)which) * (size_t)kv->o.page_tokens + (size_t)off) * (size_t)kv->o.kv_dim * kv->elem;
}

void *nvlm_kv_row(nvlm_kvstore *kv, int seq, int l, int which, int pos) {
    const kv_seq *s = &kv->seqs[seq];
    const int P = kv->o.page_tokens;
    return (uint8_t *)kv->mem[s->pages[pos / P]] + row_off(kv, l, which, pos % P);
}

const void *nvlm_kv_row_c(const nvlm_kvstore *kv, int seq, int l, int which, int pos) {
    const kv_seq *s = &kv->seqs[seq];
    const int P = kv->o.page_tokens;
    return (const uint8_t *)kv->mem[s->pages[pos / P]] + row_off(kv, l, which, pos % P);
}

int nvlm_kv_page_of(const nvlm_kvstore *kv, int seq, int pos) {
    const kv_seq *s = seq_at(kv, seq);
    if (!s || pos < 0 || pos / kv->o.page_tokens >= s->n_pages) return -1;
    return s->pages[pos / kv->o.page_tokens];
}

int nvlm_kv_page_refs(const nvlm_kvstore *kv, int page) {
    return page >= 0 && (size_t)page < kv->n_mem ? kv->refs[page] : 0;
}
