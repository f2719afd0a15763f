/* tensors.c - the tensor table of the released layout (docs/spec.md §2, §12) and the
 * checkpoint checker built on it. */
#include "model/tensors.h"
#include "core/err.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ the table */

#define VE "vision_model.embeddings."
#define VL "vision_model.encoder.layers.%d."
#define LM "language_model.model."
#define LL "language_model.model.layers.%d."
#define XL NVLM_XATTN_PREFIX "%d."
#define V_ NVLM_PART_VISION
#define P_ NVLM_PART_PROJECTOR
#define L_ NVLM_PART_LLM
#define X_ NVLM_PART_XATTN
#define ONE NVLM_IDX_NONE
#define LAY NVLM_IDX_LAYER
#define PRJ NVLM_IDX_PROJ

const nvlm_role_info nvlm_roles[NVLM_R_COUNT] = {
    [NVLM_R_PATCH_W] = {V_, VE, "patch_embedding.weight", ONE, 0},
    [NVLM_R_PATCH_B] = {V_, VE, "patch_embedding.bias", ONE, 0},
    [NVLM_R_CLS] = {V_, VE, "class_embedding", ONE, 0},
    [NVLM_R_POS] = {V_, VE, "position_embedding", ONE, 0},
    [NVLM_R_V_NORM1] = {V_, VL, "norm1.weight", LAY, 0},
    [NVLM_R_V_NORM2] = {V_, VL, "norm2.weight", LAY, 0},
    [NVLM_R_V_QKV] = {V_, VL, "attn.qkv.weight", LAY, 1},
    [NVLM_R_V_Q_NORM] = {V_, VL, "attn.q_norm.weight", LAY, 1},
    [NVLM_R_V_K_NORM] = {V_, VL, "attn.k_norm.weight", LAY, 1},
    [NVLM_R_V_PROJ] = {V_, VL, "attn.proj.weight", LAY, 1},
    [NVLM_R_V_PROJ_B] = {V_, VL, "attn.proj.bias", LAY, 0},
    [NVLM_R_V_LS1] = {V_, VL, "ls1", LAY, 0},
    [NVLM_R_V_LS2] = {V_, VL, "ls2", LAY, 0},
    [NVLM_R_V_FC1] = {V_, VL, "mlp.fc1.weight", LAY, 0},
    [NVLM_R_V_FC1_B] = {V_, VL, "mlp.fc1.bias", LAY, 0},
    [NVLM_R_V_FC2] = {V_, VL, "mlp.fc2.weight", LAY, 0},
    [NVLM_R_V_FC2_B] = {V_, VL, "mlp.fc2.bias", LAY, 0},
    [NVLM_R_P_LN_W] = {P_, "", "mlp1.0.weight", ONE, 0},
    [NVLM_R_P_LN_B] = {P_, "", "mlp1.0.bias", ONE, 0},
    [NVLM_R_P_LINEAR] = {P_, "mlp1.%d.", "weight", PRJ, 0},
    [NVLM_R_EMBED] = {L_, LM, "embed_tokens.weight", ONE, 0},
    [NVLM_R_L_IN_NORM] = {L_, LL, "input_layernorm.weight", LAY, 0},
    [NVLM_R_L_Q] = {L_, LL, "self_attn.q_proj.weight", LAY, 1},
    [NVLM_R_L_Q_B] = {L_, LL, "self_attn.q_proj.bias", LAY, 1},
    [NVLM_R_L_K] = {L_, LL, "self_attn.k_proj.weight", LAY, 1},
    [NVLM_R_L_K_B] = {L_, LL, "self_attn.k_proj.bias", LAY, 1},
    [NVLM_R_L_V] = {L_, LL, "self_attn.v_proj.weight", LAY, 1},
    [NVLM_R_L_V_B] = {L_, LL, "self_attn.v_proj.bias", LAY, 1},
    [NVLM_R_L_O] = {L_, LL, "self_attn.o_proj.weight", LAY, 0},
    [NVLM_R_L_POST_NORM] = {L_, LL, "post_attention_layernorm.weight", LAY, 0},
    [NVLM_R_L_GATE] = {L_, LL, "mlp.gate_proj.weight", LAY, 0},
    [NVLM_R_L_UP] = {L_, LL, "mlp.up_proj.weight", LAY, 0},
    [NVLM_R_L_DOWN] = {L_, LL, "mlp.down_proj.weight", LAY, 0},
    [NVLM_R_NORM] = {L_, LM, "norm.weight", ONE, 0},
    [NVLM_R_LM_HEAD] = {L_, "language_model.", "lm_head.weight", ONE, 0},
    [NVLM_R_X_IN_NORM] = {X_, XL, "input_layernorm.weight", LAY, 0},
    [NVLM_R_X_Q] = {X_, XL, "cross_attn.q_proj.weight", LAY, 0},
    [NVLM_R_X_K] = {X_, XL, "cross_attn.k_proj.weight", LAY, 0},
    [NVLM_R_X_V] = {X_, XL, "cross_attn.v_proj.weight", LAY, 0},
    [NVLM_R_X_O] = {X_, XL, "cross_attn.o_proj.weight", LAY, 0},
    [NVLM_R_X_Q_NORM] = {X_, XL, "cross_attn.q_norm.weight", LAY, 0},
    [NVLM_R_X_K_NORM] = {X_, XL, "cross_attn.k_norm.weight", LAY, 0},
    [NVLM_R_X_ATTN_GATE] = {X_, XL, "cross_attn_attn_gate", LAY, 0},
    [NVLM_R_X_POST_NORM] = {X_, XL, "post_attention_layernorm.weight", LAY, 0},
    [NVLM_R_X_GATE] = {X_, XL, "mlp.gate_proj.weight", LAY, 0},
    [NVLM_R_X_UP] = {X_, XL, "mlp.up_proj.weight", LAY, 0},
    [NVLM_R_X_DOWN] = {X_, XL, "mlp.down_proj.weight", LAY, 0},
    [NVLM_R_X_MLP_GATE] = {X_, XL, "cross_attn_mlp_gate", LAY, 0},
};
#undef VE
#undef VL
#undef LM
#undef LL
#undef XL
#undef V_
#undef P_
#undef L_
#undef X_
#undef ONE
#undef LAY
#undef PRJ

