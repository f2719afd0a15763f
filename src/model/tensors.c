/* tensors.c - the tensor table of the released layout (design note §2, §12) and the
 * checkpoint checker built on it. */
#include "model/tensors.h"
#include "core/err.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------- enumerator */

typedef struct walker {
    nvlm_tensor_visit_fn fn;
    void *user;
    nvlm_tensor_spec t;
} walker;

/* Emits one tensor: name = prefix + suffix. */
static int emit(walker *w, nvlm_part part, const char *prefix, int layer, const char *suffix,
                int ndim, int64_t a, int64_t b, int64_t c, int64_t d) {
    nvlm_tensor_spec *t = &w->t;
    int n = snprintf(t->name, sizeof t->name, "%s%s", prefix, suffix);
    if (n < 0 || (size_t)n >= sizeof t->name) return 0; /* cannot happen with our names */
    t->part = part;
    t->ndim = ndim;
    int64_t s[4] = {a, b, c, d};
    t->numel = 1;
    for (int i = 0; i < 4; i++) {
        t->shape[i] = i < ndim ? s[i] : 0;
        if (i < ndim) t->numel *= s[i];
    }
    t->layer = layer;
    t->suffix = t->name + strlen(prefix);
    return w->fn(w->user, t);
}

#define EMIT(part, pre, layer, suf, nd, a, b, c, d)                                   \
    do {                                                                              \
        int r_ = emit(w, part, pre, layer, suf, nd, a, b, c, d);                      \
        if (r_) return r_;                                                            \
    } while (0)

static int walk_vision(walker *w, const nvlm_config *cfg, int dummy) {
    const nvlm_vision_config *v = &cfg->vision;
    int64_t C = v->hidden_size, p = v->patch_size, I = v->intermediate_size;
    int64_t dv = C / v->num_heads, E = (v->num_heads + dummy) * dv;
    int64_t G = cfg->image_size / p, P = G * G;
    const nvlm_part V = NVLM_PART_VISION;
    const char *e = "vision_model.embeddings.";
    EMIT(V, e, -1, "patch_embedding.weight", 4, C, v->num_channels, p, p);
    EMIT(V, e, -1, "patch_embedding.bias", 1, C, 0, 0, 0);
    EMIT(V, e, -1, "class_embedding", 3, 1, 1, C, 0);
    EMIT(V, e, -1, "position_embedding", 3, 1, P + 1, C, 0);
    for (int i = 0; i < v->num_layers; i++) {
        char pre[64];
        snprintf(pre, sizeof pre, "vision_model.encoder.layers.%d.", i);
        EMIT(V, pre, i, "norm1.weight", 1, C, 0, 0, 0);
        EMIT(V, pre, i, "norm2.weight", 1, C, 0, 0, 0);
        EMIT(V, pre, i, "attn.qkv.weight", 2, 3 * E, C, 0, 0);
        EMIT(V, pre, i, "attn.q_norm.weight", 1, E, 0, 0, 0);
        EMIT(V, pre, i, "attn.k_norm.weight", 1, E, 0, 0, 0);
        EMIT(V, pre, i, "attn.proj.weight", 2, C, E, 0, 0);
        EMIT(V, pre, i, "attn.proj.bias", 1, C, 0, 0, 0);
        EMIT(V, pre, i, "ls1", 1, C, 0, 0, 0);
        EMIT(V, pre, i, "ls2", 1, C, 0, 0, 0);
        EMIT(V, pre, i, "mlp.fc1.weight", 2, I, C, 0, 0);
        EMIT(V, pre, i, "mlp.fc1.bias", 1, I, 0, 0, 0);
        EMIT(V, pre, i, "mlp.fc2.weight", 2, C, I, 0, 0);
        EMIT(V, pre, i, "mlp.fc2.bias", 1, C, 0, 0, 0);
    }
    return 0;
}

