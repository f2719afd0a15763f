/* tok.h - internals of the Qwen2 byte-level BPE tokenizer (see docs/tokenizer.md).
 *
 * Pipeline of nvlm_tokenizer_encode: repair invalid UTF-8 -> split on added tokens (raw text)
 * -> NFC -> split on "normalized" added tokens -> Qwen2 pre-tokenizer (hand-coded regex)
 * -> byte-level symbols -> BPE by merge rank -> ids. Internal. */
#ifndef NVLM_TOKENIZER_TOK_H
#define NVLM_TOKENIZER_TOK_H
#include "nvlm.h"
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* ---- growable buffers (every function returns 0, or -1 when out of memory) */
typedef struct tok_bytes { uint8_t *p; size_t n, cap; } tok_bytes;
typedef struct tok_ids { int32_t *p; size_t n, cap; } tok_ids;
int tok_bytes_reserve(tok_bytes *b, size_t extra);
int tok_bytes_put(tok_bytes *b, const void *src, size_t n);
int tok_ids_push(tok_ids *v, int32_t id);

/* ---- UTF-8 */
/* Length of the longest valid UTF-8 prefix of s[0..n). */
size_t tok_utf8_valid_prefix(const uint8_t *s, size_t n);
/* Appends s[0..n) to out with each maximal invalid subpart replaced by U+FFFD (the rule of
 * Python's errors='replace' and Rust's from_utf8_lossy). If keep_tail is non-zero, a final
 * incomplete-but-valid prefix of a character is not converted: its length is returned in
 * *tail (those bytes are not consumed). Returns 0 or -1 (no memory). */
int tok_utf8_lossy(const uint8_t *s, size_t n, int keep_tail, size_t *tail, tok_bytes *out);

/* ---- byte-level alphabet (GPT-2's bytes_to_unicode) */
uint32_t tok_byte_to_cp(uint8_t b);
/* Byte of a byte-level code point, or -1 if cp is not in the alphabet. */
int tok_cp_to_byte(uint32_t cp);

/* ---- Qwen2 pre-tokenizer: end (byte offset) of the piece that starts at i < n.
 * s[0..n) must be valid UTF-8. */
size_t tok_pretok_next(const uint8_t *s, size_t n, size_t i);
/* Character class flags of a code point, as Oniguruma sees them. */
enum { TOK_L = 1, TOK_N = 2, TOK_WS = 4 };
unsigned tok_uc_class(uint32_t cp);

/* ---- vocabulary hash (byte-level token string -> id) and merge table */
typedef struct tok_merge { uint64_t key; uint32_t rank; int32_t id; } tok_merge;

typedef struct tok_added {
    char *content;          /* as matched (NFC form for normalized tokens) */
    size_t len;
    int32_t id;
    uint8_t special, normalized;
} tok_added;

/* A set of added tokens for leftmost-longest matching. */
typedef struct tok_added_set {
    const tok_added **by_len;  /* sorted by length, longest first */
    size_t n;
    uint8_t first[256];        /* 1 when some token starts with this byte */
} tok_added_set;

/* A cache another module hangs on the tokenizer (src/grammar's token index): its first member,
 * so nvlm_tokenizer_free can release it through the pointer alone. */
typedef struct tok_cache {
    void (*free)(void *self);
} tok_cache;

struct nvlm_tokenizer {
    /* regular vocabulary: strings in str_pool, str_off[id]..str_off[id+1] (empty: no token) */
    char *str_pool;
    uint32_t *str_off;         /* n_ids + 1 entries */
    size_t n_ids;              /* max id + 1 over vocabulary and added tokens */
    size_t n_vocab;            /* number of regular vocabulary entries */
    uint64_t *vhash;           /* open addressing: hash tag << 32 | (id + 1), 0 = empty */
    size_t vhash_mask;
    tok_merge *merges;         /* open addressing on tok_merge_key(a, b); key 0 = empty */
    size_t merges_mask;
    int32_t byte_id[256];      /* id of each byte's symbol, -1 if absent */
    uint16_t byte_cp[256];     /* each byte's code point in the byte-level alphabet */
    int ignore_merges;         /* HF BPE option: a piece that is a vocabulary entry is one id */
    /* decoding: bytes of every id (byte-level inverse applied), dec_off[id]..dec_off[id+1] */
    uint8_t *dec_pool;
    uint32_t *dec_off;
    uint8_t *kind;             /* per id: 0 none, 1 vocabulary, 2 added, 3 added + special */
    tok_added *added;
    size_t n_added;
    tok_added_set raw_set, norm_set;
    /* src/grammar's index of the token bytes, built on first use; it starts with its own free
     * function, so the tokenizer frees it without depending on src/grammar */
    _Atomic(tok_cache *) grammar_index;
};

/* Id of a byte-level vocabulary string, or -1. The _h form takes tok_hash_str(s, n), so
 * that a caller may tok_vocab_prefetch the slot early (loading does 450k lookups). */
int32_t tok_vocab_find(const nvlm_tokenizer *t, const char *s, size_t n);
uint64_t tok_hash_str(const char *s, size_t n);
int32_t tok_vocab_find_h(const nvlm_tokenizer *t, const char *s, size_t n, uint64_t h);
void tok_vocab_prefetch(const nvlm_tokenizer *t, uint64_t h);
/* Builds vhash from str_pool/str_off (ids < n_ids that hold a string). */
int tok_vocab_index(nvlm_tokenizer *t);
/* The merge table, sized for n_merges; put inserts (key of a, b) -> (rank, id of ab). */
int tok_merges_alloc(nvlm_tokenizer *t, size_t n_merges);
void tok_merges_put_key(nvlm_tokenizer *t, uint64_t key, uint32_t rank, int32_t id);
void tok_merges_prefetch(const nvlm_tokenizer *t, uint64_t key);
/* The merge of (a, b), or NULL. */
/* Key of the pair (a, b) of ids in [0, 2^31): never 0, the empty slot. */
static inline uint64_t tok_merge_key(int32_t a, int32_t b) {
    return 1ull << 63 | (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
}
static inline const tok_merge *tok_merge_find(const nvlm_tokenizer *t, int32_t a, int32_t b) {
    uint64_t key = tok_merge_key(a, b);
    size_t i = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & t->merges_mask;
    for (;;) {
        const tok_merge *m = &t->merges[i];
        if (m->key == key) return m;
        if (m->key == 0) return NULL;
        i = (i + 1) & t->merges_mask;
    }
}
/* Finishes loading: byte ids, decode table, added-token sets. */
int tok_finish(nvlm_tokenizer *t, nvlm_err *err);
/* Sets up an added-token set from the tokens whose `normalized` flag equals `normalized`. */
int tok_added_set_build(tok_added_set *set, const tok_added *tok, size_t n, int normalized);
/* Leftmost-longest match at or after `from`; returns the token and its start, or NULL. */
const tok_added *tok_added_find(const tok_added_set *set, const uint8_t *s, size_t n,
                                size_t from, size_t *start);

/* ---- BPE on one pre-token. Scratch memory lives in tok_bpe_work (reused across calls). */
typedef struct tok_bpe_work {
    int32_t *sym;              /* symbol ids */
    uint32_t *rank;            /* rank of pair (i, i+1) */
    int32_t *prev, *next;
    uint64_t *heap;            /* (rank << 32 | pos) */
    size_t cap;
} tok_bpe_work;
int tok_bpe(const nvlm_tokenizer *t, const uint8_t *p, size_t n, tok_bpe_work *w, tok_ids *out);
void tok_bpe_work_free(tok_bpe_work *w);

#endif