/* The prefix of role r at index i in buf; returns its length (or -1 when it does not fit). */
static int role_prefix(nvlm_role r, int i, char *buf, size_t cap) {
    const nvlm_role_info *ri = &nvlm_roles[r];
    int k = ri->index == NVLM_IDX_PROJ ? 2 * i + 1 : i;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral" /* the table's own formats, one %d or none */
    int n = ri->index == NVLM_IDX_NONE ? snprintf(buf, cap, "%s", ri->prefix) : snprintf(buf, cap, ri->prefix, k);
#pragma GCC diagnostic pop
    return n < 0 || (size_t)n >= cap ? -1 : n;
}

const char *nvlm_tensor_name(nvlm_role r, int i, char *buf, size_t cap) {
    int n = role_prefix(r, i, buf, cap);
    if (n < 0 || (size_t)n + strlen(nvlm_roles[r].suffix) >= cap) {
        if (cap) buf[0] = 0; /* cannot happen with the table's names and a 160-byte buffer */
        return buf;
    }
    strcpy(buf + n, nvlm_roles[r].suffix);
    return buf;
}

/* Matches name against prefix format fmt (one %d or none) then suffix; the %d as *k. */
static int match_role(const char *name, const nvlm_role_info *ri, int *k) {
    const char *d = strstr(ri->prefix, "%d"), *p = name;
    size_t head = d ? (size_t)(d - ri->prefix) : strlen(ri->prefix);
    if (strncmp(p, ri->prefix, head)) return 0;
    p += head;
    *k = -1;
    if (d) {
        if (*p < '0' || *p > '9') return 0;
        long v = 0;
        while (*p >= '0' && *p <= '9' && v < 1000000) v = v * 10 + (*p++ - '0');
        *k = (int)v;
        size_t tail = strlen(d + 2);
        if (strncmp(p, d + 2, tail)) return 0;
        p += tail;
    }
    return !strcmp(p, ri->suffix);
}