/* mlp1: LayerNorm(4C), then depth Linears 4C -> I -> ... -> I -> h (no biases). */
static int walk_projector(walker *w, const nvlm_config *cfg) {
    int64_t c4 = 4 * (int64_t)cfg->vision.hidden_size, I = cfg->llm.intermediate_size;
    int64_t h = cfg->llm.hidden_size;
    const nvlm_part P = NVLM_PART_PROJECTOR;
    EMIT(P, "", -1, "mlp1.0.weight", 1, c4, 0, 0, 0);
    EMIT(P, "", -1, "mlp1.0.bias", 1, c4, 0, 0, 0);
    int d = cfg->projector_depth > 0 ? cfg->projector_depth : 2;
    for (int j = 0; j < d; j++) {
        char suf[32];
        snprintf(suf, sizeof suf, "mlp1.%d.weight", 2 * j + 1);
        EMIT(P, "", -1, suf, 2, j == d - 1 ? h : I, j == 0 ? c4 : I, 0, 0);
    }
    return 0;
}

static int walk_llm(walker *w, const nvlm_config *cfg) {
    const nvlm_llm_config *l = &cfg->llm;
    int64_t h = l->hidden_size, I = l->intermediate_size, V = l->vocab_size;
    int64_t d = h / l->num_heads, q = l->num_heads * d, kv = l->num_kv_heads * d;
    const nvlm_part L = NVLM_PART_LLM;
    EMIT(L, "language_model.model.", -1, "embed_tokens.weight", 2, V, h, 0, 0);
    for (int j = 0; j < l->num_layers; j++) {
        char pre[64];
        snprintf(pre, sizeof pre, "language_model.model.layers.%d.", j);
        EMIT(L, pre, j, "input_layernorm.weight", 1, h, 0, 0, 0);
        EMIT(L, pre, j, "self_attn.q_proj.weight", 2, q, h, 0, 0);
        EMIT(L, pre, j, "self_attn.q_proj.bias", 1, q, 0, 0, 0);
        EMIT(L, pre, j, "self_attn.k_proj.weight", 2, kv, h, 0, 0);
        EMIT(L, pre, j, "self_attn.k_proj.bias", 1, kv, 0, 0, 0);
        EMIT(L, pre, j, "self_attn.v_proj.weight", 2, kv, h, 0, 0);
        EMIT(L, pre, j, "self_attn.v_proj.bias", 1, kv, 0, 0, 0);
        EMIT(L, pre, j, "self_attn.o_proj.weight", 2, h, q, 0, 0);
        EMIT(L, pre, j, "post_attention_layernorm.weight", 1, h, 0, 0, 0);
        EMIT(L, pre, j, "mlp.gate_proj.weight", 2, I, h, 0, 0);
        EMIT(L, pre, j, "mlp.up_proj.weight", 2, I, h, 0, 0);
        EMIT(L, pre, j, "mlp.down_proj.weight", 2, h, I, 0, 0);
    }
    EMIT(L, "language_model.model.", -1, "norm.weight", 1, h, 0, 0, 0);
    EMIT(L, "language_model.", -1, "lm_head.weight", 2, V, h, 0, 0);
    return 0;
}

