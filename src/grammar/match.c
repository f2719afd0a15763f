/* The pushdown matcher. A stack is a chain of gnodes: the top's pos is a byte-set element, every
 * node below it the position to continue at once the rule above is done. Stacks share their
 * lower parts; a trial (one token's bytes) allocates past a mark and is undone by resetting to it.
 * Identical stacks reached by different paths are kept once, so ambiguity costs no more than
 * the distinct ways the text can still go. */
#include "grammar/grammar.h"
#include <stdlib.h>
#include <string.h>

enum { MAX_STACKS = 4096, MAX_EXPAND_DEPTH = 512 };

int gm_init(gmatch *m, const nvlm_grammar *g) {
    memset(m, 0, sizeof *m);
    m->g = g;
    m->cap_nodes = 1024, m->cap_tops = 256;
    m->nodes = malloc(sizeof *m->nodes * m->cap_nodes);
    m->tops = malloc(sizeof *m->tops * m->cap_tops);
    if (!m->nodes || !m->tops) {
        gm_free(m);
        return -1;
    }
    return 0;
}

void gm_free(gmatch *m) {
    free(m->nodes);
    free(m->tops);
    memset(m, 0, sizeof *m);
}

static int32_t new_node(gmatch *m, uint32_t pos, int32_t parent) {
    if (m->n_nodes == m->cap_nodes) {
        gnode *n = realloc(m->nodes, sizeof *n * m->cap_nodes * 2);
        if (!n) {
            m->oom = 1;
            return -2;
        }
        m->nodes = n, m->cap_nodes *= 2;
    }
    m->nodes[m->n_nodes] = (gnode){pos, parent};
    return (int32_t)m->n_nodes++;
}

static int same_stack(const gmatch *m, int32_t a, int32_t b) {
    while (a != b) {
        if (a < 0 || b < 0 || m->nodes[a].pos != m->nodes[b].pos) return 0;
        a = m->nodes[a].parent, b = m->nodes[b].parent;
    }
    return 1;
}

/* Adds the stack (pos, parent) to out unless an equal one is there. */
static void add_top(gmatch *m, gstate *out, uint32_t pos, int32_t parent) {
    for (uint32_t i = 0; i < out->n; i++) {
        const gnode *t = &m->nodes[m->tops[out->off + i]];
        if (t->pos == pos && same_stack(m, t->parent, parent)) return;
    }
    if (out->n >= MAX_STACKS) {
        m->overflow = 1;
        return;
    }
    int32_t id = new_node(m, pos, parent);
    if (id < 0) return;
    if (m->n_tops == m->cap_tops) {
        int32_t *t = realloc(m->tops, sizeof *t * m->cap_tops * 2);
        if (!t) {
            m->oom = 1;
            return;
        }
        m->tops = t, m->cap_tops *= 2;
    }
    /* out's tops are the last ones of the pool: nothing else is appended while it grows */
    m->tops[m->n_tops++] = id;
    out->n++;
}

static int is_end(gelem e) { return e.type == G_END || e.type == G_ALT; }

/* Brings the stack "continue at pos, then parent" to byte-set tops, adding them to out. */
static void expand(gmatch *m, int32_t parent, uint32_t pos, gstate *out, int depth) {
    const nvlm_grammar *g = m->g;
    if (depth > MAX_EXPAND_DEPTH) {
        m->overflow = 1;
        return;
    }
    for (;;) {
        gelem e = g->el[pos];
        if (is_end(e)) { /* the rule is done: continue where its caller left off */
            if (parent < 0) {
                out->accept = 1;
                return;
            }
            pos = m->nodes[parent].pos, parent = m->nodes[parent].parent;
            continue;
        }
        if (e.type == G_SET) {
            add_top(m, out, pos, parent);
            return;
        }
        /* G_REF: remember the continuation unless the reference ends its sequence (tail call) */
        int32_t cont = parent;
        if (!is_end(g->el[pos + 1]) && (cont = new_node(m, pos + 1, parent)) < 0) return;
        for (uint32_t a = g->rule_alt[e.val]; a < g->rule_alt[e.val + 1]; a++) expand(m, cont, g->alt[a], out, depth + 1);
        return;
    }
}