int nvlm_role_of_name(const char *name, nvlm_role *role, int *index) {
    for (int r = 0; r < NVLM_R_COUNT; r++) {
        int k;
        if (!match_role(name, &nvlm_roles[r], &k)) continue;
        if (nvlm_roles[r].index == NVLM_IDX_PROJ && (k < 1 || k % 2 == 0)) continue;
        *role = (nvlm_role)r;
        *index = nvlm_roles[r].index == NVLM_IDX_PROJ ? (k - 1) / 2 : k;
        return 0;
    }
    return -1;
}

/* ------------------------------------------------------------- enumerator */

typedef struct walker {
    nvlm_tensor_visit_fn fn;
    void *user;
    nvlm_tensor_spec t;
} walker;

/* Emits one tensor: role r at index i (-1 for single tensors) with its shape. */
static int emit(walker *w, nvlm_role r, int i, int ndim, int64_t a, int64_t b, int64_t c, int64_t d) {
    nvlm_tensor_spec *t = &w->t;
    int plen = role_prefix(r, i, t->name, sizeof t->name);
    if (plen < 0) return 0; /* cannot happen with our names */
    nvlm_tensor_name(r, i, t->name, sizeof t->name);
    t->role = r;
    t->part = nvlm_roles[r].part;
    t->ndim = ndim;
    int64_t s[4] = {a, b, c, d};
    t->numel = 1;
    for (int k = 0; k < 4; k++) {
        t->shape[k] = k < ndim ? s[k] : 0;
        if (k < ndim) t->numel *= s[k];
    }
    t->layer = i;
    t->suffix = t->name + plen;
    return w->fn(w->user, t);
}

#define EMIT(role, i, nd, a, b, c, d)                                                 \
    do {                                                                              \
        int r_ = emit(w, role, i, nd, a, b, c, d);                                    \
        if (r_) return r_;                                                            \
    } while (0)

static int walk_vision(walker *w, const nvlm_config *cfg, int dummy) {
    const nvlm_vision_config *v = &cfg->vision;
    int64_t C = v->hidden_size, p = v->patch_size, I = v->intermediate_size;
    int64_t dv = C / v->num_heads, E = (v->num_heads + dummy) * dv;
    int64_t G = cfg->image_size / p, P = G * G;
    EMIT(NVLM_R_PATCH_W, -1, 4, C, v->num_channels, p, p);
    EMIT(NVLM_R_PATCH_B, -1, 1, C, 0, 0, 0);
    EMIT(NVLM_R_CLS, -1, 3, 1, 1, C, 0);
    EMIT(NVLM_R_POS, -1, 3, 1, P + 1, C, 0);
    for (int i = 0; i < v->num_layers; i++) {
        EMIT(NVLM_R_V_NORM1, i, 1, C, 0, 0, 0);
        EMIT(NVLM_R_V_NORM2, i, 1, C, 0, 0, 0);
        EMIT(NVLM_R_V_QKV, i, 2, 3 * E, C, 0, 0);
        EMIT(NVLM_R_V_Q_NORM, i, 1, E, 0, 0, 0);
        EMIT(NVLM_R_V_K_NORM, i, 1, E, 0, 0, 0);
        EMIT(NVLM_R_V_PROJ, i, 2, C, E, 0, 0);
        EMIT(NVLM_R_V_PROJ_B, i, 1, C, 0, 0, 0);
        EMIT(NVLM_R_V_LS1, i, 1, C, 0, 0, 0);
        EMIT(NVLM_R_V_LS2, i, 1, C, 0, 0, 0);
        EMIT(NVLM_R_V_FC1, i, 2, I, C, 0, 0);
        EMIT(NVLM_R_V_FC1_B, i, 1, I, 0, 0, 0);
        EMIT(NVLM_R_V_FC2, i, 2, C, I, 0, 0);
        EMIT(NVLM_R_V_FC2_B, i, 1, C, 0, 0, 0);
    }
    return 0;
}