/* The gated cross-attention block of §12 (mllama layout), one per cross_attention_layers. */
static int walk_xattn(walker *w, const nvlm_config *cfg) {
    const nvlm_llm_config *l = &cfg->llm;
    int64_t D = l->hidden_size, hd = D / l->num_heads, Q = l->num_heads * hd;
    int64_t K = l->num_kv_heads * hd, Ix = cfg->xattn_intermediate_size;
    const nvlm_part X = NVLM_PART_XATTN;
    for (int k = 0; k < cfg->num_xattn; k++) {
        char pre[64];
        snprintf(pre, sizeof pre, NVLM_XATTN_PREFIX "%d.", k);
        EMIT(X, pre, k, "input_layernorm.weight", 1, D, 0, 0, 0);
        EMIT(X, pre, k, "cross_attn.q_proj.weight", 2, Q, D, 0, 0);
        EMIT(X, pre, k, "cross_attn.k_proj.weight", 2, K, D, 0, 0);
        EMIT(X, pre, k, "cross_attn.v_proj.weight", 2, K, D, 0, 0);
        EMIT(X, pre, k, "cross_attn.o_proj.weight", 2, D, Q, 0, 0);
        EMIT(X, pre, k, "cross_attn.q_norm.weight", 1, hd, 0, 0, 0);
        EMIT(X, pre, k, "cross_attn.k_norm.weight", 1, hd, 0, 0, 0);
        EMIT(X, pre, k, "cross_attn_attn_gate", 1, 1, 0, 0, 0);
        EMIT(X, pre, k, "post_attention_layernorm.weight", 1, D, 0, 0, 0);
        EMIT(X, pre, k, "mlp.gate_proj.weight", 2, Ix, D, 0, 0);
        EMIT(X, pre, k, "mlp.up_proj.weight", 2, Ix, D, 0, 0);
        EMIT(X, pre, k, "mlp.down_proj.weight", 2, D, Ix, 0, 0);
        EMIT(X, pre, k, "cross_attn_mlp_gate", 1, 1, 0, 0, 0);
    }
    return 0;
}

int nvlm_expected_tensors(const nvlm_config *cfg, int dummy_heads, nvlm_tensor_visit_fn fn,
                          void *user) {
    walker w = {fn, user, {{0}, 0, 0, {0}, 0, 0, NULL}};
    int rc;
    if ((rc = walk_vision(&w, cfg, dummy_heads < 0 ? 0 : dummy_heads))) return rc;
    if ((rc = walk_projector(&w, cfg))) return rc;
    if ((rc = walk_llm(&w, cfg))) return rc;
    if (cfg->arch != NVLM_ARCH_D && (rc = walk_xattn(&w, cfg))) return rc;
    return 0;
}

/* ------------------------------------------------------------ dummy heads */

int nvlm_vit_dummy_heads_err(const nvlm_config *cfg, const nvlm_st *st, nvlm_err *err) {
    const char *name = "vision_model.encoder.layers.0.attn.qkv.weight";
    const nvlm_tensor *t = nvlm_st_find(st, name);
    int64_t C = cfg->vision.hidden_size, dv = C / cfg->vision.num_heads;
    if (!t) { /* let nvlm_st_expect word the "missing" message (file / checkpoint named) */
        int64_t shape[2] = {3 * C, C};
        int rc = nvlm_st_expect(st, name, 2, shape, NULL, err);
        return rc ? rc : NVLM_E_INTERNAL;
    }
    if (t->ndim != 2 || t->shape[1] != C || t->shape[0] % (3 * dv) ||
        t->shape[0] / (3 * dv) < cfg->vision.num_heads)
        return nvlm_fail(err, NVLM_E_FORMAT,
                         "tensor %s in %s has shape [%lld, %lld], expected [3*(H_v+D_v)*%lld, %lld] "
                         "with H_v = %d real heads of %lld (D_v dummy heads >= 0)",
                         name, t->file, (long long)t->shape[0],
                         (long long)(t->ndim > 1 ? t->shape[1] : 0), (long long)dv, (long long)C,
                         cfg->vision.num_heads, (long long)dv);
    int64_t d = t->shape[0] / (3 * dv) - cfg->vision.num_heads;
    if (d > 4096) return nvlm_fail(err, NVLM_E_FORMAT, "tensor %s in %s implies %lld dummy heads", name, t->file, (long long)d);
    return (int)d;
}

int nvlm_vit_dummy_heads(const nvlm_config *cfg, const nvlm_st *st) {
    int d = nvlm_vit_dummy_heads_err(cfg, st, NULL);
    return d < 0 ? -1 : d;
}

/* ---------------------------------------------------------------- checker */

typedef struct check_ctx {
    const nvlm_st *st;
    nvlm_err *err;
    nvlm_part only;
} check_ctx;

static int check_one(void *user, const nvlm_tensor_spec *t) {
    check_ctx *c = user;
    if (t->part != c->only) return 0;
    return nvlm_st_expect(c->st, t->name, t->ndim, t->shape, NULL, c->err);
}

