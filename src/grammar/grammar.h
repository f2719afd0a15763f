/* grammar.h - structured output: a context-free grammar over bytes (compiled from a JSON Schema
 * or the json_object rule), a pushdown matcher that follows it byte by byte, and its use on a
 * token vocabulary (docs/grammar.md). Internal; the public face is nvlm_grammar in nvlm.h.
 *
 * The grammar is llama.cpp's shape of GBNF, built directly: rules, each a list of alternatives,
 * each a sequence of elements, an element a byte set or a reference to a rule. The matcher's
 * state is a set of stacks (persistent linked lists of positions); a byte advances every stack
 * whose top byte set holds it. Nothing is left-recursive (the compiler never makes such rules),
 * so expanding references always ends. */
#ifndef NVLM_GRAMMAR_GRAMMAR_H
#define NVLM_GRAMMAR_GRAMMAR_H
#include "nvlm.h"
#include "tokenizer/tok.h"
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

enum { G_END = 0, G_ALT = 1, G_REF = 2, G_SET = 3 };

typedef struct gelem {
    uint32_t type : 2;
    uint32_t val : 30;       /* G_REF: rule; G_SET: byte-set index */
} gelem;

typedef struct gset256 { uint64_t w[4]; } gset256;

static inline int gset_has(const gset256 *s, unsigned b) { return (int)(s->w[b >> 6] >> (b & 63) & 1); }

struct nvlm_grammar {
    gelem *el;               /* every rule's alternatives, each ended by G_ALT, the rule by G_END */
    uint32_t n_el;
    uint32_t *alt;           /* start element of each alternative: rules' alternatives in order */
    uint32_t *rule_alt;      /* rule r's alternatives: alt[rule_alt[r] .. rule_alt[r + 1]) */
    uint32_t n_rules;
    gset256 *sets;
    uint32_t n_sets;
    uint32_t root;
};

/* The schema as an already parsed cJSON document (the server has one). */
int nvlm_grammar_from_json_schema_value(const void *cjson_doc, nvlm_grammar **out, nvlm_err *err);

/* ------------------------------------------------------------- builder (build.c) */

typedef struct gvec { gelem *p; uint32_t n, cap; } gvec;

typedef struct gbuild {
    gvec *rules;             /* each rule's elements, alternatives separated by G_ALT */
    uint32_t n_rules, cap_rules;
    gset256 *sets;
    uint32_t n_sets, cap_sets;
    int oom;                 /* sticky: a push failed */
} gbuild;

/* A new empty rule (no alternative yet: the first append opens one); its id, or -1 (oom). */
int gb_rule(gbuild *b);
/* Appends to the rule's current alternative. */
void gb_lit(gbuild *b, int rule, const char *bytes, size_t n);
void gb_str(gbuild *b, int rule, const char *s);
void gb_set(gbuild *b, int rule, const gset256 *set);
void gb_range(gbuild *b, int rule, unsigned lo, unsigned hi);
void gb_ref(gbuild *b, int rule, int sub);
/* Closes the current alternative and opens the next (an empty alternative is epsilon). */
void gb_alt(gbuild *b, int rule);
/* Rules for common shapes: item*, item?, item{lo,hi} (hi < 0: unbounded). */
int gb_star(gbuild *b, int item);
int gb_opt(gbuild *b, int item);
int gb_repeat(gbuild *b, int item, long lo, long hi);
/* A byte set of one range. */
gset256 gset_range(unsigned lo, unsigned hi);
/* Freezes the builder into a grammar whose start is root (the builder is emptied). */
int gb_finish(gbuild *b, int root, nvlm_grammar **out, nvlm_err *err);
void gb_free(gbuild *b);

/* ------------------------------------------------------------ matcher (match.c) */

typedef struct gnode { uint32_t pos; int32_t parent; } gnode;
/* A set of stacks: tops[off .. off + n) in the matcher's pool; accept: the empty stack. */
typedef struct gstate { uint32_t off, n; int accept; } gstate;

typedef struct gmatch {
    const nvlm_grammar *g;
    gnode *nodes;
    uint32_t n_nodes, cap_nodes;
    int32_t *tops;
    uint32_t n_tops, cap_tops;
    gstate cur;              /* the state after the bytes accepted so far */
    int oom, overflow;       /* sticky: out of memory / too many stacks (an ambiguous grammar) */
} gmatch;