void gm_step(gmatch *m, const gstate *in, uint8_t byte, gstate *out) {
    *out = (gstate){m->n_tops, 0, 0};
    const nvlm_grammar *g = m->g;
    for (uint32_t i = 0; i < in->n; i++) {
        const gnode t = m->nodes[m->tops[in->off + i]];
        if (gset_has(&g->sets[g->el[t.pos].val], byte)) expand(m, t.parent, t.pos + 1, out, 0);
    }
}

int gm_try(gmatch *m, const uint8_t *bytes, size_t n) {
    gmark k = gm_mark(m);
    gstate s = m->cur;
    for (size_t i = 0; i < n && gstate_alive(&s); i++) {
        gstate next;
        gm_step(m, &s, bytes[i], &next);
        s = next;
    }
    int ok = gstate_alive(&s) && !m->oom;
    gm_reset(m, k);
    return ok;
}

/* Copies the stacks of s into fresh pools (their nodes shared as before: a node is copied once,
 * remembered through a map from old to new index). */
static int compact(gmatch *m, const gstate *s) {
    gmatch n;
    if (gm_init(&n, m->g)) return -1;
    int32_t *map = malloc(sizeof *map * (m->n_nodes ? m->n_nodes : 1));
    if (!map) {
        gm_free(&n);
        return -1;
    }
    memset(map, 0xff, sizeof *map * m->n_nodes);
    n.cur = (gstate){0, 0, s->accept};
    int32_t *chain = NULL;
    size_t cap = 0;
    for (uint32_t i = 0; i < s->n && !n.oom; i++) {
        /* walk down to the first node already copied, then copy upwards */
        size_t len = 0;
        for (int32_t x = m->tops[s->off + i]; x >= 0 && map[x] < 0; x = m->nodes[x].parent) {
            if (len == cap) {
                int32_t *c = realloc(chain, sizeof *c * (cap = cap ? 2 * cap : 64));
                if (!c) {
                    n.oom = 1;
                    break;
                }
                chain = c;
            }
            chain[len++] = x;
        }
        while (len > 0 && !n.oom) {
            int32_t x = chain[--len], p = m->nodes[x].parent;
            map[x] = new_node(&n, m->nodes[x].pos, p < 0 ? -1 : map[p]);
        }
        if (n.oom) break;
        if (n.n_tops == n.cap_tops) {
            int32_t *t = realloc(n.tops, sizeof *t * n.cap_tops * 2);
            if (!t) {
                n.oom = 1;
                break;
            }
            n.tops = t, n.cap_tops *= 2;
        }
        n.tops[n.n_tops++] = map[m->tops[s->off + i]];
        n.cur.n++;
    }
    free(chain);
    free(map);
    if (n.oom) {
        gm_free(&n);
        return -1;
    }
    gm_free(m);
    *m = n;
    return 0;
}

int gm_feed(gmatch *m, const uint8_t *bytes, size_t n) {
    gmark k = gm_mark(m);
    gstate s = m->cur;
    for (size_t i = 0; i < n && gstate_alive(&s); i++) {
        gstate next;
        gm_step(m, &s, bytes[i], &next);
        s = next;
    }
    if (!gstate_alive(&s) || m->oom) {
        gm_reset(m, k);
        return -1;
    }
    return compact(m, &s);
}

void gm_first_bytes(const gmatch *m, gset256 *out) {
    memset(out, 0, sizeof *out);
    for (uint32_t i = 0; i < m->cur.n; i++) {
        const gset256 *s = &m->g->sets[m->g->el[m->nodes[m->tops[m->cur.off + i]].pos].val];
        for (int w = 0; w < 4; w++) out->w[w] |= s->w[w];
    }
}

int gm_start(gmatch *m) {
    gstate s = {m->n_tops, 0, 0};
    for (uint32_t a = m->g->rule_alt[m->g->root]; a < m->g->rule_alt[m->g->root + 1]; a++)
        expand(m, -1, m->g->alt[a], &s, 0);
    m->cur = s;
    return m->oom || m->overflow ? -1 : 0;
}
