/* Building a grammar: rules grow one alternative at a time; gb_finish lays them out flat. Every
 * push that fails sets the sticky oom flag, checked once in gb_finish, so the compiler's code
 * reads as the grammar it writes. */
#include "core/err.h"
#include "grammar/grammar.h"
#include <stdlib.h>
#include <string.h>

static void vec_push(gbuild *b, gvec *v, gelem e) {
    if (v->n == v->cap) {
        uint32_t cap = v->cap ? 2 * v->cap : 8;
        gelem *p = realloc(v->p, sizeof *p * cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        v->p = p, v->cap = cap;
    }
    v->p[v->n++] = e;
}

int gb_rule(gbuild *b) {
    if (b->n_rules == b->cap_rules) {
        uint32_t cap = b->cap_rules ? 2 * b->cap_rules : 64;
        gvec *r = realloc(b->rules, sizeof *r * cap);
        if (!r) {
            b->oom = 1;
            return -1;
        }
        b->rules = r, b->cap_rules = cap;
    }
    b->rules[b->n_rules] = (gvec){0};
    return (int)b->n_rules++;
}

static int set_index(gbuild *b, const gset256 *s) {
    for (uint32_t i = 0; i < b->n_sets; i++) /* few distinct sets: a linear search is enough */
        if (!memcmp(&b->sets[i], s, sizeof *s)) return (int)i;
    if (b->n_sets == b->cap_sets) {
        uint32_t cap = b->cap_sets ? 2 * b->cap_sets : 32;
        gset256 *n = realloc(b->sets, sizeof *n * cap);
        if (!n) {
            b->oom = 1;
            return -1;
        }
        b->sets = n, b->cap_sets = cap;
    }
    b->sets[b->n_sets] = *s;
    return (int)b->n_sets++;
}

gset256 gset_range(unsigned lo, unsigned hi) {
    gset256 s = {{0}};
    for (unsigned c = lo; c <= hi && c < 256; c++) s.w[c >> 6] |= 1ull << (c & 63);
    return s;
}

void gb_set(gbuild *b, int rule, const gset256 *set) {
    int i = set_index(b, set);
    if (rule < 0 || i < 0) {
        b->oom = 1;
        return;
    }
    vec_push(b, &b->rules[rule], (gelem){G_SET, (uint32_t)i});
}

void gb_range(gbuild *b, int rule, unsigned lo, unsigned hi) {
    gset256 s = gset_range(lo, hi);
    gb_set(b, rule, &s);
}

void gb_lit(gbuild *b, int rule, const char *bytes, size_t n) {
    for (size_t i = 0; i < n; i++) gb_range(b, rule, (uint8_t)bytes[i], (uint8_t)bytes[i]);
}

void gb_str(gbuild *b, int rule, const char *s) { gb_lit(b, rule, s, strlen(s)); }

void gb_ref(gbuild *b, int rule, int sub) {
    if (rule < 0 || sub < 0) {
        b->oom = 1;
        return;
    }
    vec_push(b, &b->rules[rule], (gelem){G_REF, (uint32_t)sub});
}

void gb_alt(gbuild *b, int rule) {
    if (rule < 0) {
        b->oom = 1;
        return;
    }
    vec_push(b, &b->rules[rule], (gelem){G_ALT, 0});
}

/* R -> item R | epsilon (right recursion: the matcher's tail call keeps stacks flat). */
int gb_star(gbuild *b, int item) {
    int r = gb_rule(b);
    gb_ref(b, r, item);
    gb_ref(b, r, r);
    gb_alt(b, r);
    return r;
}

int gb_opt(gbuild *b, int item) {
    int r = gb_rule(b);
    gb_ref(b, r, item);
    gb_alt(b, r);
    return r;
}

/* item{lo} followed by (item (item (...)?)?)? for the hi - lo optional ones: nested, so that
 * each count is one path (no ambiguity for the matcher to carry). */
int gb_repeat(gbuild *b, int item, long lo, long hi) {
    int tail = -1;
    if (hi < 0) {
        tail = gb_star(b, item);
    } else {
        for (long i = lo; i < hi; i++) {
            int r = gb_rule(b);
            gb_ref(b, r, item);
            if (tail >= 0) gb_ref(b, r, tail);
            gb_alt(b, r);
            tail = r;
        }
    }
    int r = gb_rule(b);
    for (long i = 0; i < lo; i++) gb_ref(b, r, item);
    if (tail >= 0) gb_ref(b, r, tail);
    return r;
}

void gb_free(gbuild *b) {
    for (uint32_t i = 0; i < b->n_rules; i++) free(b->rules[i].p);
    free(b->rules);
    free(b->sets);
    memset(b, 0, sizeof *b);
}

int gb_finish(gbuild *b, int root, nvlm_grammar **out, nvlm_err *err) {
    *out = NULL;
    if (b->oom || root < 0) {
        gb_free(b);
        return nvlm_fail(err, NVLM_E_NOMEM, "out of memory building the grammar");
    }
    size_t n_el = 0, n_alt = 0;
    for (uint32_t r = 0; r < b->n_rules; r++) {
        n_el += b->rules[r].n + 2; /* closing G_ALT and G_END */
        n_alt += 1;
        for (uint32_t i = 0; i < b->rules[r].n; i++) n_alt += b->rules[r].p[i].type == G_ALT;
    }
    nvlm_grammar *g = calloc(1, sizeof *g);
    if (g) {
        g->el = malloc(sizeof *g->el * n_el);
        g->alt = malloc(sizeof *g->alt * n_alt);
        g->rule_alt = malloc(sizeof *g->rule_alt * (b->n_rules + 1));
    }
    if (!g || !g->el || !g->alt || !g->rule_alt || n_el >= (1u << 30)) {
        nvlm_grammar_free(g);
        gb_free(b);
        return nvlm_fail(err, NVLM_E_NOMEM, "out of memory for a grammar of %zu elements", n_el);
    }
    uint32_t e = 0, a = 0;
    for (uint32_t r = 0; r < b->n_rules; r++) {
        g->rule_alt[r] = a;
        g->alt[a++] = e;
        for (uint32_t i = 0; i < b->rules[r].n; i++) {
            g->el[e++] = b->rules[r].p[i];
            if (b->rules[r].p[i].type == G_ALT) g->alt[a++] = e;
        }
        g->el[e++] = (gelem){G_ALT, 0};
        g->el[e++] = (gelem){G_END, 0};
    }
    g->rule_alt[b->n_rules] = a;
    g->n_el = e, g->n_rules = b->n_rules, g->root = (uint32_t)root;
    g->sets = b->sets, g->n_sets = b->n_sets;
    b->sets = NULL;
    gb_free(b);
    *out = g;
    return NVLM_OK;
}

void nvlm_grammar_free(nvlm_grammar *g) {
    if (!g) return;
    free(g->el);
    free(g->alt);
    free(g->rule_alt);
    free(g->sets);
    free(g);
}
