/* kv.h - the engine's paged KV store (docs/engine.md): the rotated keys and values of many
 * sequences in fixed-size pages of page_tokens positions, every layer of a position in the same
 * page. A sequence is an id and a list of pages; a fork shares the source's pages by reference
 * count and copies a shared page only when it is written (the partly filled last one). The
 * store never holds more than max_pages pages: a sequence that cannot grow gets NVLM_E_BUSY and
 * nothing else changes. Single-threaded (the engine's caller). Internal. */
#ifndef NVLM_ENGINE_KV_H
#define NVLM_ENGINE_KV_H
#include "nvlm.h"
#include <stddef.h>
#include <stdint.h>

typedef struct nvlm_kvstore nvlm_kvstore;

typedef struct nvlm_kv_opts {
    int n_layers, kv_dim;
    int f16;            /* elements are F16 bits, else float32 */
    int page_tokens;    /* positions per page; 0: 16 */
    size_t max_pages;   /* 0: no bound */
} nvlm_kv_opts;

typedef struct nvlm_kv_stats {
    size_t pages_used, pages_free, pages_max; /* free: allocated and unused; max 0: unbounded */
    size_t page_bytes, bytes_allocated;
    int page_tokens, sequences;
} nvlm_kv_stats;

int nvlm_kvstore_new(const nvlm_kv_opts *o, nvlm_kvstore **out, nvlm_err *err);
void nvlm_kvstore_free(nvlm_kvstore *kv);
void nvlm_kvstore_stats(const nvlm_kvstore *kv, nvlm_kv_stats *st);
/* Pages needed for a sequence of n positions. */
size_t nvlm_kv_pages_for(const nvlm_kvstore *kv, size_t n);

/* A new empty sequence. */
int nvlm_kv_seq_new(nvlm_kvstore *kv, int *seq, nvlm_err *err);
/* A new sequence holding the first n_tokens positions of src (pages shared, none copied). */
int nvlm_kv_seq_fork(nvlm_kvstore *kv, int src, int n_tokens, int *dst, nvlm_err *err);
/* Forgets positions >= n_tokens (pages past them are released). */
void nvlm_kv_seq_truncate(nvlm_kvstore *kv, int seq, int n_tokens);
/* Releases the sequence and its pages' references. Unknown ids are ignored. */
void nvlm_kv_seq_free(nvlm_kvstore *kv, int seq);
/* Positions held (-1: no such sequence). */
int nvlm_kv_seq_len(const nvlm_kvstore *kv, int seq);
/* Makes positions [len, len + n) writable: pages allocated, a shared page among them copied.
 * NVLM_E_BUSY when the bound would be passed (the sequence is then unchanged). */
int nvlm_kv_seq_reserve(nvlm_kvstore *kv, int seq, int n, nvlm_err *err);
/* len += n (after the positions were written; they must have been reserved). */
void nvlm_kv_seq_advance(nvlm_kvstore *kv, int seq, int n);

/* The key (which 0) or value (1) row of kv_dim elements of position pos in layer l, reserved. */
void *nvlm_kv_row(nvlm_kvstore *kv, int seq, int l, int which, int pos);
const void *nvlm_kv_row_c(const nvlm_kvstore *kv, int seq, int l, int which, int pos);
/* Page id of position pos (tests: sharing), -1 when none. */
int nvlm_kv_page_of(const nvlm_kvstore *kv, int seq, int pos);
int nvlm_kv_page_refs(const nvlm_kvstore *kv, int page);
int nvlm_kv_is_f16(const nvlm_kvstore *kv);
int nvlm_kv_dim(const nvlm_kvstore *kv);
#endif
