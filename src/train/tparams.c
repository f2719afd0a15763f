/* The trainer's parameter store: float32 master copies of the projector, LLM (and X/H
 * cross-attention) tensors, with gradients and Adam moments for the trainable ones. */
#include "core/err.h"
#include "model/tensors.h"
#include "train/train.h"
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct collect {
    nvlm_tmodel *tm;
    const nvlm_train_select *sel;
    nvlm_err *err;
    int cap;
    int vision;   /* a pattern names a vision tensor: the whole ViT joins the store */
} collect;

/* Does name match one of the comma-separated globs? */
static int matches(const char *patterns, const char *name) {
    char pat[256];
    for (const char *p = patterns; *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len && len < sizeof pat) {
            memcpy(pat, p, len);
            pat[len] = 0;
            if (!fnmatch(pat, name, 0)) return 1;
        }
        p += len + (e ? 1 : 0);
    }
    return 0;
}

static int default_trainable(int stage, nvlm_part part) {
    if (part == NVLM_PART_PROJECTOR || part == NVLM_PART_XATTN) return 1;
    return stage >= 2 && part == NVLM_PART_LLM;
}

static int add_param(void *user, const nvlm_tensor_spec *spec) {
    collect *c = user;
    nvlm_tmodel *tm = c->tm;
    if (spec->part == NVLM_PART_VISION && !c->vision) return 0;
    const nvlm_tensor *t = nvlm_st_find(tm->m->st, spec->name);
    if (!t) return nvlm_fail(c->err, NVLM_E_FORMAT, "tensor %s is missing from the checkpoint", spec->name);
    if (t->numel != spec->numel)
        return nvlm_fail(c->err, NVLM_E_FORMAT, "tensor %s has %lld elements, expected %lld", spec->name,
                         (long long)t->numel, (long long)spec->numel);
    if (t->dtype != NVLM_DT_F32 && t->dtype != NVLM_DT_F16 && t->dtype != NVLM_DT_BF16)
        return nvlm_fail(c->err, NVLM_E_UNSUPPORTED, "tensor %s is %s: training needs F32, F16 or BF16 weights",
                         spec->name, nvlm_dtype_name(t->dtype));
    if (tm->n_p == c->cap) {
        int cap = c->cap ? 2 * c->cap : 64;
        nvlm_tparam *p = realloc(tm->p, sizeof *p * (size_t)cap);
        if (!p) return nvlm_fail(c->err, NVLM_E_NOMEM, "out of memory");
        tm->p = p;
        c->cap = cap;
    }
    nvlm_tparam *p = &tm->p[tm->n_p];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", spec->name);
    p->ndim = spec->ndim;
    memcpy(p->shape, spec->shape, sizeof p->shape);
    p->n = (size_t)spec->numel;
    p->dtype = t->dtype;
    p->trainable = c->sel->patterns ? matches(c->sel->patterns, p->name) : default_trainable(c->sel->stage, spec->part);
    p->decay = c->sel->decay_all || spec->ndim >= 2;
    p->w = malloc(sizeof(float) * p->n);
    if (p->w && p->trainable) {
        p->g = calloc(p->n, sizeof(float));
        p->m = calloc(p->n, sizeof(float));
        p->v = calloc(p->n, sizeof(float));
    }
    tm->n_p++; /* counted now so that free releases what was allocated */
    if (!p->w || (p->trainable && (!p->g || !p->m || !p->v)))
        return nvlm_fail(c->err, NVLM_E_NOMEM, "out of memory for tensor %s (%zu values)", p->name, p->n);
    nvlm_to_f32(p->w, t->data, t->dtype, p->n);
    return 0;
}

/* Sets c->vision when a pattern names a vision tensor. */
static int find_vision(void *user, const nvlm_tensor_spec *spec) {
    collect *c = user;
    if (spec->part == NVLM_PART_VISION && c->sel->patterns && matches(c->sel->patterns, spec->name)) c->vision = 1;
    return 0;
}

nvlm_tparam *nvlm_tmodel_find(nvlm_tmodel *tm, const char *name) {
    for (int i = 0; i < tm->n_p; i++)
        if (!strcmp(tm->p[i].name, name)) return &tm->p[i];
    return NULL;
}

/* *out = the parameter of role r at index i (model/tensors.h's table of names). */
static int bind(nvlm_tmodel *tm, nvlm_tparam **out, nvlm_err *err, nvlm_role r, int i) {
    char name[160];
    *out = nvlm_tmodel_find(tm, nvlm_tensor_name(r, i, name, sizeof name));
    return *out ? 0 : nvlm_fail(err, NVLM_E_FORMAT, "tensor %s is missing", name);
}