static int check_part(const nvlm_config *cfg, const nvlm_st *st, int dummy, nvlm_part part,
                      nvlm_err *err) {
    check_ctx c = {st, err, part};
    return nvlm_expected_tensors(cfg, dummy, check_one, &c);
}

/* mlp1.* must be exactly the set of projector_depth's linears (§12), so a depth that
 * disagrees with the checkpoint is reported as such rather than as one odd shape. */
static int check_projector_set(const nvlm_config *cfg, const nvlm_st *st, nvlm_err *err) {
    int d = cfg->projector_depth;
    size_t n = nvlm_st_count(st);
    for (size_t i = 0; i < n; i++) {
        const char *name = nvlm_st_at(st, i)->name;
        if (strncmp(name, "mlp1.", 5)) continue;
        int idx = -1, len = 0;
        char kind[8] = "";
        int ok = sscanf(name + 5, "%d.%7[a-z]%n", &idx, kind, &len) == 2 && !name[5 + len];
        int want = ok && ((idx == 0 && (!strcmp(kind, "weight") || !strcmp(kind, "bias"))) ||
                          (idx >= 1 && idx <= 2 * d - 1 && idx % 2 == 1 && !strcmp(kind, "weight")));
        if (!want)
            return nvlm_fail(err, NVLM_E_FORMAT,
                             "tensor %s in %s does not belong to a projector (mlp1) of "
                             "projector_depth %d (expected mlp1.0.weight, mlp1.0.bias and "
                             "mlp1.{1,3,...,%d}.weight)", name, nvlm_st_at(st, i)->file, d, 2 * d - 1);
    }
    for (int j = 0; j <= d; j++) {
        char name[32];
        snprintf(name, sizeof name, "mlp1.%d.weight", j ? 2 * j - 1 : 0);
        if (!nvlm_st_find(st, name)) {
            int64_t any[1] = {0};
            int rc = nvlm_st_expect(st, name, 1, any, NULL, err); /* words "missing (expected in ..)" */
            nvlm_fail_prefix(err, "projector_depth %d needs a LayerNorm mlp1.0 and %d Linear "
                                  "layer%s mlp1.{1,3,...,%d}: ", d, d, d > 1 ? "s" : "", 2 * d - 1);
            return rc;
        }
    }
    return 0;
}

/* Parses "xattn_layers.{k}.<suffix>"; returns k or -1. */
static int xattn_block_of(const char *name, const char **suffix) {
    size_t pl = strlen(NVLM_XATTN_PREFIX);
    if (strncmp(name, NVLM_XATTN_PREFIX, pl)) return -1;
    const char *p = name + pl;
    if (*p < '0' || *p > '9') return -2;
    long k = 0;
    while (*p >= '0' && *p <= '9' && k < 1000000) k = k * 10 + (*p++ - '0');
    if (*p != '.') return -2;
    *suffix = p + 1;
    return (int)k;
}

static const char *const xattn_suffixes[] = {
    "input_layernorm.weight", "cross_attn.q_proj.weight", "cross_attn.k_proj.weight",
    "cross_attn.v_proj.weight", "cross_attn.o_proj.weight", "cross_attn.q_norm.weight",
    "cross_attn.k_norm.weight", "cross_attn_attn_gate", "post_attention_layernorm.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight", "cross_attn_mlp_gate",
};