/* mlp1: LayerNorm(4C), then depth Linears 4C -> I -> ... -> I -> h (no biases). */
static int walk_projector(walker *w, const nvlm_config *cfg) {
    int64_t c4 = 4 * (int64_t)cfg->vision.hidden_size, I = cfg->llm.intermediate_size;
    int64_t h = cfg->llm.hidden_size;
    EMIT(NVLM_R_P_LN_W, -1, 1, c4, 0, 0, 0);
    EMIT(NVLM_R_P_LN_B, -1, 1, c4, 0, 0, 0);
    int d = cfg->projector_depth > 0 ? cfg->projector_depth : 2;
    for (int j = 0; j < d; j++) EMIT(NVLM_R_P_LINEAR, j, 2, j == d - 1 ? h : I, j == 0 ? c4 : I, 0, 0);
    return 0;
}

static int walk_llm(walker *w, const nvlm_config *cfg) {
    const nvlm_llm_config *l = &cfg->llm;
    int64_t h = l->hidden_size, I = l->intermediate_size, V = l->vocab_size;
    int64_t d = h / l->num_heads, q = l->num_heads * d, kv = l->num_kv_heads * d;
    EMIT(NVLM_R_EMBED, -1, 2, V, h, 0, 0);
    for (int j = 0; j < l->num_layers; j++) {
        EMIT(NVLM_R_L_IN_NORM, j, 1, h, 0, 0, 0);
        EMIT(NVLM_R_L_Q, j, 2, q, h, 0, 0);
        EMIT(NVLM_R_L_Q_B, j, 1, q, 0, 0, 0);
        EMIT(NVLM_R_L_K, j, 2, kv, h, 0, 0);
        EMIT(NVLM_R_L_K_B, j, 1, kv, 0, 0, 0);
        EMIT(NVLM_R_L_V, j, 2, kv, h, 0, 0);
        EMIT(NVLM_R_L_V_B, j, 1, kv, 0, 0, 0);
        EMIT(NVLM_R_L_O, j, 2, h, q, 0, 0);
        EMIT(NVLM_R_L_POST_NORM, j, 1, h, 0, 0, 0);
        EMIT(NVLM_R_L_GATE, j, 2, I, h, 0, 0);
        EMIT(NVLM_R_L_UP, j, 2, I, h, 0, 0);
        EMIT(NVLM_R_L_DOWN, j, 2, h, I, 0, 0);
    }
    EMIT(NVLM_R_NORM, -1, 1, h, 0, 0, 0);
    EMIT(NVLM_R_LM_HEAD, -1, 2, V, h, 0, 0);
    return 0;
}

/* The gated cross-attention block of §12 (mllama layout), one per cross_attention_layers. */
static int walk_xattn(walker *w, const nvlm_config *cfg) {
    const nvlm_llm_config *l = &cfg->llm;
    int64_t D = l->hidden_size, hd = D / l->num_heads, Q = l->num_heads * hd;
    int64_t K = l->num_kv_heads * hd, Ix = cfg->xattn_intermediate_size;
    for (int k = 0; k < cfg->num_xattn; k++) {
        EMIT(NVLM_R_X_IN_NORM, k, 1, D, 0, 0, 0);
        EMIT(NVLM_R_X_Q, k, 2, Q, D, 0, 0);
        EMIT(NVLM_R_X_K, k, 2, K, D, 0, 0);
        EMIT(NVLM_R_X_V, k, 2, K, D, 0, 0);
        EMIT(NVLM_R_X_O, k, 2, D, Q, 0, 0);
        EMIT(NVLM_R_X_Q_NORM, k, 1, hd, 0, 0, 0);
        EMIT(NVLM_R_X_K_NORM, k, 1, hd, 0, 0, 0);
        EMIT(NVLM_R_X_ATTN_GATE, k, 1, 1, 0, 0, 0);
        EMIT(NVLM_R_X_POST_NORM, k, 1, D, 0, 0, 0);
        EMIT(NVLM_R_X_GATE, k, 2, Ix, D, 0, 0);
        EMIT(NVLM_R_X_UP, k, 2, Ix, D, 0, 0);
        EMIT(NVLM_R_X_DOWN, k, 2, D, Ix, 0, 0);
        EMIT(NVLM_R_X_MLP_GATE, k, 1, 1, 0, 0, 0);
    }
    return 0;
}