/* NVLM-X/H: the cross-attention blocks, keyed by their position in cross_attention_layers. */
static int bind_xattn(nvlm_tmodel *tm, nvlm_err *err) {
    const nvlm_config *c = &tm->m->cfg;
    if (c->arch == NVLM_ARCH_D || c->num_xattn == 0) return NVLM_OK;
    tm->X = calloc((size_t)c->num_xattn, sizeof *tm->X);
    if (!tm->X) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    tm->n_x = c->num_xattn;
    for (int k = 0; k < c->num_xattn; k++) {
        nvlm_txblock *B = &tm->X[k];
        int rc;
        B->layer = c->xattn_layers[k];
        if ((rc = bind(tm, &B->in_norm, err, NVLM_R_X_IN_NORM, k)) ||
            (rc = bind(tm, &B->post_norm, err, NVLM_R_X_POST_NORM, k)) ||
            (rc = bind(tm, &B->wq, err, NVLM_R_X_Q, k)) ||
            (rc = bind(tm, &B->wk, err, NVLM_R_X_K, k)) ||
            (rc = bind(tm, &B->wv, err, NVLM_R_X_V, k)) ||
            (rc = bind(tm, &B->wo, err, NVLM_R_X_O, k)) ||
            (rc = bind(tm, &B->q_norm, err, NVLM_R_X_Q_NORM, k)) ||
            (rc = bind(tm, &B->k_norm, err, NVLM_R_X_K_NORM, k)) ||
            (rc = bind(tm, &B->attn_gate, err, NVLM_R_X_ATTN_GATE, k)) ||
            (rc = bind(tm, &B->mlp_gate, err, NVLM_R_X_MLP_GATE, k)) ||
            (rc = bind(tm, &B->gate, err, NVLM_R_X_GATE, k)) ||
            (rc = bind(tm, &B->up, err, NVLM_R_X_UP, k)) ||
            (rc = bind(tm, &B->down, err, NVLM_R_X_DOWN, k)))
            return rc;
    }
    return NVLM_OK;
}

/* The vision encoder's tensors, for the layers up to select_layer (tvit.c runs those). */
static int bind_vision(nvlm_tmodel *tm, nvlm_err *err) {
    const nvlm_config *c = &tm->m->cfg;
    if (tm->m->vit_dummy_heads || tm->m->vit_width != c->vision.hidden_size)
        return nvlm_fail(err, NVLM_E_UNSUPPORTED,
                         "training the vision encoder needs a ViT without dummy heads (this one has %d); "
                         "leave vision tensors out of --trainable",
                         tm->m->vit_dummy_heads);
    int layers = c->select_layer < 0 ? c->vision.num_layers + 1 + c->select_layer : c->select_layer;
    int rc;
    if ((rc = bind(tm, &tm->patch_w, err, NVLM_R_PATCH_W, -1)) || (rc = bind(tm, &tm->patch_b, err, NVLM_R_PATCH_B, -1)) ||
        (rc = bind(tm, &tm->cls, err, NVLM_R_CLS, -1)) || (rc = bind(tm, &tm->pos, err, NVLM_R_POS, -1)))
        return rc;
    if (layers < 1)
        return nvlm_fail(err, NVLM_E_UNSUPPORTED,
                         "select_layer %d uses no ViT layer: training the ViT needs at least one (leave vision "
                         "tensors out of --trainable)",
                         c->select_layer);
    if (!(tm->V = calloc((size_t)layers, sizeof *tm->V))) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    for (int l = 0; l < layers; l++) {
        nvlm_tvlayer *V = &tm->V[l];
        if ((rc = bind(tm, &V->norm1, err, NVLM_R_V_NORM1, l)) || (rc = bind(tm, &V->norm2, err, NVLM_R_V_NORM2, l)) ||
            (rc = bind(tm, &V->qkv, err, NVLM_R_V_QKV, l)) || (rc = bind(tm, &V->q_norm, err, NVLM_R_V_Q_NORM, l)) ||
            (rc = bind(tm, &V->k_norm, err, NVLM_R_V_K_NORM, l)) || (rc = bind(tm, &V->proj, err, NVLM_R_V_PROJ, l)) ||
            (rc = bind(tm, &V->proj_b, err, NVLM_R_V_PROJ_B, l)) || (rc = bind(tm, &V->ls1, err, NVLM_R_V_LS1, l)) ||
            (rc = bind(tm, &V->ls2, err, NVLM_R_V_LS2, l)) || (rc = bind(tm, &V->fc1, err, NVLM_R_V_FC1, l)) ||
            (rc = bind(tm, &V->fc1_b, err, NVLM_R_V_FC1_B, l)) || (rc = bind(tm, &V->fc2, err, NVLM_R_V_FC2, l)) ||
            (rc = bind(tm, &V->fc2_b, err, NVLM_R_V_FC2_B, l)))
            return rc;
    }
    tm->n_v = layers;
    return NVLM_OK;
}