static int check_xattn_extra(const nvlm_config *cfg, const nvlm_st *st, nvlm_err *err) {
    size_t n = nvlm_st_count(st);
    for (size_t i = 0; i < n; i++) {
        const nvlm_tensor *t = nvlm_st_at(st, i);
        const char *suf = NULL;
        int k = xattn_block_of(t->name, &suf);
        if (k == -1) continue;
        if (cfg->arch == NVLM_ARCH_D)
            return nvlm_fail(err, NVLM_E_FORMAT,
                             "tensor %s in %s: NVLM_D has no cross-attention "
                             "(cross_attention_layers / xattn_layers belong to NVLM_X/NVLM_H)",
                             t->name, t->file);
        int known = 0;
        for (size_t s = 0; k >= 0 && s < sizeof xattn_suffixes / sizeof *xattn_suffixes; s++)
            if (!strcmp(suf, xattn_suffixes[s])) known = 1;
        if (k < 0 || k >= cfg->num_xattn || !known)
            return nvlm_fail(err, NVLM_E_FORMAT,
                             "unexpected tensor %s in %s (cross_attention_layers has %d "
                             "entr%s, so the blocks are xattn_layers.0 to xattn_layers.%d, each "
                             "with the 13 tensors of design note §12)",
                             t->name, t->file, cfg->num_xattn, cfg->num_xattn == 1 ? "y" : "ies",
                             cfg->num_xattn - 1);
    }
    return 0;
}

int nvlm_check_tensors(const nvlm_config *cfg, const nvlm_st *st, nvlm_err *err) {
    int rc;
    if (cfg->arch == NVLM_ARCH_D && (rc = check_xattn_extra(cfg, st, err))) return rc;
    int dummy = nvlm_vit_dummy_heads_err(cfg, st, err);
    if (dummy < 0) return dummy;
    if (cfg->vision.num_dummy_heads >= 0 && cfg->vision.num_dummy_heads != dummy)
        return nvlm_fail(err, NVLM_E_FORMAT,
                         "config.json: vision_config.num_dummy_heads is %d but the checkpoint's "
                         "vision_model.encoder.layers.0.attn.qkv.weight implies %d",
                         cfg->vision.num_dummy_heads, dummy);
    if ((rc = check_part(cfg, st, dummy, NVLM_PART_VISION, err))) return rc;
    if ((rc = check_projector_set(cfg, st, err))) return rc;
    if ((rc = check_part(cfg, st, dummy, NVLM_PART_PROJECTOR, err))) return rc;
    if ((rc = check_part(cfg, st, dummy, NVLM_PART_LLM, err))) return rc;
    if (cfg->arch == NVLM_ARCH_D) return 0;
    if ((rc = check_part(cfg, st, dummy, NVLM_PART_XATTN, err))) return rc;
    return check_xattn_extra(cfg, st, err);
}

/* ---------------------------------------------------------- unknown names */

typedef struct names_ctx {
    char **names;
    size_t n, cap;
} names_ctx;

static int collect(void *user, const nvlm_tensor_spec *t) {
    names_ctx *c = user;
    if (c->n == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 256;
        char **nn = realloc(c->names, cap * sizeof *nn);
        if (!nn) return 1;
        c->names = nn;
        c->cap = cap;
    }
    c->names[c->n] = strdup(t->name);
    if (!c->names[c->n]) return 1;
    c->n++;
    return 0;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

size_t nvlm_unknown_tensors(const nvlm_config *cfg, const nvlm_st *st) {
    int dummy = nvlm_vit_dummy_heads(cfg, st);
    names_ctx c = {NULL, 0, 0};
    size_t unknown = 0, n = nvlm_st_count(st);
    if (nvlm_expected_tensors(cfg, dummy < 0 ? 0 : dummy, collect, &c) == 0) {
        qsort(c.names, c.n, sizeof *c.names, cmp_str);
        for (size_t i = 0; i < n; i++) {
            const char *name = nvlm_st_at(st, i)->name;
            if (!bsearch(&name, c.names, c.n, sizeof *c.names, cmp_str)) unknown++;
        }
    }
    for (size_t i = 0; i < c.n; i++) free(c.names[i]);
    free(c.names);
    return unknown;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

int nvlm_tensor_split_unit(const nvlm_config *cfg, const char *name) {
    if (ends_with(name, "attn.qkv.weight")) return nvlm_cfg_vit_head_dim(cfg);
    if (ends_with(name, "q_proj.weight") || ends_with(name, "k_proj.weight") || ends_with(name, "v_proj.weight"))
        return nvlm_cfg_head_dim(cfg);
    return 32;
}