int nvlm_expected_tensors(const nvlm_config *cfg, int dummy_heads, nvlm_tensor_visit_fn fn,
                          void *user) {
    walker w = {.fn = fn, .user = user};
    int rc;
    if ((rc = walk_vision(&w, cfg, dummy_heads < 0 ? 0 : dummy_heads))) return rc;
    if ((rc = walk_projector(&w, cfg))) return rc;
    if ((rc = walk_llm(&w, cfg))) return rc;
    if (cfg->arch != NVLM_ARCH_D && (rc = walk_xattn(&w, cfg))) return rc;
    return 0;
}

/* ------------------------------------------------------------ dummy heads */

int nvlm_vit_dummy_heads_err(const nvlm_config *cfg, const nvlm_st *st, nvlm_err *err) {
    char name[160];
    nvlm_tensor_name(NVLM_R_V_QKV, 0, name, sizeof name);
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
    check_ctx c = {.st = st, .err = err, .only = part};
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
        nvlm_role r;
        int k;
        int want = !nvlm_role_of_name(name, &r, &k) && nvlm_roles[r].part == NVLM_PART_PROJECTOR &&
                   (r != NVLM_R_P_LINEAR || k < d);
        if (!want)
            return nvlm_fail(err, NVLM_E_FORMAT,
                             "tensor %s in %s does not belong to a projector (mlp1) of "
                             "projector_depth %d (expected mlp1.0.weight, mlp1.0.bias and "
                             "mlp1.{1,3,...,%d}.weight)", name, nvlm_st_at(st, i)->file, d, 2 * d - 1);
    }
    for (int j = 0; j <= d; j++) {
        char name[160];
        nvlm_tensor_name(j ? NVLM_R_P_LINEAR : NVLM_R_P_LN_W, j - 1, name, sizeof name);
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

static int check_xattn_extra(const nvlm_config *cfg, const nvlm_st *st, nvlm_err *err) {
    size_t n = nvlm_st_count(st);
    for (size_t i = 0; i < n; i++) {
        const nvlm_tensor *t = nvlm_st_at(st, i);
        if (strncmp(t->name, NVLM_XATTN_PREFIX, strlen(NVLM_XATTN_PREFIX))) continue;
        nvlm_role r;
        int k = -1, known = !nvlm_role_of_name(t->name, &r, &k) && nvlm_roles[r].part == NVLM_PART_XATTN;
        if (cfg->arch == NVLM_ARCH_D)
            return nvlm_fail(err, NVLM_E_FORMAT,
                             "tensor %s in %s: NVLM_D has no cross-attention "
                             "(cross_attention_layers / xattn_layers belong to NVLM_X/NVLM_H)",
                             t->name, t->file);
        if (k < 0 || k >= cfg->num_xattn || !known)
            return nvlm_fail(err, NVLM_E_FORMAT,
                             "unexpected tensor %s in %s (cross_attention_layers has %d "
                             "entr%s, so the blocks are xattn_layers.0 to xattn_layers.%d, each "
                             "with the 13 tensors of docs/spec.md §12)",
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
    names_ctx c = {0};
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