static int bind_all(nvlm_tmodel *tm, nvlm_err *err) {
    const nvlm_config *c = &tm->m->cfg;
    int rc;
    tm->proj_depth = c->projector_depth;
    if (tm->proj_depth < 1 || tm->proj_depth > NVLM_TRAIN_MAX_PROJ)
        return nvlm_fail(err, NVLM_E_UNSUPPORTED, "projector_depth %d: the trainer handles 1..%d", tm->proj_depth,
                         NVLM_TRAIN_MAX_PROJ);
    if ((rc = bind(tm, &tm->ln_w, err, NVLM_R_P_LN_W, -1)) || (rc = bind(tm, &tm->ln_b, err, NVLM_R_P_LN_B, -1)))
        return rc;
    for (int k = 0; k < tm->proj_depth; k++)
        if ((rc = bind(tm, &tm->proj[k], err, NVLM_R_P_LINEAR, k))) return rc;
    if ((rc = bind(tm, &tm->embed, err, NVLM_R_EMBED, -1))) return rc;
    if ((rc = bind(tm, &tm->final_norm, err, NVLM_R_NORM, -1))) return rc;
    if (c->llm.tie_word_embeddings) tm->lm_head = tm->embed;
    else if ((rc = bind(tm, &tm->lm_head, err, NVLM_R_LM_HEAD, -1))) return rc;
    tm->L = calloc((size_t)c->llm.num_layers, sizeof *tm->L);
    if (!tm->L) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    for (int l = 0; l < c->llm.num_layers; l++) {
        nvlm_tlayer *L = &tm->L[l];
        if ((rc = bind(tm, &L->in_norm, err, NVLM_R_L_IN_NORM, l)) ||
            (rc = bind(tm, &L->post_norm, err, NVLM_R_L_POST_NORM, l)) ||
            (rc = bind(tm, &L->wq, err, NVLM_R_L_Q, l)) ||
            (rc = bind(tm, &L->bq, err, NVLM_R_L_Q_B, l)) ||
            (rc = bind(tm, &L->wk, err, NVLM_R_L_K, l)) ||
            (rc = bind(tm, &L->bk, err, NVLM_R_L_K_B, l)) ||
            (rc = bind(tm, &L->wv, err, NVLM_R_L_V, l)) ||
            (rc = bind(tm, &L->bv, err, NVLM_R_L_V_B, l)) ||
            (rc = bind(tm, &L->wo, err, NVLM_R_L_O, l)) ||
            (rc = bind(tm, &L->gate, err, NVLM_R_L_GATE, l)) ||
            (rc = bind(tm, &L->up, err, NVLM_R_L_UP, l)) ||
            (rc = bind(tm, &L->down, err, NVLM_R_L_DOWN, l)))
            return rc;
    }
    return bind_xattn(tm, err);
}

int nvlm_tmodel_new(nvlm_model *m, const nvlm_train_select *sel, nvlm_tmodel **out, nvlm_err *err) {
    *out = NULL;
    if (!m || !sel) return nvlm_fail(err, NVLM_E_INVALID_ARG, "no model or selection");
    if (sel->stage != 1 && sel->stage != 2)
        return nvlm_fail(err, NVLM_E_INVALID_ARG, "stage %d: the trainer knows stages 1 and 2", sel->stage);
    nvlm_tmodel *tm = calloc(1, sizeof *tm);
    if (!tm) return nvlm_fail(err, NVLM_E_NOMEM, "out of memory");
    tm->m = m;
    collect c = {tm, sel, err, 0, 0};
    int rc = nvlm_expected_tensors(&m->cfg, m->vit_dummy_heads, find_vision, &c);
    if (!rc) rc = nvlm_expected_tensors(&m->cfg, m->vit_dummy_heads, add_param, &c);
    if (!rc) rc = bind_all(tm, err);
    if (!rc && c.vision) rc = bind_vision(tm, err);
    if (!rc && !nvlm_tmodel_trainable(tm))
        rc = nvlm_fail(err, NVLM_E_INVALID_ARG, "no tensor is trainable (patterns '%s')",
                       sel->patterns ? sel->patterns : "");
    if (rc) {
        nvlm_tmodel_free(tm);
        return rc;
    }
    *out = tm;
    return NVLM_OK;
}

void nvlm_tmodel_free(nvlm_tmodel *tm) {
    if (!tm) return;
    for (int i = 0; i < tm->n_p; i++) {
        free(tm->p[i].w);
        free(tm->p[i].g);
        free(tm->p[i].m);
        free(tm->p[i].v);
    }
    free(tm->p);
    free(tm->L);
    free(tm->X);
    free(tm->V);
    free(tm);
}

void nvlm_tmodel_zero_grad(nvlm_tmodel *tm) {
    for (int i = 0; i < tm->n_p; i++)
        if (tm->p[i].g) memset(tm->p[i].g, 0, sizeof(float) * tm->p[i].n);
}

size_t nvlm_tmodel_trainable(const nvlm_tmodel *tm) {
    size_t n = 0;
    for (int i = 0; i < tm->n_p; i++) n += tm->p[i].trainable ? tm->p[i].n : 0;
    return n;
}