int gm_init(gmatch *m, const nvlm_grammar *g);
void gm_free(gmatch *m);
/* The state reached from `in` by one byte (out->n == 0 && !out->accept: no way). Allocates in
 * the matcher's pools: take gm_mark() before and gm_reset() after a trial. */
void gm_step(gmatch *m, const gstate *in, uint8_t byte, gstate *out);
typedef struct gmark { uint32_t nodes, tops; } gmark;
static inline gmark gm_mark(const gmatch *m) { return (gmark){m->n_nodes, m->n_tops}; }
static inline void gm_reset(gmatch *m, gmark k) { m->n_nodes = k.nodes, m->n_tops = k.tops; }
static inline int gstate_alive(const gstate *s) { return s->n > 0 || s->accept; }
/* 1 when bytes[0..n) may follow the current state (the pools are left as they were). */
int gm_try(gmatch *m, const uint8_t *bytes, size_t n);
/* Moves the current state over bytes; 0, or -1 when they do not fit (state unchanged). Keeps
 * the pools small by copying the live stacks into fresh ones. */
int gm_feed(gmatch *m, const uint8_t *bytes, size_t n);
/* Bytes that may come next: the union of the tops' byte sets. */
void gm_first_bytes(const gmatch *m, gset256 *out);
/* Sets the current state to the grammar's start; -1 on failure (oom or overflow). */
int gm_start(gmatch *m);

/* -------------------------------------------------- vocabulary index (vocab.c) */

/* Every token's bytes and a trie over them in depth-first order (a node's subtree is the
 * range [i, end[i])), built once per tokenizer. */
typedef struct gvocab {
    tok_cache cache;         /* first: the tokenizer frees the index through it (gv_free) */
    size_t n_ids;
    const uint8_t *pool;     /* the tokenizer's decode table: bytes of id in pool[off[id] .. off[id+1]) */
    const uint32_t *off;
    uint8_t *usable;         /* per id: 1 for a regular vocabulary token with bytes */
    uint32_t n_trie;
    uint8_t *t_byte;         /* per trie node: its byte */
    uint16_t *t_depth;       /* 1 for the root's children */
    uint32_t *t_end;
    int32_t *t_tok;          /* token ending here, or -1 (further ones chained in dup_next) */
    int32_t *dup_next;       /* per id: next id with the same bytes, or -1 */
    uint16_t max_depth;
} gvocab;

/* The tokenizer's index, built on first use and kept with it. NULL (err filled) on failure. */
const gvocab *gv_get(const nvlm_tokenizer *tok, nvlm_err *err);
void gv_free(void *v);

/* ------------------------------------------- a grammar applied to generation (vocab.c) */

/* One generation's constraint: the matcher and the vocabulary. eos is the token that ends the
 * answer, allowed only where the grammar accepts; other tokens without bytes never are. */
/* A state's mask, kept: JSON comes back to the same states again and again (the inside of a
 * string, after a comma), and a state is known by its stacks' positions. */
enum { GC_CACHE = 16 };
typedef struct gcache {
    uint64_t hash, used;
    uint32_t *key;
    size_t key_len;
    uint8_t *mask;           /* n_vocab bytes */
    long count;
} gcache;

typedef struct gconstraint {
    gmatch m;
    const gvocab *v;
    int n_vocab;
    int32_t eos;
    gset256 first;           /* bytes that may come next */
    gstate *st;              /* [max_depth + 1] scratch of the trie walk */
    gmark *mk;
    int finished;            /* eos was accepted */
    uint32_t *key;           /* the current state's positions, stack after stack */
    size_t key_len, key_cap;
    uint64_t key_hash, clock;
    gcache cache[GC_CACHE];
    int hit;                 /* the cache entry of the current state, or -1 */
} gconstraint;

int gc_init(gconstraint *c, const nvlm_grammar *g, const nvlm_tokenizer *tok, int n_vocab, int32_t eos,
            nvlm_err *err);
void gc_free(gconstraint *c);
/* 1 when token id may come next. */
int gc_allowed(gconstraint *c, int32_t id);
/* Every allowed token: (*mask)[id] = 1 or 0 for id < n_vocab (the mask stays valid until the
 * next gc_accept); returns how many are allowed, -1 on failure (out of memory). One walk of the
 * trie, skipping each subtree the grammar refuses, or the cached mask of this state. */
long gc_mask(gconstraint *c, const uint8_t **mask);
/* Moves past token id (which must be allowed); 0 or a negative nvlm_status. */
int gc_accept(gconstraint *c, int32_t id, nvlm_err *err);
#endif
